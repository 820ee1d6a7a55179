"""`Engine`: one vLLM engine over one frozen base model, serving any number of masks per batch, without HTTP.

    engine = Engine(model="models/smol", store="~/masks")
    outs = engine.generate(["2+2=", "2+2="], masks=["math:prod", None])   # one batch, two models

Masks are resolved through the store (refused if trained on another base or shaped for another model), written
into the workers' slots once, and named per request in `SamplingParams.extra_args`; see worker.py for what happens
inside the engine. Start-up runs the canary (canary.py) and refuses to go on if masks would not apply correctly.
Scripts that create an Engine need an `if __name__ == "__main__":` guard: vLLM spawns its engine processes.
"""

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import AutoConfig
from vllm import LLM, SamplingParams

from mask_store.default_model import default_model_dir
from mask_store.errors import MaskError
from mask_store.identity import base_id
from mask_store.store import Store

from . import canary, vllm_compat
from .layout import ModelShape
from mask_store.logs import get_logger
from .requests import DEFAULT_MASK_MEMORY, DEFAULT_MAX_MASKS, ServedMask, default_engine_args, first_result, \
    new_mask_key, per_item, resolve
from .slot_files import SLOT_FILE_BUDGET_FACTOR, SlotFiles, SlotPlan

logger = get_logger("engine")


class Engine:
    def __init__(self, model: str | Path | None = None, store: Store | str | None = None,
                 max_masks: int = DEFAULT_MAX_MASKS, mask_memory_bytes: int = DEFAULT_MASK_MEMORY,
                 run_canary: bool = True, **engine_args):
        vllm_compat.prefer_v1_runner()
        self.model_dir = Path(model) if model else default_model_dir()
        self.base_id = base_id(self.model_dir)
        self.store = store if isinstance(store, Store) else Store(store)
        self.config = AutoConfig.from_pretrained(self.model_dir)
        self.expected = ModelShape.from_config(self.config).hf_shapes()
        self.max_masks = max_masks
        args = default_engine_args(max_masks, mask_memory_bytes, model=str(self.model_dir), **engine_args)
        self.llm = LLM(**args)
        self.dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")
        logger.info("serving in %s%s", self.dtype, "" if "dtype" in engine_args else " (fastest on this machine)")
        self._key = new_mask_key()
        report = first_result(self.llm.collective_rpc("maskserve_setup", args=(self.base_id, self._key)))
        self.slot_files = SlotFiles(SlotPlan.from_report(report["plan"]), self.model_dir,
                                    SLOT_FILE_BUDGET_FACTOR * report["memory_bytes"])
        self.canary = self._canary() if run_canary else None

    def load(self, ref: str, pin: bool = False, protect: Sequence[str] = ()) -> ServedMask:
        """Resolve REF and make sure every worker holds it, sparing the masks in `protect` (digests)."""
        served = resolve(self.store, ref, self.base_id, self.expected)
        self._load(served, pin, protect)
        return served

    def _load(self, served: ServedMask, pin: bool = False, protect: Sequence[str] = ()) -> dict:
        path = self.slot_files.acquire(served.path, served.digest)
        try:
            results = self.llm.collective_rpc("maskserve_load", args=([(str(path), served.digest, pin)], list(protect)))
            (report,) = per_item(results, "loads")
            if isinstance(report, MaskError):
                raise report
            return report
        finally:
            self.slot_files.release(served.digest)

    def unload(self, ref: str) -> bool:
        served = resolve(self.store, ref, self.base_id, self.expected)
        return first_result(self.llm.collective_rpc("maskserve_unload", args=(served.digest,)))["unloaded"]

    def status(self) -> dict:
        return first_result(self.llm.collective_rpc("maskserve_status"))

    def _requests(self, prompts: Sequence, masks, params: SamplingParams, served: dict[str, ServedMask] | None = None):
        if masks is None or isinstance(masks, str):
            masks = [masks] * len(prompts)
        if len(masks) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(masks)} masks")
        refs = sorted({ref for ref in masks if ref is not None})
        if len(refs) > self.max_masks:
            raise ValueError(f"{len(refs)} distinct masks in one call; this engine holds {self.max_masks} at a time "
                             f"(max_masks): split the call")
        if served is None:
            served = {}
            for ref in refs:  # every mask of the call stays resident while the others load
                served[ref] = self.load(ref, protect=[s.digest for s in served.values()])
        inputs, per_request = [], []
        for prompt, ref in zip(prompts, masks):
            item = {"prompt": prompt} if isinstance(prompt, str) else {"prompt_token_ids": [int(t) for t in prompt]}
            request_params = params.clone()
            if ref is not None:
                item["cache_salt"] = served[ref].cache_salt(self._key)
                request_params.extra_args = {**(params.extra_args or {}), **served[ref].extra_args(self._key)}
            inputs.append(item)
            per_request.append(request_params)
        return inputs, per_request

    def generate(self, prompts: Sequence[str | Sequence[int]], masks: Sequence[str | None] | str | None = None,
                 sampling_params: SamplingParams | None = None, use_tqdm: bool = False,
                 _served: dict[str, ServedMask] | None = None):
        """One batch; masks[i] (a REF, or None for the base model) applies to prompts[i] only."""
        params = sampling_params or SamplingParams(max_tokens=64, temperature=0.0)
        inputs, per_request = self._requests(prompts, masks, params, _served)
        return self.llm.generate(inputs, per_request, use_tqdm=use_tqdm)

    def prompt_logprobs(self, prompts: Sequence[str | Sequence[int]],
                        masks: Sequence[str | None] | str | None = None,
                        _served: dict[str, ServedMask] | None = None) -> list[np.ndarray]:
        """log p(token_i | tokens_<i) for i >= 1 of each prompt, under its mask."""
        outputs = self.generate(prompts, masks, SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0),
                                _served=_served)
        result = []
        for out in outputs:
            ids = out.prompt_token_ids
            result.append(np.array([lp[tok].logprob for tok, lp in zip(ids[1:], out.prompt_logprobs[1:])]))
        return result

    def _canary(self) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            probe = canary.make_probe(self.config, self.base_id, Path(tmp))
            served = {"canary": ServedMask("canary", 0, probe.digest, str(probe.mask_path))}
            self._load(served["canary"])
            try:
                got = self.prompt_logprobs([probe.token_ids] * 2, [None, "canary"], _served=served)
            finally:
                first_result(self.llm.collective_rpc("maskserve_unload", args=(probe.digest,)))
            report = canary.check((got[0], got[1]), canary.reference_logprobs(self.model_dir, probe), self.dtype)
        logger.info("start-up canary passed: %s", report)
        return report
