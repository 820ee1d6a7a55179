"""The correction op's CUDA kernel, in Triton: one program per (row, output feature), walking that feature's
removed weights in the row's slot.

Graph-safe by construction: the grid comes from shapes alone, the slot of a row is read on the device, a base row's
program returns at once, and nothing is copied to the host. Checked against `reference_correction` on CPU by
Triton's interpreter (`make test-triton`, TRITON_INTERPRET=1, in a virtualenv of its own: installing triton next
to vLLM would switch vLLM to Model Runner V2). Not yet measured on a GPU.
"""

import triton
import triton.language as tl

BLOCK_K = 64  # removed weights of one output feature read per iteration


@triton.jit
def _correction_kernel(y_ptr, x_ptr, slots_ptr, crow_ptr, seg_ptr, cols_ptr, vals_ptr,
                       n_out, pool, stride_y, stride_x, BLOCK_K: tl.constexpr):
    t = tl.program_id(0)  # row of the step
    r = tl.program_id(1)  # output feature
    slot = tl.load(slots_ptr + t)
    if slot < 0:
        return
    row_start = tl.load(crow_ptr + slot * (n_out + 1) + r)
    row_end = tl.load(crow_ptr + slot * (n_out + 1) + r + 1)
    base = tl.load(seg_ptr + slot) + slot.to(tl.int64) * pool  # this layer's segment of the slot's pool
    acc = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for k in range(row_start, row_end, BLOCK_K):
        offs = k + tl.arange(0, BLOCK_K)  # (BLOCK_K,) removed weights of feature r
        held = offs < row_end
        col = tl.load(cols_ptr + base + offs, mask=held, other=0)
        val = tl.load(vals_ptr + base + offs, mask=held, other=0.0)
        acc += val * tl.load(x_ptr + t * stride_x + col, mask=held, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + t * stride_y + r)
    tl.store(y_ptr + t * stride_y + r, (y.to(tl.float32) - tl.sum(acc, axis=0)).to(y.dtype))


def triton_correction(y, x, slots, crow, seg, cols, vals, layer) -> None:
    n_rows, n_out = y.shape
    if n_rows == 0:
        return
    _correction_kernel[(n_rows, n_out)](y, x, slots, crow, seg, cols, vals, n_out, cols.shape[1],
                                        y.stride(0), x.stride(0), BLOCK_K=BLOCK_K)
