"""The bank: the one owner of which mask sits in which slot; LRU over slots, pinned and protected masks stay."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mask_store.errors import BaseMismatch
from mask_store.format import load_mask, save_mask
from runtime.bank import BankFull
from runtime.layout import IncompatibleMask
from runtime.reference import HFMaskedModel
from runtime.slots import MaskTooLarge
from tests.tiny import make_tiny_model

from .helpers import make_mask


@pytest.fixture(scope="module")
def paths(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bank")
    return [make_mask(tiny_model, out / f"{i}.mask", 0.2, "0-1", "all", seed=i) for i in range(4)]


def _model(tiny_model, slots, budget=1 << 26):
    """The reference's bank, loading mask files as it does (`load`: the file's digest unless told)."""
    return HFMaskedModel(tiny_model, max_masks=slots, budget_bytes=budget)


def test_lru_eviction_over_slots(tiny_model, paths):
    model = _model(tiny_model, 2)
    a, b = model.load(paths[0]).digest, model.load(paths[1]).digest
    model.bank.touch([a])  # b is now the least recently used
    c = model.load(paths[2])
    assert set(model.bank.loaded) == {a, c.digest}
    assert c.slot == 1  # written in place into b's slot
    # Unloading clears the slot in every layer.
    slot = model.bank.slot_of(a)
    assert model.bank.unload(a) and all(int(crow[slot].abs().sum()) == 0 for crow in model.bank.table.crow)


def test_pinned_and_protected_masks_are_not_evicted(tiny_model, paths):
    model = _model(tiny_model, 2)
    a = model.load(paths[0], pin=True).digest
    b = model.load(paths[1]).digest
    with pytest.raises(BankFull, match="pinned masks or masks in use"):
        model.load(paths[2], protect=[b])
    c = model.load(paths[2]).digest
    assert set(model.bank.loaded) == {a, c}


def test_a_mask_larger_than_a_slot_is_refused(tiny_model, paths):
    model = _model(tiny_model, 2, budget=1000)
    with pytest.raises(MaskTooLarge, match="a slot holds"):
        model.load(paths[0])
    assert len(model.bank) == 0


def test_mask_for_another_base_is_refused(tiny_model, tmp_path, paths):
    other = make_tiny_model(tmp_path / "other", seed=1)
    model = HFMaskedModel(other)
    with pytest.raises(BaseMismatch):
        model.load(paths[0])
    assert len(model.bank) == 0


def test_mask_whose_tensors_are_not_the_models_is_refused(tiny_model, tmp_path, paths):
    """Same base id, other names or shapes (a same-size wrong shape used to load silently): never decoded."""
    model = _model(tiny_model, 2)
    mask = load_mask(paths[0])
    name, tensor = next(iter(mask.tensors.items()))
    cases = {
        "renamed": {**mask.tensors, name.replace("layers.0", "layers.99"): tensor},
        "transposed": {**mask.tensors, name: type(tensor)(tensor.shape[::-1], tensor.removed)},
        "same size": {**mask.tensors, name: type(tensor)((tensor.shape[0] * 2, tensor.shape[1] // 2), tensor.removed)},
    }
    for case, tensors in cases.items():
        path = tmp_path / f"{case.replace(' ', '_')}.mask"
        save_mask(replace(mask, tensors=tensors), path)
        with pytest.raises(IncompatibleMask):
            model.load(path)
    assert len(model.bank) == 0


def test_loading_twice_is_a_no_op(tiny_model, paths):
    model = _model(tiny_model, 2)
    first = model.load(paths[0])
    assert model.load(paths[0], pin=True) is first and first.pinned
    assert np.count_nonzero([m.pinned for m in model.bank.loaded.values()]) == 1


def test_asking_for_a_resident_mask_by_digest_reads_no_file(tiny_model, paths, tmp_path):
    """The server asks before every request it admits: a resident mask must cost a lookup, not a read and decode."""
    import shutil

    from mask_store.format import read_mask_file

    model = _model(tiny_model, 2)
    copy = shutil.copy(paths[0], tmp_path / "copy.mask")
    first = model.load(copy, digest=read_mask_file(copy).digest)
    Path(copy).unlink()  # gc may remove a blob while its mask is resident
    assert model.load(copy, digest=first.digest) is first


def test_a_file_holding_another_mask_is_refused(tiny_model, paths):
    """A damaged or swapped blob never loads under the digest the server resolved."""
    from mask_store.errors import CorruptMask
    from mask_store.format import read_mask_file

    model = _model(tiny_model, 2)
    wanted = read_mask_file(paths[0]).digest
    with pytest.raises(CorruptMask, match="holds mask"):
        model.load(paths[1], digest=wanted)
    assert len(model.bank) == 0
    assert model.load(paths[0], digest=wanted).digest == wanted


def test_a_mask_in_use_is_not_unloaded(tiny_model, paths):
    from runtime.bank import MaskInUse

    model = _model(tiny_model, 2)
    a = model.load(paths[0]).digest
    with pytest.raises(MaskInUse, match="in use"):
        model.bank.unload(a, protect=[a])
    assert a in model.bank and model.bank.unload(a) and a not in model.bank
