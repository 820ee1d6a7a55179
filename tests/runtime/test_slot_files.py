"""Slot files: what the API side prepares for a mask and a worker copies into a slot. Each rank's matrices equal
what gathering on that rank gives; a file that is not what it claims, or whose matrices would index outside a
layer, is refused as CorruptMask; the folder keeps files up to its budget and never one in use."""

import threading
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from transformers import AutoConfig

from mask_store.errors import BaseMismatch, CorruptMask
from mask_store.format import read_mask_file
from mask_store.identity import base_id
from runtime import slot_files
from runtime.deltas import CheckpointReader, build_deltas
from runtime.layout import IncompatibleMask, ModelShape, vllm_placement
from runtime.slot_files import SlotFiles, SlotPlan, prepare, read_slot_file

from .helpers import make_mask


def vllm_plan(model_dir, tp_size: int) -> SlotPlan:
    """vLLM's fused layers of a Llama on one of `tp_size` ranks, as a worker reports them."""
    shape = ModelShape.from_config(AutoConfig.from_pretrained(model_dir))
    hd, hidden, inter = shape.head_dim, shape.hidden_size, shape.intermediate_size
    qkv = (shape.num_heads // tp_size + 2 * max(shape.num_kv_heads // tp_size, 1)) * hd
    per_layer = {"self_attn.qkv_proj": (qkv, hidden), "self_attn.o_proj": (hidden, shape.num_heads * hd // tp_size),
                 "mlp.gate_up_proj": (2 * inter // tp_size, hidden), "mlp.down_proj": (hidden, inter // tp_size)}
    names = [(f"model.layers.{i}.{m}", s) for i in range(shape.num_layers) for m, s in per_layer.items()]
    return SlotPlan(base_id(model_dir), tuple(n for n, _ in names), tuple(s for _, s in names), tp_size, shape)


@pytest.fixture(scope="module")
def mask_path(tiny_model, tmp_path_factory):
    return make_mask(tiny_model, tmp_path_factory.mktemp("slot-files") / "m.mask", 0.2, "0-3", "all", seed=3)


def _digest(path) -> str:
    return read_mask_file(path).digest


def _dense(csr: torch.Tensor) -> torch.Tensor:
    return csr.to_dense()


@pytest.mark.parametrize("tp_size", [1, 2])
def test_each_ranks_matrices_are_what_gathering_on_that_rank_gives(tiny_model, mask_path, tmp_path, tp_size):
    plan, reader = vllm_plan(tiny_model, tp_size), CheckpointReader(tiny_model)
    path = tmp_path / "m.safetensors"
    path.write_bytes(prepare(mask_path, _digest(mask_path), plan, reader))
    mask = read_mask_file(mask_path).decode()
    for rank in range(tp_size):
        got = read_slot_file(path, _digest(mask_path), plan, rank)
        want = build_deltas(mask, reader, lambda n, _s: vllm_placement(n, plan.model, rank, tp_size), plan.shape_of)
        assert sorted(got) == sorted(want) and len(got) == 16  # every fused layer of the 4 blocks
        for module in want:
            assert torch.equal(_dense(got[module]), _dense(want[module])), (rank, module)
    if tp_size == 2:  # the ranks hold different halves: a rank that read the other's share would differ
        ranks = [read_slot_file(path, _digest(mask_path), plan, r) for r in range(2)]
        assert not torch.equal(_dense(ranks[0]["model.layers.0.self_attn.qkv_proj"]),
                               _dense(ranks[1]["model.layers.0.self_attn.qkv_proj"]))


def test_a_mask_that_cannot_apply_is_refused_before_anything_is_written(tiny_model, mask_path, tmp_path):
    plan, reader = vllm_plan(tiny_model, 1), CheckpointReader(tiny_model)
    other = make_mask(tiny_model, tmp_path / "other.mask", 0.2, "0-1", "all", seed=4)
    with pytest.raises(CorruptMask, match="holds mask"):
        prepare(other, _digest(mask_path), plan, reader)
    with pytest.raises(BaseMismatch):
        prepare(mask_path, _digest(mask_path), replace(plan, base_id="0" * 64), reader)
    small = replace(plan, model=replace(plan.model, num_layers=1))
    with pytest.raises(IncompatibleMask, match="not a masked projection"):
        prepare(mask_path, _digest(mask_path), small, reader)


def test_a_file_for_another_mask_or_engine_is_refused(tiny_model, mask_path, tmp_path):
    plan, digest = vllm_plan(tiny_model, 1), _digest(mask_path)
    path = tmp_path / "m.safetensors"
    path.write_bytes(prepare(mask_path, digest, plan, CheckpointReader(tiny_model)))
    with pytest.raises(CorruptMask, match="not made for mask"):
        read_slot_file(path, "f" * 64, plan, 0)
    with pytest.raises(CorruptMask, match="not made for mask"):
        read_slot_file(path, digest, vllm_plan(tiny_model, 2), 0)


def _file(tmp_path, plan, digest, module, crow, cols, vals, extra=None):
    tensors = {f"0/{module}/crow": crow, f"0/{module}/cols": cols, f"0/{module}/vals": vals, **(extra or {})}
    path = tmp_path / "forged.safetensors"
    save_file(tensors, path, metadata={"format": slot_files.FORMAT, "digest": digest, "plan": plan.key})
    return path


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_forged_file_is_a_valid_csr_of_the_layer_or_refused(tiny_model, tmp_path, data):
    """Whatever offsets and columns a file holds, what comes out can never index outside the layer's shape."""
    plan = vllm_plan(tiny_model, 1)
    module = plan.names[1]
    rows, n_in = plan.shape_of[module]
    n = data.draw(st.integers(0, 12))
    crow = data.draw(st.lists(st.integers(-2, n + 2), min_size=1, max_size=rows + 3))
    cols = data.draw(st.lists(st.integers(-3, n_in + 3), min_size=n, max_size=n))
    dtypes = data.draw(st.sampled_from([(torch.int32, torch.float32), (torch.int64, torch.float32),
                                        (torch.int32, torch.float16)]))
    path = _file(tmp_path, plan, "d" * 64, module, torch.tensor(crow, dtype=torch.int32),
                 torch.tensor(cols, dtype=dtypes[0]), torch.zeros(len(cols), dtype=dtypes[1]))
    try:
        got = read_slot_file(path, "d" * 64, plan, 0)[module]
    except CorruptMask:
        return
    offsets, columns = got.crow_indices().numpy(), got.col_indices().numpy()
    assert len(offsets) == rows + 1 and offsets[0] == 0 and offsets[-1] == len(columns)
    assert np.all(np.diff(offsets) >= 0) and np.all((columns >= 0) & (columns < n_in))


def test_a_file_naming_a_layer_the_engine_lacks_or_missing_a_part_is_refused(tiny_model, tmp_path):
    plan = vllm_plan(tiny_model, 1)
    empty = (torch.zeros(3, dtype=torch.int32), torch.zeros(0, dtype=torch.int32), torch.zeros(0))
    path = _file(tmp_path, plan, "d" * 64, "model.layers.9.mlp.down_proj", *empty)
    with pytest.raises(CorruptMask, match="not a masked layer"):
        read_slot_file(path, "d" * 64, plan, 0)
    module = plan.names[1]
    path = tmp_path / "partial.safetensors"
    save_file({f"0/{module}/crow": empty[0], f"0/{module}/vals": empty[2]}, path,
              metadata={"format": slot_files.FORMAT, "digest": "d" * 64, "plan": plan.key})
    with pytest.raises(CorruptMask, match="lacks part"):
        read_slot_file(path, "d" * 64, plan, 0)


def test_files_are_prepared_once_kept_while_in_use_and_trimmed_to_the_budget(tiny_model, tmp_path, monkeypatch):
    masks = [make_mask(tiny_model, tmp_path / f"{i}.mask", 0.1, "0-0", "all", seed=i) for i in range(3)]
    digests = [_digest(p) for p in masks]
    calls = []
    real = slot_files.prepare
    monkeypatch.setattr(slot_files, "prepare", lambda *a: calls.append(a[1]) or real(*a))
    size = len(real(masks[0], digests[0], vllm_plan(tiny_model, 1), CheckpointReader(tiny_model)))
    files = SlotFiles(vllm_plan(tiny_model, 1), tiny_model, budget_bytes=2 * size + size // 2, parent=tmp_path)
    first = files.acquire(masks[0], digests[0])
    assert files.acquire_ready(digests[0]) == first and files.acquire(masks[0], digests[0]) == first
    assert calls == [digests[0]]  # prepared once
    for _ in range(3):
        files.release(digests[0])
    for path, digest in zip(masks[1:], digests[1:]):
        files.acquire(path, digest)
    # three files past a budget of two and a half: the least recently used one not in use goes
    assert not files.path(digests[0]).exists() and files.acquire_ready(digests[0]) is None
    files.release(digests[1])
    files.release(digests[2])
    assert files.path(digests[1]).exists() and files.path(digests[2]).exists()
    files.close()
    assert not files.folder.exists()


def test_concurrent_acquires_of_one_mask_prepare_it_once(tiny_model, mask_path, tmp_path, monkeypatch):
    gate, calls = threading.Event(), []
    real = slot_files.prepare

    def slow(*args):
        calls.append(args[1])
        gate.wait(10)  # held until every thread has started
        return real(*args)

    monkeypatch.setattr(slot_files, "prepare", slow)
    files = SlotFiles(vllm_plan(tiny_model, 1), tiny_model, budget_bytes=1 << 30, parent=tmp_path)
    results = []
    threads = [threading.Thread(target=lambda: results.append(files.acquire(mask_path, _digest(mask_path))))
               for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert calls == [_digest(mask_path)] and len(set(results)) == 1 and len(results) == 4
