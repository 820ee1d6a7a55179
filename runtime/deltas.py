"""The removed weight values a mask needs, as one sparse matrix D_m per linear module on this rank.

A masked layer computes y = x (W * M)^T = x W^T - x D^T, where D holds exactly the weights the mask removes. D is
gathered from the checkpoint files, not from the live module: vLLM's CPU backend repacks live weights for oneDNN
and drops the originals (their shape reads [0]). Tensors are read through numpy memmaps at the byte offsets the
safetensors header gives, so a load touches only the pages holding removed weights.

D is kept in fp32 as CSR (int32 indices): its product with a handful of rows is what the hot path computes.
"""

import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mask_store.checkpoint import TensorLocation, tensor_locations
from mask_store.mask import Mask

from .layout import Placement

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


class CheckpointReader:
    """Read-only, zero-copy access to a model folder's tensors by Hugging Face name."""

    def __init__(self, model_dir: str | Path):
        self.locations: dict[str, TensorLocation] = tensor_locations(model_dir)

    def flat(self, name: str) -> np.ndarray:
        loc = self.locations[name]
        dtype = _NUMPY_DTYPES.get(loc.dtype)
        if dtype is None:
            raise ValueError(f"{name}: unsupported weight dtype {loc.dtype}")
        n = (loc.end - loc.begin) // np.dtype(dtype).itemsize
        return np.memmap(loc.file, dtype=dtype, mode="r", offset=loc.begin, shape=(n,))

    def gather(self, name: str, positions: np.ndarray) -> torch.Tensor:
        """Values at flat `positions`, as fp32."""
        values = np.asarray(self.flat(name)[positions])
        if self.locations[name].dtype == "BF16":
            return torch.from_numpy(values.astype(np.int16)).view(torch.bfloat16).float()
        return torch.from_numpy(values.astype(np.float32))


def build_deltas(
    mask: Mask,
    reader: CheckpointReader,
    place: Callable[[str, tuple[int, ...]], Placement],
    module_shapes: dict[str, tuple[int, int]],
) -> dict[str, torch.Tensor]:
    """One CSR matrix (out_local, in_local) per module the mask touches on this rank."""
    parts: dict[str, list[tuple[np.ndarray, np.ndarray, torch.Tensor]]] = defaultdict(list)
    for name, tensor in mask.tensors.items():
        placement = place(name, tensor.shape)
        held, rows, cols = placement.select(tensor.removed, tensor.shape)
        if len(held):
            parts[placement.module].append((rows, cols, reader.gather(name, held)))
    return {module: _csr(pieces, module_shapes[module]) for module, pieces in parts.items()}


def _csr(pieces: list[tuple[np.ndarray, np.ndarray, torch.Tensor]], shape: tuple[int, int]) -> torch.Tensor:
    # Each piece is row-major sorted and q/k/v (or gate/up) pieces fill disjoint row bands, so ordering the pieces
    # by their first row sorts the whole; lexsort only if a layout ever breaks that.
    pieces = sorted(pieces, key=lambda p: int(p[0][0]))
    rows = np.concatenate([p[0] for p in pieces])
    cols = np.concatenate([p[1] for p in pieces])
    values = torch.cat([p[2] for p in pieces])
    if len(pieces) > 1 and not (np.all(np.diff(rows) >= 0)):
        order = np.lexsort((cols, rows))
        rows, cols, values = rows[order], cols[order], values[torch.from_numpy(order)]
    crow = np.zeros(shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=crow[1:])
    return torch.sparse_csr_tensor(
        torch.from_numpy(crow), torch.from_numpy(cols.astype(np.int32)), values, size=shape, check_invariants=False
    )


def csr_nbytes(matrix: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in (matrix.crow_indices(), matrix.col_indices(), matrix.values()))
