"""A frozen linear layer whose weights are gated by a binary mask learned through trainable scores (MFT).

Contract:
- `ScoredLinear` keeps the wrapped layer's weight (and bias) as the very same frozen tensors and adds one trainable
  `scores` tensor of the weight's shape. Its forward pass is

      M = top-(size - k) of |scores|      (binary, exactly k zeros per matrix, ties broken by lower flat index)
      y = x @ (W * M)^T + b

  and its backward pass is straight-through: the gradient reaching M goes to |scores| unchanged (the sign of
  `scores` follows through `abs`), so dL/dscores = sign(scores) * W * dL/d(W * M).
- k = `removed_count(size, ratio)`, the same count the random and magnitude baselines remove, so every method
  compares at equal sparsity. The count is exact: the threshold is the k-th smallest |score| (`torch.kthvalue`,
  O(size), no full sort), and ties at the threshold are removed in flat-index order until exactly k are gone.
- `swap_in_scored_linears` adapts a loaded model by module swap; `extract_masks` reads the learned removals back
  as `TensorMask`s under the Hugging Face weight names; `materialize_scored_linears` swaps back plain `nn.Linear`s
  holding W * M, the exact model a saved mask describes, for evaluation and generation.

Non-goals: no gradient to the weights, no per-call caching of the mask (scores change every step), no serving path
(the runtime applies saved masks its own way).
"""

import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mask_store.errors import ModelError
from mask_store.mask import TensorMask

from .baselines import removed_count

INITS = ("magnitude", "random")


def keep_mask(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """Bool tensor shaped like `magnitude`, False at exactly the k smallest entries (ties: lower flat index first)."""
    flat = magnitude.detach().flatten()  # (size,)
    keep = torch.ones_like(flat, dtype=torch.bool)  # (size,)
    if k == 0:
        return keep.view_as(magnitude)
    threshold = torch.kthvalue(flat, k).values  # ()
    below = flat < threshold  # (size,) all of these go
    ties = torch.nonzero(flat == threshold).squeeze(1)  # (t,) sorted flat indices at the threshold
    keep[below] = False
    keep[ties[: k - int(below.sum())]] = False
    return keep.view_as(magnitude)


def keep_mask_reference(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """The same rule by a full stable sort: the plain oracle `keep_mask` is tested against."""
    order = torch.sort(magnitude.detach().flatten(), stable=True).indices  # (size,) ascending, ties by index
    keep = torch.ones(magnitude.numel(), dtype=torch.bool)
    keep[order[:k]] = False
    return keep.view_as(magnitude)


class _TopKStraightThrough(torch.autograd.Function):
    """Forward: the binary keep mask of |scores|. Backward: the identity."""

    @staticmethod
    def forward(ctx, magnitude: torch.Tensor, k: int) -> torch.Tensor:
        return keep_mask(magnitude, k).to(magnitude.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class ScoredLinear(nn.Module):
    """`linear` with its weight gated by the top-(size - k) of |scores|; only `scores` trains."""

    def __init__(self, linear: nn.Linear, k: int, scores: torch.Tensor):
        super().__init__()
        self.weight = linear.weight.requires_grad_(False)  # (out, in): the very tensor the model loaded
        self.bias = linear.bias if linear.bias is None else linear.bias.requires_grad_(False)  # (out,)
        self.k = k
        self.scores = nn.Parameter(scores.to(device=self.weight.device, dtype=torch.float32))  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = _TopKStraightThrough.apply(self.scores.abs(), self.k)  # (out, in): 1 keeps, 0 removes
        weight = self.weight * mask.to(self.weight.dtype)  # (out, in)
        return F.linear(x, weight, self.bias)  # (..., out)

    def keep(self) -> torch.Tensor:
        """The current binary mask, True = kept, shaped like the weight."""
        return keep_mask(self.scores.abs(), self.k)

    def extra_repr(self) -> str:
        out_features, in_features = self.weight.shape
        return f"in_features={in_features}, out_features={out_features}, removed={self.k}"


def initial_scores(weight: torch.Tensor, init: str, seed: int, name: str) -> torch.Tensor:
    """Unit-scale scores, so `--lr` means the same step for every matrix and either init.

    magnitude: W / rms(W), so the first mask is the magnitude (L1) mask and the scores carry W's signs.
    random: uniform in [-1, 1) (the shape of the official code's kaiming-uniform init, rescaled), drawn from
    (seed, name) only, so a matrix's start does not depend on which other matrices are masked.
    """
    if init == "magnitude":
        w = weight.detach().float()
        return w / w.pow(2).mean().sqrt().clamp_min(torch.finfo(torch.float32).tiny)
    if init == "random":
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        return torch.from_numpy(rng.uniform(-1.0, 1.0, size=tuple(weight.shape)).astype(np.float32))
    raise ValueError(f"unknown init {init!r}; expected one of {INITS}")


def swap_in_scored_linears(
    model: nn.Module, names: list[str], ratio: float, init: str, seed: int
) -> dict[str, ScoredLinear]:
    """Replace the `nn.Linear`s whose weights are `names` (Hugging Face weight names) by `ScoredLinear`s.

    Freezes every existing parameter first; afterwards the only trainable tensors are the new scores.
    Returns the swapped modules by weight name.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    wanted = {name.removesuffix(".weight"): name for name in names}
    swapped: dict[str, ScoredLinear] = {}

    def swap(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            path = f"{prefix}{child_name}"
            if path in wanted and isinstance(child, nn.Linear):
                name = wanted[path]
                k = removed_count(child.weight.numel(), ratio)
                scored = ScoredLinear(child, k, initial_scores(child.weight, init, seed, name))
                setattr(module, child_name, scored)
                swapped[name] = scored
            else:
                swap(child, f"{path}.")

    swap(model, "")
    missing = sorted(set(names) - set(swapped))
    if missing:
        raise ModelError(f"no nn.Linear module holds {', '.join(missing)}")
    return swapped


def scored_linears(model: nn.Module) -> dict[str, ScoredLinear]:
    """Every ScoredLinear in `model`, by the Hugging Face name of its weight."""
    return {f"{path}.weight": m for path, m in model.named_modules() if isinstance(m, ScoredLinear)}


def extract_masks(model: nn.Module) -> dict[str, TensorMask]:
    """The learned removals: per masked weight, sorted flat int64 positions of the removed entries."""
    out = {}
    for name, module in scored_linears(model).items():
        removed = torch.nonzero(~module.keep().flatten()).squeeze(1)  # (k,) ascending
        out[name] = TensorMask(tuple(module.weight.shape), removed.cpu().numpy().astype(np.int64))
    return out


@torch.no_grad()
def materialize_scored_linears(model: nn.Module) -> dict[str, TensorMask]:
    """Swap every ScoredLinear for a plain `nn.Linear` holding W with the removed positions zeroed.

    The zeroing goes through the extracted `TensorMask`s, exactly as applying the saved mask to the base does, on
    a copy (W itself is untouched). The result has no per-call mask cost; returns the masks applied.
    """
    masks = extract_masks(model)
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        path = name.removesuffix(".weight")
        parent_path, _, child_name = path.rpartition(".")
        scored = modules[path]
        weight = scored.weight.detach().clone()  # (out, in)
        weight.view(-1)[torch.from_numpy(mask.removed).to(weight.device)] = 0
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=scored.bias is not None, device="meta")
        linear.weight = nn.Parameter(weight, requires_grad=False)
        if scored.bias is not None:
            linear.bias = nn.Parameter(scored.bias.detach().clone(), requires_grad=False)
        setattr(modules[parent_path] if parent_path else model, child_name, linear)
    return masks
