"""The vLLM worker extension: the mask bank of each worker, and the per-step mapping of rows to mask slots.

vLLM mixes this class into its worker when started with `worker_extension_cls="runtime.worker.MaskWorkerExtension"`
(importing this module also registers the "maskserve" model loader, which installs the slots: loader.py). The API
side calls the `maskserve_*` methods with `collective_rpc` (named methods: no insecure serialization needed):

- `maskserve_setup` checks that the engine runs a configuration masks are served correctly under (vllm_compat.py),
  creates the bank over the loader's slots, binds the step router to the runner, and reports its SlotPlan: what
  the API side prepares slot files for (slot_files.py);
- `maskserve_load` / `maskserve_unload` write and clear slots, between steps, never inside a forward pass. A load
  copies a slot file the API side prepared, and spares every mask a request the runner holds names, and every mask
  in `protect` (requests the API has in flight).

Each step, before the forward, the router gives every row the slot of its request's mask (-1: base). Only requests
whose `mask_token` matches the setup key count (requests.py). A matching request whose mask is not resident is a
maskserve bug, never a client's doing: it stops the engine rather than serve the base model in the mask's place.
RPC methods report MaskErrors in their result dicts: an exception in a worker would take the engine down.
"""


import numpy as np
from vllm.distributed import get_tensor_model_parallel_rank, get_tensor_model_parallel_world_size

from mask_store.errors import MaskError

from . import loader  # noqa: F401  registers load_format="maskserve" in this worker process
from . import vllm_compat
from mask_store.logs import get_logger

from .bank import MaskBank
from .layout import ModelShape
from .requests import token_matches
from .slot_files import SlotPlan, read_slot_file

logger = get_logger("worker")


class MaskWorkerExtension:
    def maskserve_setup(self, base_id: str, key: str) -> dict:
        runner = self.model_runner
        try:
            vllm_compat.check_supported(runner, self.vllm_config)
        except vllm_compat.UnsupportedEngine as e:
            return {"error": str(e), "kind": "MaskError"}
        installed = getattr(runner.model, "maskserve", None)
        if installed is None:
            return {"error": "the model was not loaded with load_format='maskserve' (runtime.requests."
                             "default_engine_args sets it)", "kind": "MaskError"}
        tp_rank, tp_size = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        layers = dict(vllm_compat.masked_layers(runner.model))
        plan = SlotPlan(base_id, tuple(installed.names),
                        tuple(vllm_compat.local_shape(layers[n]) for n in installed.names), tp_size,
                        ModelShape.from_config(self.model_config.hf_config))
        self._maskserve_bank = MaskBank(base_id, installed.table, {n: i for i, n in enumerate(installed.names)},
                                        lambda path, digest: read_slot_file(path, digest, plan, tp_rank))
        self._maskserve_key = key
        installed.router.route_step = self._maskserve_route
        return {"layers": len(installed.names), "slots": installed.table.num_slots, "plan": plan.report(),
                "memory_bytes": installed.table.num_slots * installed.table.slot_bytes}

    def maskserve_load(self, items: list[tuple[str, str, bool]], protect: list[str] = ()) -> dict:
        """Load masks, each (slot file, digest, pin), in order, unless resident (idempotent: the API side asks before
        every request it admits and keeps no record of its own). No load evicts another of the same call. One report
        per item, under "loads": whether the call loaded it and which masks it evicted, or the error.

        Errors come back in the reports: this runs in the engine's process, which must outlive any one bad mask."""
        spare = {*protect, *self._maskserve_held(), *(digest for _, digest, _ in items)}
        return {"loads": [self._maskserve_load_one(path, digest, pin, spare) for path, digest, pin in items]}

    def _maskserve_load_one(self, path: str, digest: str, pin: bool, spare: set[str]) -> dict:
        bank = self._maskserve_bank
        before = set(bank.loaded)
        try:
            entry = bank.load(path, digest, pin=pin, protect=spare)
        except MaskError as e:
            return {"error": str(e), "status": e.status, "kind": type(e).__name__}
        except Exception as e:  # a bug or an unreadable file: fail this load, keep serving the others
            logger.exception("loading mask %s from %s failed", digest, path)
            return {"error": f"loading mask {digest[:12]} from {path} failed: {type(e).__name__}: {e}",
                    "status": 500, "kind": "MaskError"}
        return {"digest": entry.digest, "slot": entry.slot, "bytes": entry.nbytes, "load_ms": entry.load_ms,
                "pinned": entry.pinned, "loaded": entry.digest not in before,
                "evicted": sorted(before - set(bank.loaded)), "resident": len(bank.loaded)}

    def maskserve_unload(self, digest: str, protect: list[str] = ()) -> dict:
        try:
            return {"unloaded": self._maskserve_bank.unload(digest, {*protect, *self._maskserve_held()})}
        except MaskError as e:
            return {"error": str(e), "status": e.status, "kind": type(e).__name__}

    def maskserve_status(self) -> dict:
        return self._maskserve_bank.status()

    def _maskserve_digest(self, extra: dict | None) -> str | None:
        """The mask a request asks for; only maskserve's own requests, which carry a valid token, can ask."""
        if not isinstance(extra, dict) or "mask" not in extra:
            return None
        digest = extra.get("mask")
        return digest if token_matches(self._maskserve_key, digest, extra.get("mask_token")) else None

    def _maskserve_held(self) -> set[str]:
        held = (self._maskserve_digest(e) for e in vllm_compat.held_requests_extra_args(self.model_runner))
        return {d for d in held if d is not None}

    def _maskserve_route(self) -> np.ndarray | None:
        """Row -> slot for the step about to run, or None when no row carries a mask."""
        bank = self._maskserve_bank
        if not len(bank):
            return None
        runner = self.model_runner
        req_ids, starts = vllm_compat.step_requests(runner)
        slots = np.full(len(req_ids), -1, dtype=np.int32)
        used = set()
        for i, req_id in enumerate(req_ids):
            digest = self._maskserve_digest(vllm_compat.request_extra_args(runner, req_id))
            if digest is not None:
                if digest not in bank:
                    raise RuntimeError(f"request {req_id} names mask {digest[:12]}, which no slot holds")
                slots[i] = bank.slot_of(digest)
                used.add(digest)
        if not used:
            return None
        bank.touch(used)
        return np.repeat(slots, np.diff(starts))
