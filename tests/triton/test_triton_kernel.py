"""The Triton kernel against the pure-torch reference, on CPU through Triton's interpreter.

Run by `make test-triton` (TRITON_INTERPRET=1, in .venv-triton: torch + triton + numpy + pytest, nothing else).
"""

import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1")


def _slot_table(rng, out, n_in, slots, density, pool, index_dtype, value_dtype):
    """Random per-slot CSR matrices packed as the SlotTable packs them (segments at an offset in each pool)."""
    crow = torch.zeros((slots, out + 1), dtype=torch.int32)
    seg = torch.zeros((slots,), dtype=torch.int64)
    cols = torch.zeros((slots, pool), dtype=index_dtype)
    vals = torch.zeros((slots, pool), dtype=value_dtype)
    for s in range(slots):
        dense = torch.from_numpy(rng.standard_normal((out, n_in)) * (rng.random((out, n_in)) < density)).float()
        csr = dense.to_sparse_csr()
        n = csr.values().numel()
        offset = int(rng.integers(0, pool - n + 1))
        crow[s] = csr.crow_indices().to(torch.int32)
        seg[s] = offset
        cols[s, offset:offset + n] = csr.col_indices().to(index_dtype)
        vals[s, offset:offset + n] = csr.values().to(value_dtype)
    return crow, seg, cols, vals


@pytest.mark.parametrize("layout", [(torch.int32, torch.float32), (torch.int16, torch.bfloat16)],
                         ids=["cpu-layout", "16bit-layout"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,out,n_in,slots,density", [(1, 8, 16, 1, 0.5), (5, 40, 24, 3, 0.2), (9, 70, 33, 4, 0.05),
                                                           (3, 33, 65, 2, 0.0)])
def test_triton_kernel_matches_the_reference(layout, dtype, rows, out, n_in, slots, density):
    from runtime.correction import reference_correction
    from runtime.correction_triton import triton_correction

    rng = np.random.default_rng(rows * out)
    crow, seg, cols, vals = _slot_table(rng, out, n_in, slots, density, out * n_in + 7, *layout)
    token_slots = torch.from_numpy(rng.integers(-1, slots, rows + 3).astype(np.int32))  # longer than the step
    x = torch.from_numpy(rng.standard_normal((rows, n_in))).to(dtype)
    y = torch.from_numpy(rng.standard_normal((rows, out))).to(dtype)
    expected = y.clone()
    reference_correction(expected, x, token_slots, crow, seg, cols, vals)
    triton_correction(y, x, token_slots, crow, seg, cols, vals, -1)
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(y, expected, atol=tol, rtol=tol)
    base = token_slots[:rows] < 0
    assert torch.equal(y[base], expected[base])
