"""The other way to apply a mask: when one mask owns the whole batch, zero its weights in place, then restore them.

Same semantics as the per-row correction (y = x (W * M)^T), at no per-step cost: the removed values are saved,
the weights zeroed by index, and written back bit for bit on exit. It needs live, unpacked weights: true for
transformers models and vLLM on GPU, not for vLLM's CPU backend, which repacks weights for oneDNN (there the
per-row correction in masked_linear.py is the only path).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from mask_store.mask import Mask

from .layout import Placement


@contextmanager
@torch.no_grad()
def mask_in_place(
    weights: dict[str, torch.Tensor], mask: Mask, place: Callable[[str, tuple[int, ...]], Placement]
) -> Iterator[None]:
    """weights: module name -> its live (out, in) weight. Inside the block the model is the masked model."""
    saved = []
    try:
        for name, tensor in mask.tensors.items():
            placement = place(name, tensor.shape)
            _, rows, cols = placement.select(tensor.removed, tensor.shape)
            weight = weights[placement.module]
            flat = torch.from_numpy(rows * weight.shape[1] + cols)
            saved.append((weight, flat, weight.view(-1)[flat].clone()))
            weight.view(-1)[flat] = 0
        yield
    finally:
        for weight, flat, values in reversed(saved):
            weight.view(-1)[flat] = values
