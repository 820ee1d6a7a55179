"""Masks made without training: the paper's random and L1 (magnitude) baselines, and test fixtures.

Both remove exactly round(ratio * size) entries of every target matrix, the same count MFT removes, so the three
methods compare at equal sparsity.
"""

import zlib
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from mask_store.checkpoint import tensor_locations, tensor_shapes
from mask_store.identity import base_id
from mask_store.mask import Mask, TensorMask

from .targets import TargetSpec, select_targets


def removed_count(size: int, ratio: float) -> int:
    return int(round(ratio * size))


def random_mask(shapes: dict[str, tuple[int, ...]], ratio: float, seed: int) -> dict[str, TensorMask]:
    """Uniformly random positions per matrix; each tensor's draw depends only on (seed, name)."""
    out = {}
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        removed = np.sort(rng.choice(size, removed_count(size, ratio), replace=False)).astype(np.int64)
        out[name] = TensorMask(tuple(shape), removed)
    return out


def magnitude_mask(model_dir: str, names: list[str], ratio: float) -> dict[str, TensorMask]:
    """Remove the smallest |w| of each matrix (ties broken by torch.topk, deterministically)."""
    locations = tensor_locations(model_dir)
    out = {}
    for name in names:
        with safe_open(locations[name].file, framework="pt") as f:
            weight = f.get_tensor(name)
        k = removed_count(weight.numel(), ratio)
        smallest = torch.topk(weight.float().abs().flatten(), k, largest=False, sorted=False).indices
        out[name] = TensorMask(tuple(weight.shape), np.sort(smallest.numpy()).astype(np.int64))
    return out


def baseline_mask(model_dir: str | Path, method: str = "random", layers: str = "20-23", modules: str = "all",
                  ratio: float = 0.1, seed: int = 0) -> Mask:
    """A whole random or magnitude mask for a model folder, with its training metadata."""
    spec = TargetSpec.parse(layers, modules)
    shapes = tensor_shapes(model_dir)
    names = select_targets(spec, shapes)
    if method == "random":
        tensors = random_mask({n: shapes[n] for n in names}, ratio, seed)
    elif method == "magnitude":
        tensors = magnitude_mask(str(model_dir), names, ratio)
    else:
        raise ValueError(f"unknown baseline {method!r}")
    training = {"method": method, "mask_ratio": ratio, "seed": seed, **spec.describe(), "model": Path(model_dir).name}
    return Mask(base_id(model_dir), tensors, training)
