"""Base-model identity: one BLAKE3 Merkle root over the model's tensors, whatever the sharding.

Each tensor is a leaf hashed from (name, dtype, shape, BLAKE3 of its raw bytes); the root hashes the leaves in name
order. So one file or many shards, any file order and any safetensors metadata give the same id, and one changed
weight gives another. Tensor bytes are read straight from the safetensors files through mmap (see checkpoint.py),
so no framework is loaded.

Hashing a model is the slow part (about 1 GB/s), so per-file tensor hashes are cached in SQLite keyed by
(path, size, mtime); the root is recomputed from the cache in microseconds. The cache's layout version is SQLite's
`user_version` (CACHE_VERSION), read by the rule of mask_store/versions.py.
"""

import json
import mmap
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import blake3

from . import versions
from .checkpoint import read_header, weight_files
from .errors import MaskError, ModelError
from .paths import cache_dir


CACHE_VERSION = 1
# version v -> the step that turns a cache of version v into v + 1.
_UPGRADES: dict = {}
_SCHEMA = "CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, records TEXT)"


@dataclass(frozen=True)
class TensorRecord:
    name: str
    dtype: str
    shape: tuple[int, ...]
    digest: str  # BLAKE3 of the raw bytes


def _hash_file(path: Path) -> list[TensorRecord]:
    records = []
    header = read_header(path)  # first: a truncated or empty file is a ModelError, not an mmap error
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            for name, loc in header.items():
                h = blake3.blake3(max_threads=blake3.blake3.AUTO)
                h.update(view[loc.begin : loc.end])
                records.append(TensorRecord(name, loc.dtype, loc.shape, h.hexdigest()))
        finally:
            view.release()
    return records


class _Cache:
    """(path, size, mtime_ns) -> tensor records, shared by every process on the machine."""

    def __init__(self, path: Path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
            versions.open_sqlite(self.db, _SCHEMA, CACHE_VERSION, _UPGRADES, str(path))
        except (OSError, sqlite3.Error) as e:
            raise MaskError(
                f"cannot open the base-id cache {path} ({e}); point MASKSERVE_CACHE at a writable folder"
            ) from e

    def get(self, path: Path, st: os.stat_result) -> list[TensorRecord] | None:
        row = self.db.execute(
            "SELECT records FROM files WHERE path=? AND size=? AND mtime_ns=?", (str(path), st.st_size, st.st_mtime_ns)
        ).fetchone()
        if row is None:
            return None
        return [TensorRecord(n, d, tuple(s), h) for n, d, s, h in json.loads(row[0])]

    def put(self, path: Path, st: os.stat_result, records: list[TensorRecord]) -> None:
        blob = json.dumps([[r.name, r.dtype, list(r.shape), r.digest] for r in records])
        self.db.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", (str(path), st.st_size, st.st_mtime_ns, blob)
        )


def tensor_records(model_dir: str | os.PathLike, use_cache: bool = True) -> list[TensorRecord]:
    """Every tensor of the model, sorted by name."""
    cache = _Cache(cache_dir() / "base-ids.sqlite") if use_cache else None
    records: dict[str, TensorRecord] = {}
    for path in weight_files(model_dir):
        path = path.resolve()
        st = path.stat()
        found = cache.get(path, st) if cache else None
        if found is None:
            found = _hash_file(path)
            if cache:
                cache.put(path, st, found)
        for r in found:
            if r.name in records:
                raise ModelError(f"{model_dir}: tensor {r.name} appears in more than one weight file")
            records[r.name] = r
    return [records[n] for n in sorted(records)]


def merkle_root(records: list[TensorRecord]) -> str:
    root = blake3.blake3()
    for r in sorted(records, key=lambda r: r.name):
        leaf = f"{r.name}\0{r.dtype}\0{','.join(map(str, r.shape))}\0{r.digest}"
        root.update(blake3.blake3(leaf.encode()).digest())
    return root.hexdigest()


def base_id(model_dir: str | os.PathLike, use_cache: bool = True) -> str:
    """The base id of a Hugging Face-format model folder (64 hex digits)."""
    return merkle_root(tensor_records(model_dir, use_cache))
