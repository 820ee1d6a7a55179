"""`Engine`: one vLLM engine over one frozen base model, serving any number of masks per batch, without HTTP.

    engine = Engine(model="models/smol", store="~/masks")
    outs = engine.generate(["2+2=", "2+2="], masks=["math:prod", None])   # one batch, two models

Masks are resolved through the store (and refused if trained on another base), loaded into the workers once, and
named per request in `SamplingParams.extra_args`; see worker.py for what happens inside the forward pass.
Scripts that create an Engine need an `if __name__ == "__main__":` guard: vLLM spawns its engine processes.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from vllm import LLM, SamplingParams

from mask_store.default_model import default_model_dir
from mask_store.identity import base_id
from mask_store.store import Store

from .requests import ServedMask, default_engine_args, first_result, new_mask_key, resolve


class Engine:
    def __init__(self, model: str | Path | None = None, store: Store | str | None = None,
                 mask_memory_bytes: int = 1 << 30, **engine_args):
        self.model_dir = Path(model) if model else default_model_dir()
        self.base_id = base_id(self.model_dir)
        self.store = store if isinstance(store, Store) else Store(store)
        self.llm = LLM(**default_engine_args(model=str(self.model_dir), **engine_args))
        self._key = new_mask_key()
        first_result(self.llm.collective_rpc("maskserve_setup", args=(str(self.model_dir), self.base_id,
                                                                      mask_memory_bytes, self._key)))
        self._served: dict[str, ServedMask] = {}

    def load(self, ref: str, pin: bool = False) -> ServedMask:
        """Resolve REF and make sure every worker holds it."""
        served = resolve(self.store, ref, self.base_id)
        first_result(self.llm.collective_rpc("maskserve_load", args=(served.path, pin)))
        self._served[served.digest] = served
        return served

    def unload(self, ref: str) -> bool:
        served = resolve(self.store, ref, self.base_id)
        return first_result(self.llm.collective_rpc("maskserve_unload", args=(served.digest,)))["unloaded"]

    def status(self) -> dict:
        return first_result(self.llm.collective_rpc("maskserve_status"))

    def _requests(self, prompts: Sequence, masks, params: SamplingParams):
        if masks is None or isinstance(masks, str):
            masks = [masks] * len(prompts)
        if len(masks) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(masks)} masks")
        loaded = {ref: self.load(ref) for ref in set(masks) if ref is not None}
        inputs, per_request = [], []
        for prompt, ref in zip(prompts, masks):
            item = {"prompt": prompt} if isinstance(prompt, str) else {"prompt_token_ids": [int(t) for t in prompt]}
            request_params = params.clone()
            if ref is not None:
                item["cache_salt"] = loaded[ref].cache_salt
                request_params.extra_args = {**(params.extra_args or {}), **loaded[ref].extra_args(self._key)}
            inputs.append(item)
            per_request.append(request_params)
        return inputs, per_request

    def generate(self, prompts: Sequence[str | Sequence[int]], masks: Sequence[str | None] | str | None = None,
                 sampling_params: SamplingParams | None = None, use_tqdm: bool = False):
        """One batch; masks[i] (a REF, or None for the base model) applies to prompts[i] only."""
        params = sampling_params or SamplingParams(max_tokens=64, temperature=0.0)
        inputs, per_request = self._requests(prompts, masks, params)
        return self.llm.generate(inputs, per_request, use_tqdm=use_tqdm)

    def prompt_logprobs(self, prompts: Sequence[str | Sequence[int]],
                        masks: Sequence[str | None] | str | None = None) -> list[np.ndarray]:
        """log p(token_i | tokens_<i) for i >= 1 of each prompt, under its mask."""
        outputs = self.generate(prompts, masks, SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0))
        result = []
        for out in outputs:
            ids = out.prompt_token_ids
            result.append(np.array([lp[tok].logprob for tok, lp in zip(ids[1:], out.prompt_logprobs[1:])]))
        return result
