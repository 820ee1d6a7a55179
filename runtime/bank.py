"""The masks a model holds in memory: decoded, turned into per-layer deltas, installed, evicted.

One bank serves one base model. Loading a mask checks its base id (a mask never applies to a base it was not
trained on), decodes it, gathers its removed weight values into one sparse D per layer and installs them in the
`MaskedLinear` layers. Masks are evicted least-recently-used first when the bank would exceed its byte budget;
pinned masks and masks in use by a running request are never evicted.
"""

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from mask_store.errors import BankFull, BaseMismatch
from mask_store.format import read_mask_file
from mask_store.mask import Mask

from .deltas import csr_nbytes
from .masked_linear import MaskedLinear


@dataclass
class LoadedMask:
    digest: str
    nbytes: int
    load_ms: float
    pinned: bool
    modules: tuple[str, ...]


class MaskBank:
    def __init__(
        self,
        base_id: str,
        layers: dict[str, MaskedLinear],
        build: Callable[[Mask], dict[str, torch.Tensor]],
        budget_bytes: int,
    ):
        self.base_id = base_id
        self.layers = layers
        self.build = build  # mask -> {module name: D}, see deltas.build_deltas
        self.budget_bytes = budget_bytes
        self.loaded: OrderedDict[str, LoadedMask] = OrderedDict()  # least recently used first

    def __contains__(self, digest: str) -> bool:
        return digest in self.loaded

    def __len__(self) -> int:
        return len(self.loaded)

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.loaded.values())

    def load(
        self, path: str | Path, pin: bool = False, in_use: Iterable[str] = (), over_budget: bool = False
    ) -> LoadedMask:
        """Load the mask file at `path` (a no-op if its digest is loaded; `pin` can only be added).

        `over_budget`: when no room can be made, load anyway instead of raising BankFull. For a request the engine
        has already scheduled: refusing there could only take the engine down; the next load makes room again.
        """
        started = time.perf_counter()
        mask_file = read_mask_file(path)
        digest = mask_file.digest
        if digest in self.loaded:
            self.loaded[digest].pinned |= pin
            self.touch([digest])
            return self.loaded[digest]
        if mask_file.header.base_id != self.base_id:
            raise BaseMismatch(f"mask {digest[:12]}", mask_file.header.base_id, self.base_id)
        deltas = self.build(mask_file.decode())
        nbytes = sum(csr_nbytes(d) for d in deltas.values())
        self._make_room(nbytes, set(in_use), over_budget)
        for module, delta in deltas.items():
            self.layers[module].deltas[digest] = delta
        entry = LoadedMask(digest, nbytes, 1e3 * (time.perf_counter() - started), pin, tuple(deltas))
        self.loaded[digest] = entry
        return entry

    def unload(self, digest: str) -> bool:
        entry = self.loaded.pop(digest, None)
        if entry is None:
            return False
        for module in entry.modules:
            self.layers[module].deltas.pop(digest, None)
        return True

    def touch(self, digests: Iterable[str]) -> None:
        for digest in digests:
            if digest in self.loaded:
                self.loaded.move_to_end(digest)

    def _make_room(self, nbytes: int, in_use: set[str], over_budget: bool) -> None:
        if nbytes > self.budget_bytes and not over_budget:
            raise BankFull(f"mask needs {nbytes:,} bytes, more than the mask memory budget {self.budget_bytes:,}")
        for digest in list(self.loaded):
            if self.nbytes + nbytes <= self.budget_bytes:
                return
            entry = self.loaded[digest]
            if not entry.pinned and digest not in in_use:
                self.unload(digest)
        if self.nbytes + nbytes > self.budget_bytes and not over_budget:
            raise BankFull(
                f"mask needs {nbytes:,} bytes; {self.nbytes:,} of {self.budget_bytes:,} are pinned or in use"
            )

    def status(self) -> dict:
        return {
            "base_id": self.base_id,
            "budget_bytes": self.budget_bytes,
            "used_bytes": self.nbytes,
            "masks": [
                {"digest": m.digest, "bytes": m.nbytes, "pinned": m.pinned, "load_ms": round(m.load_ms, 2)}
                for m in self.loaded.values()
            ],
        }
