"""Masked linear layers: the base output for the whole batch, then the masked rows corrected by one custom op.

    y = x W^T            every row, the frozen base layer as it is
    y_r -= x_r D_s^T     rows whose slot s is not -1 (correction.py), D_s = the weights slot s removes

Two ways in, both a few lines and free of per-step Python state:
- `MaskedLinear` swaps a plain `nn.Linear` (the transformers reference path), as gpt-fast and torchtune adapt models.
- `MaskedApply` wraps a vLLM layer's `quant_method`, the way vLLM's LoRA layers do: the correction runs inside
  `apply`, so a row-parallel layer corrects its shard's partial sum before vLLM's all-reduce, a column-parallel
  layer its own output rows, and the layer module, its weights and its CPU repacking stay vLLM's own.
"""

import torch
from torch import nn

from .slots import SlotTable


class MaskedLinear(nn.Module):
    def __init__(self, base: nn.Linear, table: SlotTable, layer: int):
        super().__init__()
        self.base = base
        self.table = table
        self.layer = layer  # index into the table's per-layer buffers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (..., out)
        self.table.correct(y.view(-1, y.shape[-1]), x.reshape(-1, x.shape[-1]), self.layer)  # rows (T, out)
        return y


class MaskedApply:
    """Stands in for a vLLM linear layer's quant_method; everything but `apply` is the wrapped method's."""

    def __init__(self, base, table: SlotTable, layer: int):
        self.base = base
        self.table = table
        self.layer = layer

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        y = self.base.apply(layer, x, bias)  # (T, out_local): a partial sum on row-parallel ranks
        self.table.correct(y.view(-1, y.shape[-1]), x.reshape(-1, x.shape[-1]), self.layer)
        return y

    def __getattr__(self, name: str):
        return getattr(self.base, name)


def swap_linears(model: nn.Module, names: list[str], table_for) -> dict[str, MaskedLinear]:
    """Replace the named nn.Linear submodules by MaskedLinear in place; `table_for(shapes)` builds the SlotTable."""
    modules = [model.get_submodule(n) for n in names]
    table = table_for([(m.out_features, m.in_features) for m in modules])
    wrapped = {}
    for layer, (name, module) in enumerate(zip(names, modules)):
        parent_name, _, child = name.rpartition(".")
        wrapped[name] = MaskedLinear(module, table, layer)
        setattr(model.get_submodule(parent_name), child, wrapped[name])
    return wrapped
