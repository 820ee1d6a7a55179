"""Tensor parallelism 2 on vLLM's CPU backend (gloo / shared-memory all-reduce): the oracle test. Slow.

Column-parallel layers (qkv, gate_up) correct their own output rows; row-parallel layers (o, down) correct their
shard's partial sum inside quant_method.apply, before vLLM's all-reduce, so no extra communication is needed. The
tiny Llama has 4 query and 2 key/value heads, so both split evenly over 2 ranks.
"""

import numpy as np
import pytest

from mask_store.format import load_mask
from mask_store.store import Store
from runtime.reference import load_model, materialize, token_logprobs

from .helpers import make_mask

pytestmark = pytest.mark.slow

TEXTS = ["The quick brown fox jumps over the lazy dog.", "0123456789 " * 4]
MASKS = {"rows": (0.3, "0-3", "o,down"), "cols": (0.3, "0-3", "q,k,v,gate,up")}


def test_tp2_logprobs_match_the_materialized_model(tiny_model, tmp_path, monkeypatch):
    from runtime.engine import Engine

    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")
    store = Store(tmp_path / "store")
    paths = {}
    for i, (name, (ratio, layers, modules)) in enumerate(MASKS.items()):
        paths[name] = make_mask(tiny_model, tmp_path / f"{name}.mask", ratio, layers, modules, seed=i)
        store.push(paths[name], name)
    engine = Engine(tiny_model, store, dtype="float32", tensor_parallel_size=2, max_model_len=256,
                    max_num_batched_tokens=64, max_num_seqs=8, distributed_executor_backend="mp")
    try:
        model, tokenizer = load_model(tiny_model)
        ids = [tokenizer(t)["input_ids"] for t in TEXTS]
        base = token_logprobs(model, tokenizer, TEXTS)
        for name in [None, *MASKS]:
            model, _ = load_model(tiny_model)
            if name:
                materialize(model, load_mask(paths[name]))
            expected = token_logprobs(model, tokenizer, TEXTS)
            got = engine.prompt_logprobs(ids, name)
            assert max(float(np.abs(g - e).max()) for g, e in zip(got, expected)) <= 1e-3, name
            if name:
                assert max(float(np.abs(e - b).max()) for e, b in zip(expected, base)) > 0.1
        assert engine.canary["mask_error"] <= 1e-3
    finally:
        engine.llm.llm_engine.engine_core.shutdown()
