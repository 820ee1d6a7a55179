"""The masks a model holds: the one owner of which mask sits in which slot of the SlotTable.

Loading a mask reads its slot file (slot_files.py: prepared by the API side, which checked the mask's base id and
tensors, decoded it and gathered the weights it removes into one sparse D per layer), checks that the file's
matrices fit this rank's layers, and writes them into a free slot, or into the least recently used slot whose mask
is neither pinned nor protected (named by a request the engine holds, or one the API side has in flight). Nothing
here runs inside a forward pass.
"""

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from mask_store.errors import MaskError

from .slots import SlotTable


@dataclass
class LoadedMask:
    digest: str
    slot: int
    entries: int  # removed weights held in the slot
    nbytes: int  # bytes of the slot's pool they fill
    load_ms: float
    pinned: bool


class BankFull(MaskError):
    """Every slot holds a pinned mask or one that requests use; it clears as they finish, so a retry can help (HTTP
    sends Retry-After with it)."""

    status = 503


class MaskInUse(MaskError):
    """An unload of a mask that requests are using: their rows would have no slot to read."""

    status = 409


class MaskBank:
    def __init__(self, base_id: str, table: SlotTable, layer_index: dict[str, int],
                 read: Callable[[str, str], dict[str, torch.Tensor]]):
        self.base_id = base_id
        self.table = table
        self.layer_index = layer_index  # module name -> its layer in the table
        self.read = read  # (slot file, digest) -> {module name: CSR D}, checked: slot_files.read_slot_file
        self.loaded: OrderedDict[str, LoadedMask] = OrderedDict()  # least recently used first

    def __contains__(self, digest: str) -> bool:
        return digest in self.loaded

    def __len__(self) -> int:
        return len(self.loaded)

    def slot_of(self, digest: str) -> int:
        return self.loaded[digest].slot

    def load(self, path: str | Path, digest: str, pin: bool = False, protect: Iterable[str] = ()) -> LoadedMask:
        """Load mask `digest` from its slot file at `path` (a no-op if it is resident; `pin` can only be added)."""
        if digest in self.loaded:  # resident: the file is not read again
            self.loaded[digest].pinned |= pin
            self.touch([digest])
            return self.loaded[digest]
        started = time.perf_counter()
        deltas = {self.layer_index[m]: d for m, d in self.read(str(path), digest).items()}
        self.table.check_fits(deltas, f"mask {digest[:12]}")  # before anything is evicted for it
        slot = self._free_slot(set(protect))
        entries = self.table.write(slot, deltas, f"mask {digest[:12]}")
        entry = LoadedMask(digest, slot, entries, entries * self.table.entry_bytes,
                           1e3 * (time.perf_counter() - started), pin)
        self.loaded[digest] = entry
        return entry

    def unload(self, digest: str, protect: Iterable[str] = ()) -> bool:
        """Free the mask's slot; refused while a request in `protect` (running, or in flight) uses it."""
        if digest not in self.loaded:
            return False
        if digest in set(protect):
            raise MaskInUse(f"mask {digest[:12]} is in use by running requests; unload it when they finish")
        self.table.clear(self.loaded.pop(digest).slot)
        return True

    def touch(self, digests: Iterable[str]) -> None:
        for digest in digests:
            if digest in self.loaded:
                self.loaded.move_to_end(digest)

    def _free_slot(self, protect: set[str]) -> int:
        used = {m.slot for m in self.loaded.values()}
        free = [s for s in range(self.table.num_slots) if s not in used]
        if free:
            return free[0]
        for digest, entry in self.loaded.items():  # least recently used first
            if not entry.pinned and digest not in protect:
                self.unload(digest)
                return entry.slot
        raise BankFull(f"all {self.table.num_slots} mask slots hold pinned masks or masks in use; retry later")

    def status(self) -> dict:
        return {
            "base_id": self.base_id,
            "slots": self.table.num_slots,
            "slot_bytes": self.table.slot_bytes,
            "used_bytes": sum(m.nbytes for m in self.loaded.values()),
            "masks": [
                {"digest": m.digest, "slot": m.slot, "bytes": m.nbytes, "pinned": m.pinned,
                 "load_ms": round(m.load_ms, 2)}
                for m in self.loaded.values()
            ],
        }
