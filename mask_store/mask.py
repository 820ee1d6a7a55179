"""What a mask is, in memory: per weight tensor, the sorted flat positions of the weights it removes.

Positions (not a dense bool mask) are what both applying and storing a mask need: the runtime gathers the removed
values by position, and the codec codes gaps between positions. These types are shared by the trainer, the
runtime and the store; they carry no torch.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class TensorMask:
    """The removed positions of one weight tensor, flattened row-major."""

    shape: tuple[int, ...]
    removed: np.ndarray  # (count,) int64, sorted, unique, each in [0, size)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def count(self) -> int:
        return len(self.removed)

    @property
    def ratio(self) -> float:
        return self.count / self.size if self.size else 0.0

    @classmethod
    def from_keep(cls, keep: np.ndarray) -> "TensorMask":
        """From a dense bool array where True keeps the weight."""
        return cls(tuple(keep.shape), np.flatnonzero(~keep.ravel()).astype(np.int64))

    def keep(self) -> np.ndarray:
        """The dense bool mask (True = kept), shaped like the tensor."""
        keep = np.ones(self.size, dtype=bool)
        keep[self.removed] = False
        return keep.reshape(self.shape)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, TensorMask)
            and self.shape == other.shape
            and np.array_equal(self.removed, other.removed)
        )


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True, eq=False)
class Mask:
    """A task: which weights of base `base_id` to remove, and how that was decided (`training`)."""

    base_id: str
    tensors: Mapping[str, TensorMask]
    training: Mapping[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=utc_now)

    @property
    def removed_count(self) -> int:
        return sum(t.count for t in self.tensors.values())

    @property
    def masked_count(self) -> int:
        return sum(t.size for t in self.tensors.values())

    def same_removals(self, other: "Mask") -> bool:
        return self.base_id == other.base_id and dict(self.tensors) == dict(other.tensors)
