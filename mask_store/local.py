"""Local-directory backend: blobs as files, versions and tags in one SQLite database.

    STORE/index.sqlite             versions (tombstones included) and tags, WAL mode
    STORE/blobs/ab/abcdef...mask   one file per digest, written by temp file + fsync + rename

Version numbers are allocated inside `BEGIN IMMEDIATE`, which holds SQLite's write lock, so concurrent pushes from
many processes serialize there and each gets its own number. The blob is checked (and re-written if garbage
collection took it) inside the same transaction, and garbage collection deletes blobs under that lock too, so the
two can never interleave badly.
"""

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes
from .errors import BaseMismatch, NotFound, StoreError
from .store import BlobInfo, VersionRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, digest TEXT NOT NULL, base_id TEXT NOT NULL,
    nbytes INTEGER NOT NULL, removed INTEGER NOT NULL, masked INTEGER NOT NULL, training TEXT NOT NULL,
    created_at TEXT NOT NULL, pushed_at TEXT NOT NULL, removed_at TEXT,
    PRIMARY KEY (name, version)
);
CREATE INDEX IF NOT EXISTS versions_digest ON versions (digest);
CREATE TABLE IF NOT EXISTS tags (
    name TEXT NOT NULL, tag TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (name, tag)
);
"""
_COLUMNS = "name, version, digest, base_id, nbytes, removed, masked, training, created_at, pushed_at, removed_at"


class LocalBackend:
    def __init__(self, root: Path):
        self.root = root
        self.uri = str(root)
        self._threads = threading.local()
        try:
            (root / "blobs").mkdir(parents=True, exist_ok=True)
            if not os.access(root, os.W_OK):
                raise PermissionError(13, "Permission denied")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(_SCHEMA)
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

    # --- blobs ---------------------------------------------------------------------------------------------------

    def _blob(self, digest: str) -> Path:
        return self.root / "blobs" / digest[:2] / f"{digest}.mask"

    def put_blob(self, digest: str, data: bytes) -> None:
        path = self._blob(digest)
        if path.exists():
            return
        path.parent.mkdir(exist_ok=True)
        try:
            atomic_write_bytes(path, data)
        except OSError as e:
            raise StoreError(f"store {self.root}: cannot write blob ({e.strerror})") from e

    def read_blob(self, digest: str) -> bytes:
        try:
            return self._blob(digest).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is missing from store {self.root}") from None

    def local_blob(self, digest: str) -> Path:
        path = self._blob(digest)
        if not path.exists():
            raise NotFound(f"blob {digest} is missing from store {self.root}")
        return path

    def list_blobs(self) -> list[BlobInfo]:
        now = time.time()
        out = []
        for path in (self.root / "blobs").glob("*/*.mask"):
            st = path.stat()
            out.append(BlobInfo(path.stem, st.st_size, now - st.st_mtime))
        return out

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
            newest_live = self.db.execute(
                "SELECT base_id, version FROM versions WHERE name=? AND removed_at IS NULL ORDER BY version DESC LIMIT 1",
                (name,),
            ).fetchone()
            if newest_live and newest_live[0] != fields["base_id"]:  # checked again here: a racing first push
                raise BaseMismatch(f"mask {fields['digest'][:12]}", fields["base_id"],
                                   f"{newest_live[0]} of {name}@{newest_live[1]}")
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

    def records(self, name: str | None = None) -> list[VersionRecord]:
        where, args = ("WHERE name=?", (name,)) if name else ("", ())
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM versions {where} ORDER BY name, version", args)
        out = []
        for row in rows:
            values = dict(zip(_COLUMNS.split(", "), row))
            values["training"] = json.loads(values["training"])
            out.append(VersionRecord(**values))
        return out

    def mark_removed(self, name: str, version: int, when: str) -> None:
        with self._write():
            self.db.execute("UPDATE versions SET removed_at=? WHERE name=? AND version=?", (when, name, version))

    def tags(self, name: str | None = None) -> dict[tuple[str, str], int]:
        where, args = ("WHERE name=?", (name,)) if name else ("", ())
        return {(n, t): v for n, t, v in self.db.execute(f"SELECT name, tag, version FROM tags {where}", args)}

    def set_tag(self, name: str, tag: str, version: int) -> None:
        with self._write():
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
