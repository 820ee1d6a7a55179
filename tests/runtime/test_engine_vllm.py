"""The vLLM engine with per-request masks, against the materialized oracle. Slow: starts real engines."""

import numpy as np
import pytest
from vllm import SamplingParams

from mask_store.errors import BaseMismatch
from mask_store.format import load_mask
from mask_store.store import Store
from runtime.reference import load_model, materialize, token_logprobs
from tests.tiny import make_tiny_model

from .helpers import make_mask

pytestmark = pytest.mark.slow

MASKS = {"m0": (0.1, "0-3", "all"), "m1": (0.3, "1-2", "attn"), "m2": (0.5, "2-3", "mlp"), "m3": (0.2, "0-1", "all")}
TEXTS = [
    "The quick brown fox jumps over the lazy dog, again and again, until the dog wakes up.",
    "Masks pick which weights a task keeps.",
    "0123456789 " * 6,
]


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    from runtime.engine import Engine

    root = tmp_path_factory.mktemp("engine")
    store = Store(root / "store")
    paths = {}
    for i, (name, (ratio, layers, modules)) in enumerate(MASKS.items()):
        paths[name] = make_mask(tiny_model, root / f"{name}.mask", ratio, layers, modules, seed=i)
        store.push(paths[name], name)
    engine = Engine(tiny_model, store, dtype="float32", max_model_len=512, max_num_batched_tokens=48,
                    max_num_seqs=32, seed=0)
    yield engine, paths
    engine.llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def oracles(tiny_model, setup):
    """The materialized model of each mask (and the base), from plain transformers."""
    _, paths = setup
    out = {}
    for name in [None, *MASKS]:
        model, tokenizer = load_model(tiny_model)
        if name:
            materialize(model, load_mask(paths[name]))
        out[name] = model
    return out, tokenizer


def test_logprobs_match_the_materialized_model(setup, oracles):
    engine, _ = setup
    models, tokenizer = oracles
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    base = token_logprobs(models[None], tokenizer, TEXTS)
    for name in [None, "m0", "m1", "m2"]:
        expected = token_logprobs(models[name], tokenizer, TEXTS)
        got = engine.prompt_logprobs(ids, name)
        for g, e, b in zip(got, expected, base):
            assert np.abs(g - e).max() <= 1e-3
            if name:
                assert np.abs(e - b).max() > 0.1  # the mask matters, so the comparison can fail


def _greedy(model, tokenizer, prompt_ids, n):
    import torch

    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return out[0, len(prompt_ids):].tolist()


def test_mixed_batch_isolation_with_chunked_prefill(setup):
    """32 requests over 4 masks and the base, shuffled, long and short prompts: each equals itself run alone."""
    engine, _ = setup
    rng = np.random.default_rng(0)
    names = [None, "m0", "m1", "m2", "m3"]
    requests = [
        (list(rng.integers(0, 256, int(rng.integers(3, 120)))), names[int(rng.integers(len(names)))])
        for _ in range(32)
    ]
    params = SamplingParams(max_tokens=8, temperature=0.0, logprobs=0)
    together = engine.generate([p for p, _ in requests], [m for _, m in requests], params)
    assert {m for _, m in requests} == set(names)
    assert any(len(p) > 48 for p, _ in requests)  # longer than max_num_batched_tokens: prefill is chunked
    for (prompt, mask), out in zip(requests, together):
        alone = engine.generate([prompt], [mask], params)[0]
        assert out.outputs[0].token_ids == alone.outputs[0].token_ids
        a = [next(iter(lp.values())).logprob for lp in out.outputs[0].logprobs]
        b = [next(iter(lp.values())).logprob for lp in alone.outputs[0].logprobs]
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_prefix_cache_never_shares_kv_between_masks(setup, oracles):
    engine, _ = setup
    models, tokenizer = oracles
    prompt = tokenizer(TEXTS[0] * 2)["input_ids"]
    params = SamplingParams(max_tokens=6, temperature=0.0)
    order = ["m0", "m1", None, "m0", "m1"]  # repeats hit the cache; switches must not
    for name in order:
        got = engine.generate([prompt], [name], params)[0].outputs[0].token_ids
        assert list(got) == _greedy(models[name], tokenizer, prompt, 6), name
    outputs = {n: engine.generate([prompt], [n], params)[0].outputs[0].token_ids for n in ("m0", "m1", None)}
    assert len({tuple(v) for v in outputs.values()}) == 3  # the masks really do disagree here


def test_requests_without_the_setup_key_get_the_base_model(setup):
    """What vLLM's other routes pass through from a client's vllm_xargs: never applied, never a crash."""
    engine, _ = setup
    digest = engine.load("m0").digest
    params = SamplingParams(max_tokens=6, temperature=0.0)
    base = engine.generate([TEXTS[0] * 2], [None], params)[0].outputs[0].token_ids
    masked = engine.generate([TEXTS[0] * 2], ["m0"], params)[0].outputs[0].token_ids
    assert base != masked
    forgeries = ({"mask": digest}, {"mask": "f" * 64, "mask_path": "/etc/passwd"}, {"mask": digest, "mask_key": "x"},
                 {"mask": digest, "mask_token": "é" * 32}, {"mask": ["x"], "mask_token": {"y": 1}})
    for forged in forgeries:  # the non-ASCII token raised in the forward pass's hook and killed the engine
        out = engine.llm.generate([TEXTS[0] * 2], SamplingParams(max_tokens=6, temperature=0.0, extra_args=forged),
                                  use_tqdm=False)
        assert out[0].outputs[0].token_ids == base, forged


def test_mask_for_another_base_is_refused(setup, tmp_path):
    engine, _ = setup
    other = make_tiny_model(tmp_path / "other", seed=7)
    engine.store.push(make_mask(other, tmp_path / "o.mask"), "other")
    with pytest.raises(BaseMismatch):
        engine.generate(["hello"], ["other"])


def test_bank_status_reports_loaded_masks(setup):
    engine, _ = setup
    engine.load("m0", pin=True)
    status = engine.status()
    pinned = [m for m in status["masks"] if m["pinned"]]
    assert status["used_bytes"] > 0 and len(pinned) == 1
