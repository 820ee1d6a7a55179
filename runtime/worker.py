"""The vLLM worker extension: masks loaded into the engine's workers and applied per request inside each batch.

vLLM mixes this class into its worker when started with
`worker_extension_cls="runtime.worker.MaskWorkerExtension"`; the API side calls its `maskserve_*` methods with
`collective_rpc` (named methods, so no insecure serialization is needed). After `maskserve_setup`:

- every q/k/v, o, gate/up and down projection is wrapped in a `MaskedLinear`;
- a forward pre-hook on the model reads, once per step, each scheduled request's `extra_args["mask"]` (a digest)
  and the token rows the step gives it (`query_start_loc`, so chunked prefill and decode mix freely), and sets the
  shared `BatchMasks`. When no mask is loaded the hook returns after one check.

Internals used, from vLLM 0.32 `v1/worker/gpu_model_runner.py` (which the CPU runner subclasses):
`model_runner.input_batch.req_ids` / `.num_reqs` (request order of the step's tokens), `model_runner.requests[id]
.sampling_params.extra_args`, and `model_runner.query_start_loc.np` (filled by `_prepare_inputs` before forward).

A request also carries `extra_args["mask_path"]`, the mask's local file, so a worker that evicted the mask since the
API preloaded it reloads it rather than ever serving the request without its mask (over the memory budget if it
must: the request is already scheduled). RPC methods return plain dicts
and report errors in them: an exception in a worker would take the engine down with it.
"""

import logging
import time

import numpy as np
from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

from mask_store.errors import MaskError

from .bank import MaskBank
from .deltas import CheckpointReader, build_deltas
from .layout import ModelShape, vllm_placement
from .masked_linear import BatchMasks, wrap_linears

logger = logging.getLogger(__name__)

_TARGETS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


class MaskWorkerExtension:
    def maskserve_setup(self, model_dir: str, base_id: str, budget_bytes: int, key: str) -> dict:
        tp_rank, tp_size = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        if tp_size != 1:
            return {"error": "per-request masks need tensor_parallel_size=1 (layout.py slices for more; "
                             "row-parallel corrections would also need an all-reduce)"}
        model = self.model_runner.model
        names = [n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in _TARGETS]
        device = next(model.parameters()).device
        self._maskserve_batch = BatchMasks(device=device)
        layers = wrap_linears(model, names, self._maskserve_batch, returns_tuple=True)
        shapes = {n: (m.base.output_size_per_partition, m.base.input_size_per_partition) for n, m in layers.items()}
        shape = ModelShape.from_config(self.model_runner.model_config.hf_config)
        reader = CheckpointReader(model_dir)

        def build(mask):
            deltas = build_deltas(mask, reader, lambda n, _s: vllm_placement(n, shape, tp_rank, tp_size), shapes)
            return {module: delta.to(device) for module, delta in deltas.items()}

        self._maskserve_bank = MaskBank(base_id, layers, build, budget_bytes)
        self._maskserve_key = key
        model.register_forward_pre_hook(self._maskserve_route)
        return {"layers": len(layers)}

    def maskserve_load(self, path: str, pin: bool = False) -> dict:
        """Load a mask; the report lists the masks evicted to make room, so the API side's view stays exact."""
        bank = self._maskserve_bank
        before = set(bank.loaded)
        try:
            entry = bank.load(path, pin=pin, in_use=self._maskserve_in_use())
        except MaskError as e:
            return {"error": str(e), "status": e.status, "kind": type(e).__name__}
        return {"digest": entry.digest, "bytes": entry.nbytes, "load_ms": entry.load_ms, "pinned": entry.pinned,
                "evicted": sorted(before - set(bank.loaded))}

    def maskserve_unload(self, digest: str) -> dict:
        return {"unloaded": self._maskserve_bank.unload(digest)}

    def maskserve_status(self) -> dict:
        return self._maskserve_bank.status()

    def _maskserve_in_use(self) -> set[str]:
        """Digests of every request the runner holds (running or paused), which eviction must spare."""
        out = set()
        for state in self.model_runner.requests.values():
            digest = self._maskserve_digest(state.sampling_params)
            if digest is not None:
                out.add(digest)
        return out

    def _maskserve_digest(self, params) -> str | None:
        """The mask a request asks for; only maskserve's own requests, which carry the setup key, can ask."""
        extra = params.extra_args if params is not None else None
        if not extra or extra.get("mask_key") != self._maskserve_key:
            return None
        return extra.get("mask")

    def _maskserve_route(self, module, args) -> None:
        """Forward pre-hook: map this step's token rows to the masks their requests asked for."""
        batch, bank = self._maskserve_batch, self._maskserve_bank
        if not len(bank):
            batch.clear()
            return
        runner = self.model_runner
        n = runner.input_batch.num_reqs
        digests: list[str | None] = []
        for req_id in runner.input_batch.req_ids[:n]:
            params = runner.requests[req_id].sampling_params
            digest = self._maskserve_digest(params)
            if digest is not None and digest not in bank:
                self._maskserve_reload(digest, params.extra_args.get("mask_path"))
            digests.append(digest)
        if not any(digests):
            batch.clear()
            return
        bank.touch(d for d in digests if d)
        batch.set_requests(digests, np.asarray(runner.query_start_loc.np[: n + 1]))

    def _maskserve_reload(self, digest: str, path: str | None) -> None:
        if path is None:
            raise RuntimeError(f"request names mask {digest} which is not loaded and carries no mask_path")
        started = time.perf_counter()
        entry = self._maskserve_bank.load(path, in_use=self._maskserve_in_use(), over_budget=True)
        if entry.digest != digest:
            raise RuntimeError(f"{path} holds mask {entry.digest}, the request asked for {digest}")
        logger.info("reloaded evicted mask %s in %.1f ms", digest[:12], 1e3 * (time.perf_counter() - started))
