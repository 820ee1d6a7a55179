"""Local-directory backend: blobs as files, versions and tags in one SQLite database.

    STORE/index.sqlite             versions (tombstones included) and tags, WAL mode
    STORE/blobs/ab/abcdef...mask   one file per digest, written by temp file + fsync + rename

Version numbers are allocated inside `BEGIN IMMEDIATE`, which holds SQLite's write lock, so concurrent pushes from
many processes serialize there and each gets its own number. The blob is checked (and re-written if garbage
collection took it) inside the same transaction, and garbage collection deletes blobs under that lock too, so the
two can never interleave badly. Tagging and removal share that lock as well: a tag is only set on a version that
is live at that moment, and removal deletes the version's tags in the same transaction, so no tag dangles.

Blob files are checked against their digest whenever they are read, and a push replaces one that fails. Index rows
and files under `blobs/` that are not valid are skipped with a warning and listed by `problems` (for `verify`).

The index's layout version is SQLite's `user_version` (INDEX_VERSION). An index from before it was set reads 0 and
is index version 1; an older index is upgraded in place under the write lock when the store opens, a newer one is
refused (mask_store/versions.py).
"""

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

from . import versions
from .atomic import atomic_write_bytes
from .errors import BaseMismatch, InvalidRef, NotFound, StoreError
from .refs import check_name, check_tag
from .store import BlobInfo, VersionRecord, check_blob, check_digest, holds_blob, load_json, printable
from .logs import get_logger

log = get_logger("store")

INDEX_VERSION = 1
# version v -> the step that turns an index of version v into v + 1, inside the write transaction.
_UPGRADES: dict[int, Callable[[sqlite3.Connection], sqlite3.Connection]] = {}
_SCHEMA = """
CREATE TABLE versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, digest TEXT NOT NULL, base_id TEXT NOT NULL,
    nbytes INTEGER NOT NULL, removed INTEGER NOT NULL, masked INTEGER NOT NULL, training TEXT NOT NULL,
    created_at TEXT NOT NULL, pushed_at TEXT NOT NULL, removed_at TEXT,
    PRIMARY KEY (name, version)
);
CREATE INDEX versions_digest ON versions (digest);
CREATE TABLE tags (
    name TEXT NOT NULL, tag TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (name, tag)
);
"""
_COLUMNS = "name, version, digest, base_id, nbytes, removed, masked, training, created_at, pushed_at, removed_at"


class LocalBackend:
    def __init__(self, root: Path):
        self.root = root
        self.uri = str(root)
        self._threads = threading.local()
        self._warned: set[str] = set()
        try:
            (root / "blobs").mkdir(parents=True, exist_ok=True)
            if not os.access(root, os.W_OK):
                raise PermissionError(13, "Permission denied")
            self.db.execute("PRAGMA journal_mode=WAL")
            versions.open_sqlite(self.db, _SCHEMA, INDEX_VERSION, _UPGRADES, str(root / "index.sqlite"), StoreError)
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"store {root} is not usable: {getattr(e, 'strerror', None) or e}") from e

    @property
    def db(self) -> sqlite3.Connection:
        """One connection per thread (sqlite3 connections must stay on the thread that made them)."""
        db = getattr(self._threads, "db", None)
        if db is None:
            db = sqlite3.connect(self.root / "index.sqlite", timeout=60, isolation_level=None)
            db.execute("PRAGMA synchronous=FULL")
            self._threads.db = db
        return db

    def _warn(self, problems: list[str]) -> None:
        """Each skipped row or file is reported once per process, not on every read."""
        for line in problems:
            if line not in self._warned:
                self._warned.add(line)
                log.warning("store %s: ignoring %s", self.root, line)

    # --- blobs ---------------------------------------------------------------------------------------------------

    def _blob(self, digest: str) -> Path:
        return self.root / "blobs" / check_digest(digest)[:2] / f"{digest}.mask"

    def put_blob(self, digest: str, data: bytes) -> None:
        """Written unless a whole copy is there: a damaged one is replaced."""
        path = self._blob(digest)
        if holds_blob(path, digest):
            return
        path.parent.mkdir(exist_ok=True)
        try:
            atomic_write_bytes(path, data)
        except OSError as e:
            raise StoreError(f"store {self.root}: cannot write blob ({e.strerror})") from e

    def read_blob(self, digest: str) -> bytes:
        try:
            data = self._blob(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is missing from store {self.root}") from None
        check_blob(data, digest, f"blob {digest} in store {self.root}")
        return data

    def local_blob(self, digest: str) -> Path:
        self.read_blob(digest)
        return self._blob(digest)

    def _scan_blobs(self) -> tuple[list[BlobInfo], list[str]]:
        now = time.time()
        blobs, problems = [], []
        for path in sorted((self.root / "blobs").rglob("*")):
            if path.is_dir() or (path.name.startswith(".") and path.name.endswith(".tmp")):  # a push mid-write
                continue
            rel = printable(str(path.relative_to(self.root)))
            try:
                st = path.stat()
            except FileNotFoundError:  # collected or renamed since the listing
                continue
            if path == self._blob_or_none(path.stem):
                blobs.append(BlobInfo(path.stem, st.st_size, now - st.st_mtime))
            else:
                problems.append(f"{rel}: not a blob (blobs are blobs/ab/<64 hex digits>.mask)")
        return blobs, problems

    def _blob_or_none(self, digest: str) -> Path | None:
        try:
            return self._blob(digest)
        except ValueError:
            return None

    def list_blobs(self) -> list[BlobInfo]:
        blobs, problems = self._scan_blobs()
        self._warn(problems)
        return blobs

    def delete_blob(self, digest: str) -> None:
        self._blob(digest).unlink(missing_ok=True)

    # --- versions and tags ---------------------------------------------------------------------------------------

    def _write(self):
        return _Transaction(self.db)

    def add_version(self, name: str, fields: dict[str, Any], blob: bytes, tags: list[str]) -> VersionRecord:
        self.put_blob(fields["digest"], blob)
        with self._write():
            if not self._blob(fields["digest"]).exists():  # collected between our write and this lock
                self.put_blob(fields["digest"], blob)
            newest = self.db.execute(  # removed versions count: a name's base never changes
                "SELECT base_id, version FROM versions WHERE name=? ORDER BY version DESC LIMIT 1", (name,)
            ).fetchone()
            if newest and newest[0] != fields["base_id"]:  # checked again here: a racing first push
                raise BaseMismatch(f"mask {fields['digest'][:12]}", fields["base_id"],
                                   f"{newest[0]} of {name}@{newest[1]}")
            (last,) = self.db.execute("SELECT MAX(version) FROM versions WHERE name=?", (name,)).fetchone()
            record = VersionRecord(name=name, version=(last or 0) + 1, **fields)
            row = record.stored()
            row["training"] = json.dumps(row["training"], sort_keys=True)
            self.db.execute(
                f"INSERT INTO versions ({_COLUMNS}) VALUES ({', '.join(':' + c for c in _COLUMNS.split(', '))})", row
            )
            for tag in tags:
                self.db.execute("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)", (name, tag, record.version))
        return record

    def _scan_records(self, name: str | None) -> tuple[list[VersionRecord], list[str]]:
        where, args = ("WHERE name=?", (name,)) if name else ("", ())
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM versions {where} ORDER BY name, version", args)
        records, problems = [], []
        for row in rows:
            values = dict(zip(_COLUMNS.split(", "), row))
            try:
                records.append(_row_record(values))
            except ValueError as e:
                row = printable(f"{values['name']}@{values['version']}")
                problems.append(f"index row {row}: not a valid version ({e})")
        return records, problems

    def records(self, name: str | None = None) -> list[VersionRecord]:
        records, problems = self._scan_records(name)
        self._warn(problems)
        return records

    def mark_removed(self, name: str, version: int, when: str) -> None:
        with self._write():
            updated = self.db.execute(
                "UPDATE versions SET removed_at=? WHERE name=? AND version=? AND removed_at IS NULL",
                (when, name, version),
            ).rowcount
            if not updated:
                raise NotFound(f"no version {name}@{version} in store {self.root}")
            self.db.execute("DELETE FROM tags WHERE name=? AND version=?", (name, version))

    def _scan_tags(self, name: str | None) -> tuple[dict[tuple[str, str], int], list[str]]:
        where, args = ("WHERE name=?", (name,)) if name else ("", ())
        tags, problems = {}, []
        for n, t, v in self.db.execute(f"SELECT name, tag, version FROM tags {where}", args):
            if _valid_tag_row(n, t, v):
                tags[(n, t)] = v
            else:
                problems.append(f"index row {printable(f'{n}:{t}')} -> {v!r}: not a valid tag")
        return tags, problems

    def tags(self, name: str | None = None) -> dict[tuple[str, str], int]:
        tags, problems = self._scan_tags(name)
        self._warn(problems)
        return tags

    def set_tag(self, name: str, tag: str, version: int) -> None:
        """The version is checked under the lock `mark_removed` takes, so a removal cannot slip in between."""
        with self._write():
            live = self.db.execute(
                "SELECT 1 FROM versions WHERE name=? AND version=? AND removed_at IS NULL", (name, version)
            ).fetchone()
            if not live:
                raise NotFound(f"cannot point {name}:{tag} at {name}@{version}: no such version in store {self.root}")
            self.db.execute("INSERT OR REPLACE INTO tags VALUES (?, ?, ?)", (name, tag, version))

    def delete_tag(self, name: str, tag: str) -> bool:
        with self._write():
            return self.db.execute("DELETE FROM tags WHERE name=? AND tag=?", (name, tag)).rowcount > 0

    def collect_garbage(self, referenced: set[str], grace_s: float) -> list[str]:
        """Under the write lock no push is between its blob check and its insert, so blobs need no grace period."""
        with self._write():
            live = {d for (d,) in self.db.execute("SELECT digest FROM versions WHERE removed_at IS NULL")}
            doomed = [b.digest for b in self.list_blobs() if b.digest not in live | referenced]
            for digest in doomed:
                self.delete_blob(digest)
            for tmp in (self.root / "blobs").glob("*/.*.tmp"):  # left by pushes killed mid-write
                try:
                    age = time.time() - tmp.stat().st_mtime
                except FileNotFoundError:  # a live push (it writes blobs outside the lock) just renamed it
                    continue
                if age > grace_s:
                    tmp.unlink(missing_ok=True)
        return doomed

    def problems(self) -> list[str]:
        return self._scan_records(None)[1] + self._scan_tags(None)[1] + self._scan_blobs()[1]


def _row_record(values: dict[str, Any]) -> VersionRecord:
    """An index row as a record; ValueError if any column holds what a push would never have written."""
    if not isinstance(values["training"], str):
        raise ValueError("training is not JSON text")
    return VersionRecord.from_stored({**values, "training": load_json(values["training"])})


def _valid_tag_row(name: object, tag: object, version: object) -> bool:
    try:
        check_name(name)
        check_tag(tag)
    except (InvalidRef, TypeError):
        return False
    return type(version) is int and version >= 1


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception; store errors get one clear line."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            raise StoreError(f"store index is locked or read-only: {e}") from e

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
