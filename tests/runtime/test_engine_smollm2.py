"""The engine on the real default model: SmolLM2-135M, local-MFT-shaped masks, fp32. Slow."""

import numpy as np
import pytest

from mask_store.format import load_mask
from mask_store.store import Store
from runtime.reference import load_model, materialize, token_logprobs

from .helpers import make_mask

pytestmark = pytest.mark.slow

TEXTS = [
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer: 8",
    "def add(a, b):\n    return a + b\n",
]


def test_smollm2_logprobs_match_the_materialized_model(smollm2, tmp_path):
    from runtime.engine import Engine

    store = Store(tmp_path / "store")
    specs = {"a": (0.1, "20-23", "all"), "b": (0.1, "0-3", "mlp"), "c": (0.3, "10-13", "attn")}
    paths = {}
    for i, (name, (ratio, layers, modules)) in enumerate(specs.items()):
        paths[name] = make_mask(smollm2, tmp_path / f"{name}.mask", ratio, layers, modules, seed=i)
        store.push(paths[name], name)
    engine = Engine(smollm2, store, dtype="float32", max_model_len=1024)
    try:
        model, tokenizer = load_model(smollm2)
        ids = [tokenizer(t)["input_ids"] for t in TEXTS]
        base = token_logprobs(model, tokenizer, TEXTS)
        for name in [None, *specs]:
            if name:
                model, _ = load_model(smollm2)
                materialize(model, load_mask(paths[name]))
            expected = token_logprobs(model, tokenizer, TEXTS)
            got = engine.prompt_logprobs(ids, name)
            diffs = [float(np.abs(g - e).max()) for g, e in zip(got, expected)]
            assert max(diffs) <= 1e-3, (name, diffs)
            if name:
                assert max(float(np.abs(e - b).max()) for e, b in zip(expected, base)) > 0.1
    finally:
        engine.llm.llm_engine.engine_core.shutdown()
