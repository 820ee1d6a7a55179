"""A mask's slot contents, prepared before the engine sees them: one safetensors file the workers copy from.

Turning a `.mask` file into what a slot holds (check it, decode its bits, gather the weights it removes from the
checkpoint, sort them into one CSR matrix per layer and tensor-parallel rank) takes tens of milliseconds. In a
worker, that time stops the decode of every running request, and cold masks queue behind each other on the
engine's RPC path. So the API side does it, on a thread, before it asks the workers, and a worker's load only checks
the file's structure and copies it into a slot (bank.py).

    file:  "{rank}/{module}/crow" int32 (out+1,), "/cols" int32 (n,), "/vals" fp32 (n,)   for every rank and module
           metadata: format, digest (the mask), plan (the key of the SlotPlan it was made for)

A SlotPlan is what the workers report at setup: their masked layers (vLLM module names, in slot-table order), each
layer's shape on one rank, the number of ranks and the model's shape. A file made for one plan is never loaded under
another. `SlotFiles` keeps one file per mask in a folder of its own, removed when it is closed or collected, or the
process exits; files of evicted masks stay, up to a byte budget, so a mask evicted and asked for again costs only
the copy.
"""

import hashlib
import json
import os
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from mask_store.errors import BaseMismatch, CorruptMask
from mask_store.format import read_mask_file
from mask_store.mask import Mask

from .deltas import CheckpointReader, build_deltas
from .layout import ModelShape, check_mask_tensors, vllm_placement

FORMAT = "1"
PARTS = ("crow", "cols", "vals")
SLOT_FILE_BUDGET_FACTOR = 2  # slot files kept on disk: twice the bytes the slots hold in memory


@dataclass(frozen=True)
class SlotPlan:
    """The slot table the workers hold: what a slot file must be made for."""

    base_id: str
    names: tuple[str, ...]  # masked vLLM modules, in slot-table order
    shapes: tuple[tuple[int, int], ...]  # (out, in) of each on one rank
    tp_size: int
    model: ModelShape

    @classmethod
    def from_report(cls, report: dict) -> "SlotPlan":
        return cls(report["base_id"], tuple(report["names"]), tuple(tuple(s) for s in report["shapes"]),
                   report["tp_size"], ModelShape(**report["model"]))

    def report(self) -> dict:
        return asdict(self)

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.report(), sort_keys=True).encode()).hexdigest()[:32]

    @property
    def shape_of(self) -> dict[str, tuple[int, int]]:
        return dict(zip(self.names, self.shapes))


def checked_mask(mask_path: str | Path, digest: str, base_id: str, expected: dict[str, tuple[int, ...]]) -> Mask:
    """The mask at `mask_path`, decoded, if it is mask `digest`, of base `base_id`, with tensors of the `expected`
    names and shapes; refused before a bit is decoded otherwise."""
    mask_file = read_mask_file(mask_path)
    what = f"mask {digest[:12]}"
    if mask_file.digest != digest:
        raise CorruptMask(f"{mask_path} holds mask {mask_file.digest[:12]}, not the mask {digest[:12]} it was stored as")
    if mask_file.header.base_id != base_id:
        raise BaseMismatch(what, mask_file.header.base_id, base_id)
    check_mask_tensors(mask_file.header.tensors, expected, what)
    return mask_file.decode()


def prepare(mask_path: str | Path, digest: str, plan: SlotPlan, reader: CheckpointReader) -> bytes:
    """The slot file of the mask at `mask_path`, for every rank of `plan` (checked_mask refuses what cannot apply)."""
    mask = checked_mask(mask_path, digest, plan.base_id, plan.model.hf_shapes())
    tensors = {}
    for rank in range(plan.tp_size):
        deltas = build_deltas(mask, reader, lambda n, _s: vllm_placement(n, plan.model, rank, plan.tp_size),
                              plan.shape_of)
        for module, d in deltas.items():
            for part, t in zip(PARTS, (d.crow_indices(), d.col_indices(), d.values())):
                tensors[f"{rank}/{module}/{part}"] = t.contiguous()
    return save(tensors, metadata={"format": FORMAT, "digest": digest, "plan": plan.key})


def read_slot_file(path: str | Path, digest: str, plan: SlotPlan, rank: int) -> dict[str, torch.Tensor]:
    """This rank's CSR matrices of a slot file, by module, each checked against the plan's shapes: whatever the file
    holds, what reaches the slot table cannot index outside a layer or its pool."""
    shape_of = plan.shape_of
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        if (meta.get("format"), meta.get("digest"), meta.get("plan")) != (FORMAT, digest, plan.key):
            raise CorruptMask(f"slot file {path} was not made for mask {digest[:12]} on this engine")
        prefix, keys = f"{rank}/", set(f.keys())
        modules = {k[len(prefix):].rsplit("/", 1)[0] for k in keys if k.startswith(prefix)}
        out = {}
        for module in sorted(modules):
            if module not in shape_of:
                raise CorruptMask(f"slot file {path} names {module!r}, which is not a masked layer")
            if any(f"{prefix}{module}/{part}" not in keys for part in PARTS):
                raise CorruptMask(f"slot file {path} lacks part of {module}'s matrix")
            crow, cols, vals = (f.get_tensor(f"{prefix}{module}/{part}") for part in PARTS)
            _check_csr(crow, cols, vals, shape_of[module], f"slot file {path}, {module}")
            out[module] = torch.sparse_csr_tensor(crow, cols, vals, size=shape_of[module], check_invariants=False)
    return out


def _check_csr(crow: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int], what: str) -> None:
    rows, n_in = shape
    ok = (crow.dtype == cols.dtype == torch.int32 and vals.dtype == torch.float32
          and crow.shape == (rows + 1,) and cols.dim() == vals.dim() == 1 and len(cols) == len(vals))
    if ok:
        offsets, columns = crow.numpy(), cols.numpy()
        ok = (offsets[0] == 0 and offsets[-1] == len(columns) and bool(np.all(np.diff(offsets) >= 0))
              and (not len(columns) or (int(columns.min()) >= 0 and int(columns.max()) < n_in)))
    if not ok:
        raise CorruptMask(f"{what}: not a CSR matrix of shape {list(shape)}")


class SlotFiles:
    """The API side's slot files, one per mask digest, in a folder of their own (removed by `close`). Thread-safe:
    masks are prepared on worker threads, several at a time."""

    def __init__(self, plan: SlotPlan, model_dir: str | Path, budget_bytes: int, parent: str | Path | None = None):
        self.plan = plan
        self.reader = CheckpointReader(model_dir)
        self.budget_bytes = budget_bytes
        self.folder = Path(tempfile.mkdtemp(prefix="maskserve-slots-", dir=parent))
        self._remove = weakref.finalize(self, shutil.rmtree, self.folder, True)  # at close, collection or exit
        self._sizes: OrderedDict[str, int] = OrderedDict()  # digest -> file bytes, least recently used first
        self._in_use: dict[str, int] = {}  # digest -> callers between `acquire` and `release`
        self._lock = threading.Lock()
        self._preparing: dict[str, threading.Lock] = {}

    def path(self, digest: str) -> Path:
        return self.folder / f"{digest}.safetensors"

    def acquire_ready(self, digest: str) -> Path | None:
        """The mask's slot file if it is already prepared (kept until `release`), else None. Never blocks."""
        with self._lock:
            if digest not in self._sizes:  # listed once its file is complete
                return None
            self._in_use[digest] = self._in_use.get(digest, 0) + 1
            self._sizes.move_to_end(digest)
        return self.path(digest)

    def acquire(self, mask_path: str | Path, digest: str) -> Path:
        """The mask's slot file, prepared unless it exists; kept on disk until `release`. Blocking: run on a thread."""
        with self._lock:
            self._in_use[digest] = self._in_use.get(digest, 0) + 1
            gate = self._preparing.setdefault(digest, threading.Lock())
        try:
            with gate:  # one preparation per digest; others wait for it instead of repeating it
                with self._lock:
                    ready = digest in self._sizes
                    if ready:
                        self._sizes.move_to_end(digest)
                if not ready:
                    data = prepare(mask_path, digest, self.plan, self.reader)
                    # rename, without fsync: a reader never sees a prefix, and nothing outlives this process
                    tmp = self.path(digest).with_suffix(".tmp")
                    try:
                        tmp.write_bytes(data)
                        os.replace(tmp, self.path(digest))
                    except BaseException:
                        tmp.unlink(missing_ok=True)
                        raise
                    with self._lock:
                        self._sizes[digest] = len(data)
                        self._trim()
        except BaseException:
            self.release(digest)
            raise
        return self.path(digest)

    def release(self, digest: str) -> None:
        with self._lock:
            self._in_use[digest] -= 1
            if not self._in_use[digest]:
                del self._in_use[digest]
                self._preparing.pop(digest, None)
            self._trim()

    def _trim(self) -> None:
        """Under the lock: drop least recently used files not in use until the folder fits the budget."""
        total = sum(self._sizes.values())
        for digest in list(self._sizes):
            if total <= self.budget_bytes:
                return
            if digest not in self._in_use:
                total -= self._sizes.pop(digest)
                self.path(digest).unlink(missing_ok=True)

    def close(self) -> None:
        self._remove()
