"""A bf16 engine, the default on CPUs with AVX512-BF16 or AMX: it starts (its canary allows 16-bit rounding) and
applies masks. Slow: starts a real engine."""

import pytest
from vllm import SamplingParams

from mask_store.store import Store

from .helpers import make_mask

pytestmark = pytest.mark.slow


def test_a_bf16_engine_passes_its_canary_and_applies_masks(tiny_model, tmp_path):
    """The canary's flat 0.25 refused every bf16 engine on SmolLM2 (0.41 off under its mask, which moves the probe
    by 8.6), so mask-serve, mask-eval and `make demo` could not start where bf16 is the fast dtype."""
    from runtime.engine import Engine

    store = Store(tmp_path / "store")
    store.push(make_mask(tiny_model, tmp_path / "m.mask", 0.3, "0-3", "all", seed=0), "m")
    engine = Engine(tiny_model, store, dtype="bfloat16", enforce_eager=True, max_model_len=256, seed=0)
    try:
        assert engine.dtype == "bfloat16" and engine.canary["dtype"] == "bfloat16"
        params = SamplingParams(max_tokens=8, temperature=0.0)
        base, masked = (engine.generate(["Masks pick which weights a task keeps."], [m], params)[0].outputs[0].token_ids
                        for m in (None, "m"))
        assert base != masked
    finally:
        engine.llm.llm_engine.engine_core.shutdown()
