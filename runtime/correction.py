"""The masked-row correction as one registered custom op: `y[t] -= x[t] @ D_{slot[t]}^T` for every row t whose slot
is not -1, in place, where D_s holds the weights mask slot s removes from this layer.

Why an op: torch.compile treats it as opaque (it is traced once, by its fake implementation, and never inlined),
and it takes only tensors that live for the whole run (the step's token->slot buffer and the slot table's pools),
so a compiled graph or a captured CUDA graph replays it correctly under any later mapping. Same idea as vLLM's
punica ops (`vllm/lora/ops/`): a pure-torch reference beside each fast implementation, checked against each other.

It is defined on a `torch.library.Library` with one kernel per dispatch key, as vLLM's `direct_register_custom_op`
(vllm/utils/torch_utils.py) defines vLLM's own ops, not with `torch.library.custom_op`: that one's Python
dispatching cost ~0.24 ms per call on this CPU against 7 µs for the kernel's own bookkeeping, and a step calls the
op once per masked linear layer (bench/op_dispatch.py).

Arguments (S slots, P pool entries per slot, T rows, N >= T buffer length):
    y      (T, out)     the layer's base output on this rank, corrected in place
    x      (T, in)      the layer's input
    slots  (N,) int32   slot of each row (-1: base); only the first T are read
    crow   (S, out+1)   int32: this layer's rows of slot s are pool entries seg[s] + crow[s, r] .. seg[s] + crow[s, r+1]
    seg    (S,) int64   where this layer's segment starts in each slot's pool
    cols   (S, P) int32 column (input feature) of each removed weight
    vals   (S, P) fp32  its value
    layer  int          a process-unique layer id whose prebuilt CSR views the CPU kernel uses (-1: build them)
"""

import itertools
import warnings

import numpy as np
import torch

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

_layer_ids = itertools.count()
_VIEWS: dict[int, list[torch.Tensor | None]] = {}  # layer id -> per slot, a CSR view into the pools (or None)


def new_layer_id(num_slots: int) -> int:
    """A layer id for the CPU kernel's cache; ids are never reused, so two slot tables never share views."""
    layer = next(_layer_ids)
    _VIEWS[layer] = [None] * num_slots
    return layer


def set_view(layer: int, slot: int, view: torch.Tensor | None) -> None:
    _VIEWS[layer][slot] = view


def csr_view(crow: torch.Tensor, seg: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, slot: int,
             shape: tuple[int, int]) -> torch.Tensor:
    """D_slot of one layer as a CSR tensor sharing the pools' memory (no copy)."""
    start, nnz = int(seg[slot]), int(crow[slot, -1])
    return torch.sparse_csr_tensor(crow[slot], cols[slot, start:start + nnz], vals[slot, start:start + nnz],
                                   size=shape, check_invariants=False)


def masked_correction(y: torch.Tensor, x: torch.Tensor, slots: torch.Tensor, crow: torch.Tensor, seg: torch.Tensor,
                      cols: torch.Tensor, vals: torch.Tensor, layer: int) -> None:
    """Devices without a kernel of their own: the reference implementation."""
    reference_correction(y, x, slots, crow, seg, cols, vals)


def _fake(y, x, slots, crow, seg, cols, vals, layer) -> None:
    return None


_LIB = torch.library.Library("maskserve", "FRAGMENT")  # lives as long as this module: the op with it
_LIB.define("masked_correction" + torch.library.infer_schema(masked_correction, mutates_args=("y",)))
torch.library.register_fake("maskserve::masked_correction", _fake, lib=_LIB)


def register_kernel(dispatch_key: str, kernel) -> None:
    """Make `kernel` the op's implementation for one dispatch key ("CPU", "CUDA", ...)."""
    _LIB.impl("masked_correction", kernel, dispatch_key)


def reference_correction(y, x, slots, crow, seg, cols, vals) -> None:
    """Pure torch, dense D per slot: slow and obviously right; the oracle for every other implementation."""
    n_rows, n_out = y.shape
    row_slots = slots[:n_rows].long()  # (T,)
    xf = x.float()  # (T, in)
    for s in range(crow.shape[0]):
        nnz = int(crow[s, -1])
        start = int(seg[s])
        out_rows = torch.repeat_interleave(torch.arange(n_out, device=y.device), torch.diff(crow[s].long()))  # (nnz,)
        dense = torch.zeros(n_out, x.shape[1], device=y.device)  # (out, in) D_s
        dense[out_rows, cols[s, start:start + nnz].long()] = vals[s, start:start + nnz].float()
        correction = xf @ dense.T  # (T, out)
        y.sub_((correction * (row_slots == s)[:, None]).to(y.dtype))


def _cpu(y, x, slots, crow, seg, cols, vals, layer) -> None:
    """CPU: group the masked rows by slot and run MKL's sparse product once per slot present in the step.

    Branching on the step's data is fine here: the op is opaque to torch.compile and CPUs capture no graphs.
    """
    if (cols.dtype, vals.dtype) != (torch.int32, torch.float32):  # not MKL's layout: no prebuilt views to walk
        return reference_correction(y, x, slots, crow, seg, cols, vals)
    grouping = _grouping(slots[: y.shape[0]].numpy())
    if grouping is None:
        return
    rows, by_slot = grouping
    shape = (y.shape[1], x.shape[1])
    views = _VIEWS[layer] if layer >= 0 else [
        csr_view(crow, seg, cols, vals, s, shape) if int(crow[s, -1]) else None for s in range(crow.shape[0])
    ]
    groups = [(views[s], a, n) for s, a, n in by_slot if views[s] is not None]  # slots that leave this layer alone
    if not groups:
        return
    # (R, out) = x_r D_s^T is computed as D_s @ x_r^T: MKL takes the dense side contiguous (a transposed view costs a
    # slower path)
    xm = x.index_select(0, rows).float()  # (M, in), masked rows grouped by slot
    if len(groups) == 1 and groups[0][2] == len(rows):
        d, _, _ = groups[0]
        correction = (d @ xm.t().contiguous()).t()  # (M, out)
    else:
        correction = torch.zeros(len(rows), y.shape[1])  # (M, out) fp32
        for d, a, n in groups:
            correction[a:a + n] = (d @ xm[a:a + n].t().contiguous()).t()
    if y.dtype == torch.float32:
        y.index_add_(0, rows, correction, alpha=-1)
    else:  # subtract in fp32, round once
        y.index_copy_(0, rows, (y.index_select(0, rows).float() - correction).to(y.dtype))


_LAST_STEP: list = [None, None]  # [the row -> slot bytes of the last call, its grouping]


def _grouping(row_slots: np.ndarray) -> tuple[torch.Tensor, list[tuple[int, int, int]]] | None:
    """(masked rows ordered by slot, [(slot, start, count)]) for one step's mapping, None when no row is masked.

    Every masked layer of a step gets the same mapping, so the grouping is kept for the next call and reused when
    the mapping's bytes are equal (a comparison, never a stale answer: the key is the content, not the buffer)."""
    key = row_slots.tobytes()
    if _LAST_STEP[0] == key:
        return _LAST_STEP[1]
    masked = np.flatnonzero(row_slots >= 0)
    grouping = None
    if len(masked):
        order = masked[np.argsort(row_slots[masked], kind="stable")]  # (M,) masked rows grouped by slot
        present, starts, counts = np.unique(row_slots[order], return_index=True, return_counts=True)
        grouping = (torch.from_numpy(order), list(zip(present.tolist(), starts.tolist(), counts.tolist())))
    _LAST_STEP[:] = [key, grouping]
    return grouping


def _register_kernels() -> None:
    """CPU: MKL's sparse product. CUDA: the Triton kernel where triton is installed (every CUDA build of vLLM ships
    it), else the reference. Any other device: the reference (CompositeExplicitAutograd serves every backend that
    has no kernel of its own)."""
    import importlib.util

    register_kernel("CompositeExplicitAutograd", masked_correction)
    register_kernel("CPU", _cpu)
    if torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
        from .correction_triton import triton_correction

        register_kernel("CUDA", triton_correction)


_register_kernels()
