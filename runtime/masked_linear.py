"""Per-request masks inside one batch: every row gets y = x W^T, then the rows of mask m get y_r -= x_r D_m^T.

`MaskedLinear` wraps a frozen linear layer (a plain `nn.Linear`, or vLLM's fused parallel layers, which return
`(output, bias)`). The rows each mask owns in the current forward pass live in one shared `BatchMasks`, set once per
step from an index tensor (one mask slot per token, -1 for the base model), so the layers themselves hold no
per-request state, and a layer that no mask of the batch touches costs one check.

D_m (see deltas.py) is sparse, so the correction costs about one multiply-add per removed weight per masked row.
Non-goal: tensor parallelism above 1, where row-parallel layers would need their corrections all-reduced too.
"""

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass
class BatchMasks:
    """Which rows of the current forward pass belong to which mask; rows of the base model appear nowhere.

    `rows` lists every masked row, grouped by mask, so each group is one contiguous slice of it: the layers gather
    the masked rows once and hand each mask a view, not a copy.
    """

    device: torch.device = torch.device("cpu")  # the model's
    rows: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))  # (M,) all masked rows
    groups: list[tuple[str, slice]] = field(default_factory=list)  # (digest, its slice of `rows`)

    def clear(self) -> None:
        self.rows = torch.empty(0, dtype=torch.long, device=self.device)
        self.groups = []

    def set_slots(self, token_slots: np.ndarray, digests: list[str]) -> None:
        """token_slots: (T,) index into `digests` per token, -1 for the base model."""
        order = np.argsort(token_slots, kind="stable")  # (T,) rows grouped by slot, base (-1) first
        sorted_slots = token_slots[order]
        first_masked = int(np.searchsorted(sorted_slots, 0))
        self.rows = torch.from_numpy(order[first_masked:].astype(np.int64)).to(self.device)
        slots, starts, counts = np.unique(sorted_slots[first_masked:], return_index=True, return_counts=True)
        self.groups = [(digests[s], slice(int(a), int(a + n))) for s, a, n in zip(slots, starts, counts)]

    def set_requests(self, request_digests: list[str | None], query_start_loc: np.ndarray) -> None:
        """One digest (or None) per request, whose tokens are rows query_start_loc[i]:query_start_loc[i+1]."""
        distinct = sorted({d for d in request_digests if d is not None})
        slot_of = {d: i for i, d in enumerate(distinct)}
        request_slots = np.array([slot_of.get(d, -1) for d in request_digests], dtype=np.int64)
        self.set_slots(np.repeat(request_slots, np.diff(query_start_loc)), distinct)


class MaskedLinear(nn.Module):
    def __init__(self, base: nn.Module, batch: BatchMasks, returns_tuple: bool = False):
        super().__init__()
        self.base = base
        self.batch = batch
        self.returns_tuple = returns_tuple
        self.deltas: dict[str, torch.Tensor] = {}  # digest -> D, CSR (out, in), fp32, on the batch's device

    def forward(self, x: torch.Tensor):
        out = self.base(x)
        active = [(self.deltas[digest], group) for digest, group in self.batch.groups if digest in self.deltas]
        if not active:  # no mask in this batch touches this layer
            return out
        y = out[0] if self.returns_tuple else out
        x_rows = x.reshape(-1, x.shape[-1])  # (T, in)
        y_rows = y.view(-1, y.shape[-1])  # (T, out)
        rows = self.batch.rows  # (M,) every masked row, grouped by mask
        xm = x_rows.index_select(0, rows).float()  # (M, in)
        correction = torch.zeros(len(rows), y_rows.shape[1], device=y_rows.device)  # (M, out) fp32
        for delta, group in active:
            correction[group] = torch.sparse.mm(delta, xm[group].t()).t()  # (R, out) = x_r D^T
        y_rows.index_copy_(0, rows, (y_rows.index_select(0, rows).float() - correction).to(y_rows.dtype))
        return out


def wrap_linears(model: nn.Module, names: list[str], batch: BatchMasks, returns_tuple: bool) -> dict[str, MaskedLinear]:
    """Replace the named submodules by MaskedLinear wrappers in place; returns them by name."""
    wrapped = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        module = MaskedLinear(getattr(parent, child), batch, returns_tuple)
        setattr(parent, child, module)
        wrapped[name] = module
    return wrapped
