import os

import pytest
from safetensors.torch import load_file, save_file

from mask_store import identity as base_id_module
from mask_store.identity import base_id
from mask_store.errors import ModelError
from tests.tiny import make_tiny_model


def test_sharding_does_not_change_the_id(tmp_path, tiny_model):
    sharded = make_tiny_model(tmp_path / "sharded", max_shard_size="60KB")
    assert len(list(sharded.glob("*.safetensors"))) > 2
    assert base_id(sharded) == base_id(tiny_model)


def test_one_changed_weight_changes_the_id(tmp_path, tiny_model):
    weights = load_file(tiny_model / "model.safetensors")
    name = "model.layers.2.mlp.down_proj.weight"
    weights[name][3, 5] += 1e-3
    changed = tmp_path / "changed"
    changed.mkdir()
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt", "note": "other metadata"})
    assert base_id(changed) != base_id(tiny_model)


def test_file_metadata_and_order_do_not_change_the_id(tmp_path, tiny_model):
    weights = load_file(tiny_model / "model.safetensors")
    names = sorted(weights)
    other = tmp_path / "other"
    other.mkdir()
    save_file({n: weights[n] for n in names[::2]}, other / "z-first.safetensors", metadata={"a": "1"})
    save_file({n: weights[n] for n in names[1::2]}, other / "a-second.safetensors")
    assert base_id(other) == base_id(tiny_model)


def test_ids_are_cached_and_invalidated_by_mtime(tmp_path, monkeypatch):
    model = make_tiny_model(tmp_path / "m")
    calls = []
    real = base_id_module._hash_file
    monkeypatch.setattr(base_id_module, "_hash_file", lambda p: calls.append(p) or real(p))
    first = base_id(model)
    assert base_id(model) == first and len(calls) == 1
    os.utime(model / "model.safetensors", ns=(1, 1))
    assert base_id(model) == first and len(calls) == 2


def test_a_folder_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no \\*.safetensors"):
        base_id(tmp_path)
    with pytest.raises(ModelError, match="not a model folder"):
        base_id(tmp_path / "missing")
