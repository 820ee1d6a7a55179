"""The correction op: its CPU kernel against the pure-torch reference, torch.library's checks, and replay under
torch.compile with guards dropped (how vLLM runs a model on CPU: traced once, then reused for every step)."""

import numpy as np
import pytest
import torch

from mask_store.format import load_mask
from runtime.correction import reference_correction
from runtime.reference import HFMaskedModel, load_model, materialize
from runtime.slots import SlotConfig, SlotTable

from .helpers import make_mask


def _table(rng, shape, slots, density, device=torch.device("cpu")) -> SlotTable:
    """A slot table for one (out, in) layer with a random D in every slot but the last (left empty)."""
    out, n_in = shape
    table = SlotTable([shape], SlotConfig(slots, out * n_in, 64), device)
    for s in range(slots - 1):
        dense = torch.from_numpy(rng.standard_normal(shape) * (rng.random(shape) < density)).float()
        table.write(s, {0: dense.to_sparse_csr()}, f"slot {s}")
    return table


def _inputs(table, rng, rows, dtype):
    x = torch.from_numpy(rng.standard_normal((rows, table.shapes[0][1]))).to(dtype)
    y = torch.from_numpy(rng.standard_normal((rows, table.shapes[0][0]))).to(dtype)
    table.route(rng.integers(-1, table.num_slots, rows).astype(np.int32))
    return y, x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,slots,density", [(1, 2, 0.5), (7, 3, 0.1), (33, 5, 0.02), (16, 4, 0.0)])
def test_cpu_kernel_matches_the_reference(dtype, rows, slots, density):
    rng = np.random.default_rng(rows * slots)
    table = _table(rng, (24, 40), slots, density)
    y, x = _inputs(table, rng, rows, dtype)
    expected = y.clone()
    reference_correction(expected, x, table.token_slots, table.crow[0], table.seg[0], table.cols, table.vals)
    table.correct(y, x, 0)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y, expected, atol=tol, rtol=tol)


def test_a_cpu_table_in_the_cuda_layout_is_still_corrected():
    """The CPU kernel walks MKL views that only the CPU layout builds; a table in another layout (int16 columns,
    16-bit values) on CPU was served uncorrected, the base model for a masked row."""
    from runtime.slots import Layout

    rng = np.random.default_rng(3)
    shape, slots = (24, 40), 3
    table = SlotTable([shape], SlotConfig(slots, 24 * 40, 64, Layout(torch.int16, torch.bfloat16)), torch.device("cpu"))
    dense = torch.from_numpy(rng.standard_normal(shape) * (rng.random(shape) < 0.3)).to(torch.bfloat16).float()
    table.write(0, {0: dense.to_sparse_csr()}, "slot 0")
    x = torch.from_numpy(rng.standard_normal((6, 40))).float()
    table.route(np.array([0, -1, 0, 1, -1, 0], dtype=np.int32))
    y = torch.zeros(6, 24)
    table.correct(y, x, 0)
    masked = torch.tensor([0, 2, 5])
    torch.testing.assert_close(y[masked], -(x[masked] @ dense.T), atol=1e-4, rtol=1e-4)
    assert not y[[1, 3, 4]].any()


def test_each_step_is_grouped_by_its_own_mapping():
    """The CPU kernel reuses a step's row grouping across layers; a new mapping written into the same buffer (the
    next step) must be grouped afresh, including one that masks a single slot's rows only."""
    rng = np.random.default_rng(5)
    table = _table(rng, (24, 40), 4, 0.2)
    x = torch.from_numpy(rng.standard_normal((12, 40))).float()
    for mapping in ([0, 1, 2, -1] * 3, [2, 1, 0, 0] * 3, [1] * 12, [-1] * 11 + [0], [2, 1, 0, 0] * 3):
        table.route(np.array(mapping, dtype=np.int32))
        y = torch.from_numpy(rng.standard_normal((12, 24))).float()
        expected = y.clone()
        reference_correction(expected, x, table.token_slots, table.crow[0], table.seg[0], table.cols, table.vals)
        table.correct(y, x, 0)
        torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_base_rows_are_left_bit_for_bit():
    rng = np.random.default_rng(1)
    table = _table(rng, (8, 16), 3, 0.5)
    y, x = _inputs(table, rng, 20, torch.float32)
    before = y.clone()
    table.correct(y, x, 0)
    base = (table.token_slots[:20] < 0) | (table.token_slots[:20] == 2)  # slot 2 is empty
    assert torch.equal(y[base], before[base]) and not torch.equal(y[~base], before[~base])


def test_opcheck():
    rng = np.random.default_rng(2)
    table = _table(rng, (12, 20), 3, 0.3)
    y, x = _inputs(table, rng, 9, torch.float32)
    for layer in (-1, table.layer_ids[0]):  # views built from the arguments, and the prebuilt ones
        torch.library.opcheck(torch.ops.maskserve.masked_correction.default,
                              (y, x, table.token_slots, table.crow[0], table.seg[0], table.cols, table.vals, layer),
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_compiled_once_then_replayed_under_other_mappings_matches_the_oracle(tiny_model, tmp_path):
    """fullgraph compile with every guard dropped, traced on a base-only batch, then rows remapped: each row must be
    its own mask's materialized model. A module that branched on per-step Python state would replay the base."""
    paths = [make_mask(tiny_model, tmp_path / f"{i}.mask", 0.3, "0-3", "all", seed=i) for i in range(2)]
    served = HFMaskedModel(tiny_model, max_masks=2)
    digests = [served.load(p).digest for p in paths]
    ids = torch.randint(0, 256, (3, 9), generator=torch.Generator().manual_seed(0))
    expected = {}
    for i, path in enumerate([None, *paths]):
        model, _ = load_model(tiny_model)
        if path:
            materialize(model, load_mask(path))
        with torch.no_grad():
            expected[None if path is None else digests[i - 1]] = model(ids).logits
    torch._dynamo.reset()
    compiled = torch.compile(served.model, fullgraph=True, backend="aot_eager",
                             options={"guard_filter_fn": lambda guards: [False] * len(guards)})
    with torch.no_grad():
        compiled(ids)  # traced here, with every row on the base model
        for rows in ([digests[0], None, digests[1]], [digests[1], digests[1], digests[0]], [None, None, None]):
            slots = np.array([-1 if d is None else served.bank.slot_of(d) for d in rows], dtype=np.int32)
            served.table.route(np.repeat(slots, ids.shape[1]))
            got = compiled(ids).logits
            for row, digest in enumerate(rows):
                torch.testing.assert_close(got[row], expected[digest][row], atol=1e-4, rtol=1e-4)
    served.table.route_base()


def test_layout_per_device():
    from runtime.slots import Layout

    cuda = torch.device("cuda")
    assert Layout.for_device(torch.device("cpu"), 576, torch.bfloat16).entry_bytes == 8  # what MKL reads
    assert Layout.for_device(cuda, 1536, torch.bfloat16) == Layout(torch.int16, torch.bfloat16)  # 4 bytes
    assert Layout.for_device(cuda, 1 << 15, torch.float16) == Layout(torch.int16, torch.float16)
    assert Layout.for_device(cuda, (1 << 15) + 1, torch.bfloat16).index_dtype == torch.int32
    assert Layout.for_device(cuda, 1536, torch.float32).value_dtype == torch.float32  # exact fp32 values
