"""Tensor-parallel slicing: ranks' local pieces must add up to the unsharded layer, as vLLM computes it."""

import numpy as np
import pytest

from runtime.layout import ModelShape, hf_placement, vllm_placement

PREFIX = "model.layers.3."


def shards(shape: ModelShape, tp: int, rng):
    """Random HF weights and, per rank, the local fused matrices our placements build from them."""
    hd, h, i = shape.head_dim, shape.hidden_size, shape.intermediate_size
    hf = {
        "q": rng.standard_normal((shape.num_heads * hd, h)),
        "k": rng.standard_normal((shape.num_kv_heads * hd, h)),
        "v": rng.standard_normal((shape.num_kv_heads * hd, h)),
        "o": rng.standard_normal((h, shape.num_heads * hd)),
        "gate": rng.standard_normal((i, h)),
        "up": rng.standard_normal((i, h)),
        "down": rng.standard_normal((h, i)),
    }
    locals_ = []
    for rank in range(tp):
        modules = {}
        for proj, w in hf.items():
            block = "self_attn" if proj in ("q", "k", "v", "o") else "mlp"
            p = vllm_placement(f"{PREFIX}{block}.{proj}_proj.weight", shape, rank, tp)
            held, rows, cols = p.select(np.arange(w.size), w.shape)
            m = modules.setdefault(p.module, {})
            for r, c, v in zip(rows, cols, w.ravel()[held]):
                m[(r, c)] = v
        locals_.append({k: _dense(v) for k, v in modules.items()})
    return hf, locals_


def _dense(entries):
    rows = max(r for r, _ in entries) + 1
    cols = max(c for _, c in entries) + 1
    out = np.full((rows, cols), np.nan)
    for (r, c), v in entries.items():
        out[r, c] = v
    assert not np.isnan(out).any(), "a local matrix has holes"
    return out


@pytest.mark.parametrize("heads, kv_heads, tp", [(4, 4, 1), (4, 2, 1), (4, 4, 2), (4, 2, 2), (4, 2, 4), (4, 1, 4)])
def test_shards_recompute_the_unsharded_layers(heads, kv_heads, tp):
    shape = ModelShape(hidden_size=8, intermediate_size=12, num_heads=heads, num_kv_heads=kv_heads, head_dim=2, num_layers=1)
    rng = np.random.default_rng(0)
    hf, ranks = shards(shape, tp, rng)
    x = rng.standard_normal((3, shape.hidden_size))
    x_inter = rng.standard_normal((3, shape.intermediate_size))
    x_attn = rng.standard_normal((3, heads * shape.head_dim))
    q_local = heads // tp * shape.head_dim
    kv_local = max(1, kv_heads // tp) * shape.head_dim
    # Column-parallel: each rank's outputs are its q heads, then its k and v heads (replicated when kv < tp).
    qkv = [x @ r[f"{PREFIX}self_attn.qkv_proj"].T for r in ranks]
    np.testing.assert_allclose(np.concatenate([y[:, :q_local] for y in qkv], 1), x @ hf["q"].T)
    replicas = max(1, tp // kv_heads)
    k_parts = [y[:, q_local : q_local + kv_local] for y in qkv][::replicas]
    v_parts = [y[:, q_local + kv_local :] for y in qkv][::replicas]
    np.testing.assert_allclose(np.concatenate(k_parts, 1), x @ hf["k"].T)
    np.testing.assert_allclose(np.concatenate(v_parts, 1), x @ hf["v"].T)
    gate_up = [x @ r[f"{PREFIX}mlp.gate_up_proj"].T for r in ranks]
    half = shape.intermediate_size // tp
    np.testing.assert_allclose(np.concatenate([y[:, :half] for y in gate_up], 1), x @ hf["gate"].T)
    np.testing.assert_allclose(np.concatenate([y[:, half:] for y in gate_up], 1), x @ hf["up"].T)
    # Row-parallel: each rank sees its slice of the input; the all-reduce sums the partial outputs.
    o_cols, d_cols = heads * shape.head_dim // tp, shape.intermediate_size // tp
    o_sum = sum(x_attn[:, k * o_cols : (k + 1) * o_cols] @ r[f"{PREFIX}self_attn.o_proj"].T for k, r in enumerate(ranks))
    down_sum = sum(x_inter[:, k * d_cols : (k + 1) * d_cols] @ r[f"{PREFIX}mlp.down_proj"].T for k, r in enumerate(ranks))
    np.testing.assert_allclose(o_sum, x_attn @ hf["o"].T)
    np.testing.assert_allclose(down_sum, x_inter @ hf["down"].T)


def test_uneven_split_is_refused():
    shape = ModelShape(hidden_size=8, intermediate_size=10, num_heads=3, num_kv_heads=3, head_dim=2, num_layers=1)
    with pytest.raises(ValueError, match="evenly"):
        vllm_placement(f"{PREFIX}self_attn.q_proj.weight", shape, 0, 2)


def test_hf_placement_is_identity():
    p = hf_placement(f"{PREFIX}mlp.down_proj.weight", (4, 6))
    held, rows, cols = p.select(np.array([0, 7, 23]), (4, 6))
    assert p.module == f"{PREFIX}mlp.down_proj"
    assert held.tolist() == [0, 7, 23] and rows.tolist() == [0, 1, 3] and cols.tolist() == [0, 1, 5]
