"""The per-row correction and the in-place path against the oracle: a materialized masked model."""

import numpy as np
import pytest
import torch

from mask_store.format import load_mask
from runtime.inplace import mask_in_place
from runtime.layout import hf_placement
from runtime.reference import HFMaskedModel, load_model, materialize

from .helpers import make_mask

CASES = [  # (ratio, layers, modules)
    (0.1, "0-3", "all"),
    (0.5, "1-2", "attn"),
    (0.3, "2-3", "mlp"),
    (0.9, "0-0", "q,down"),
]


@pytest.fixture(scope="module")
def masks(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("masks")
    return [make_mask(tiny_model, out / f"{i}.mask", r, l, m, seed=i) for i, (r, l, m) in enumerate(CASES)]


@pytest.fixture(scope="module")
def oracle_logits(tiny_model, masks):
    """Logits of each materialized masked model (and the base) on a fixed batch."""
    ids = torch.randint(0, 256, (3, 11), generator=torch.Generator().manual_seed(0))
    out = {}
    for path in [None, *masks]:
        model, _ = load_model(tiny_model)
        if path is not None:
            materialize(model, load_mask(path))
        with torch.no_grad():
            out[path] = model(ids).logits
    return ids, out


def test_masks_change_the_model(oracle_logits, masks):
    _, logits = oracle_logits
    for path in masks:
        assert (logits[path] - logits[None]).abs().max() > 0.1


def test_mixed_batch_matches_each_rows_materialized_model(tiny_model, masks, oracle_logits):
    ids, expected = oracle_logits
    served = HFMaskedModel(tiny_model, max_masks=len(masks))
    digests = {path: served.load(path).digest for path in masks}
    rng = np.random.default_rng(0)
    for _ in range(4):
        choice = [masks[i] if i < len(masks) else None for i in rng.integers(0, len(masks) + 1, ids.shape[0])]
        got = served.logits(ids, [digests.get(p) for p in choice])
        for row, path in enumerate(choice):
            torch.testing.assert_close(got[row], expected[path][row], atol=1e-4, rtol=1e-4)


def test_batch_without_masks_is_the_base_model(tiny_model, masks, oracle_logits):
    ids, expected = oracle_logits
    served = HFMaskedModel(tiny_model)
    served.load(masks[0])
    torch.testing.assert_close(served.logits(ids, [None] * ids.shape[0]), expected[None], atol=0, rtol=0)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_in_place_path_matches_and_restores_exactly(tiny_model, masks, oracle_logits, index):
    ids, expected = oracle_logits
    model, _ = load_model(tiny_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = {n.removesuffix(".weight"): p for n, p in model.named_parameters()}
    with mask_in_place(weights, load_mask(masks[index]), hf_placement), torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected[masks[index]], atol=1e-5, rtol=1e-5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
