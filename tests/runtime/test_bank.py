import pytest

from mask_store.errors import BankFull, BaseMismatch
from runtime.reference import HFMaskedModel
from tests.tiny import make_tiny_model

from .helpers import make_mask


@pytest.fixture(scope="module")
def paths(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bank")
    return [make_mask(tiny_model, out / f"{i}.mask", 0.2, "0-1", "all", seed=i) for i in range(4)]


def _bank(tiny_model, budget):
    return HFMaskedModel(tiny_model, budget_bytes=budget).bank


def test_lru_eviction_within_budget(tiny_model, paths):
    size = _bank(tiny_model, 1 << 30).load(paths[0]).nbytes
    bank = _bank(tiny_model, 2 * size + size // 2)  # room for two
    a, b = bank.load(paths[0]).digest, bank.load(paths[1]).digest
    bank.touch([a])  # b is now the least recently used
    c = bank.load(paths[2]).digest
    assert set(bank.loaded) == {a, c}
    assert bank.nbytes <= bank.budget_bytes
    # Unloading removes the deltas from every layer.
    assert bank.unload(a) and all(a not in layer.deltas for layer in bank.layers.values())


def test_pinned_and_in_use_masks_are_not_evicted(tiny_model, paths):
    size = _bank(tiny_model, 1 << 30).load(paths[0]).nbytes
    bank = _bank(tiny_model, 2 * size + size // 2)
    a = bank.load(paths[0], pin=True).digest
    b = bank.load(paths[1]).digest
    with pytest.raises(BankFull, match="pinned or in use"):
        bank.load(paths[2], in_use=[b])
    c = bank.load(paths[2]).digest
    assert set(bank.loaded) == {a, c}


def test_a_scheduled_request_reloads_its_mask_over_budget(tiny_model, paths):
    # The worker's forward-time reload: refusing there would take the engine down.
    size = _bank(tiny_model, 1 << 30).load(paths[0]).nbytes
    bank = _bank(tiny_model, size + size // 2)
    a = bank.load(paths[0], pin=True).digest
    b = bank.load(paths[1], over_budget=True).digest
    assert set(bank.loaded) == {a, b} and bank.nbytes > bank.budget_bytes
    c = bank.load(paths[2], over_budget=True).digest  # b is evictable, so room is still made first
    assert set(bank.loaded) == {a, c}


def test_a_mask_larger_than_the_budget_is_refused(tiny_model, paths):
    with pytest.raises(BankFull, match="more than the mask memory budget"):
        _bank(tiny_model, 1000).load(paths[0])


def test_mask_for_another_base_is_refused(tiny_model, tmp_path, paths):
    other = make_tiny_model(tmp_path / "other", seed=1)
    bank = HFMaskedModel(other).bank
    with pytest.raises(BaseMismatch):
        bank.load(paths[0])
    assert len(bank) == 0


def test_loading_twice_is_a_no_op(tiny_model, paths):
    bank = _bank(tiny_model, 1 << 30)
    first = bank.load(paths[0])
    assert bank.load(paths[0], pin=True) is first and first.pinned
