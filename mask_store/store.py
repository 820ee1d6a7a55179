"""The mask store: content-addressed blobs, immutable numbered versions per name, and movable tags.

    push FILE --name NAME  ->  blob stored once per digest, then version NAME@N+1 created atomically
    NAME / NAME:TAG / NAME@N / DIGEST  ->  one version record

A version is created in one atomic step after its blob is durable, so a push killed at any point leaves either
no version or a whole one. Version numbers are allocated by the backend under a real lock (SQLite) or a
conditional write (S3), so concurrent pushes get distinct numbers; removed versions leave a tombstone so a number
never comes back with other content. `latest` is not stored: it is always the newest live version.

This file holds the rules; `local.py` and `s3.py` hold the two backends behind the `Backend` protocol.
"""

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .errors import BaseMismatch, CorruptMask, InvalidRef, NotFound
from .atomic import atomic_write_bytes
from .format import MaskFile, parse_mask, read_bytes
from .mask import utc_now
from .paths import default_store_uri
from .refs import LATEST, MaskRef, check_name, check_tag


@dataclass(frozen=True)
class VersionRecord:
    """What the store knows of one version without opening its blob."""

    name: str
    version: int
    digest: str
    base_id: str
    nbytes: int
    removed: int  # weights removed
    masked: int  # weights in masked tensors
    training: dict[str, Any]
    created_at: str  # when the mask was made
    pushed_at: str
    removed_at: str | None = None  # set when the version was removed; the number stays taken
    tags: tuple[str, ...] = field(default=(), compare=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def live(self) -> bool:
        return self.removed_at is None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["tags"] = list(self.tags)
        out["ref"] = self.ref
        out["ratio"] = self.removed / self.masked if self.masked else 0.0
        return out

    def stored(self) -> dict[str, Any]:
        """The record as backends persist it (tags live elsewhere)."""
        out = asdict(self)
        del out["tags"]
        return out


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    nbytes: int
    age_s: float  # seconds since it was written


class Backend(Protocol):
    uri: str

    def read_blob(self, digest: str) -> bytes: ...

    def local_blob(self, digest: str) -> Path:
        """A local file holding the blob (S3 downloads into the cache)."""

    def list_blobs(self) -> list[BlobInfo]: ...

    def delete_blob(self, digest: str) -> None: ...

    def add_version(self, name: str, fields: dict[str, Any], blob: bytes, tags: list[str]) -> VersionRecord:
        """Store `blob` durably, then create version max+1 of `name` (tombstones count) in one atomic step, and
        point `tags` at it (in the same step where the backend can)."""

    def records(self, name: str | None = None) -> list[VersionRecord]:
        """Every version record, tombstones included, sorted by (name, version), without tags."""

    def mark_removed(self, name: str, version: int, when: str) -> None: ...

    def tags(self, name: str | None = None) -> dict[tuple[str, str], int]:
        """(name, tag) -> version."""

    def set_tag(self, name: str, tag: str, version: int) -> None: ...

    def delete_tag(self, name: str, tag: str) -> bool: ...

    def collect_garbage(self, referenced: set[str], grace_s: float) -> list[str]:
        """Delete blobs not in `referenced` (and older than `grace_s` where writers take no lock)."""


def open_backend(uri: str) -> Backend:
    if uri.startswith("s3://"):
        from .s3 import S3Backend

        return S3Backend(uri)
    from .local import LocalBackend

    return LocalBackend(Path(uri).expanduser())


class Store:
    def __init__(self, uri: str | os.PathLike | None = None, backend: Backend | None = None):
        self.backend = backend or open_backend(str(uri or default_store_uri()))
        self.uri = self.backend.uri

    # --- writing -------------------------------------------------------------------------------------------------

    def push(self, path: str | os.PathLike, name: str, tags: Iterable[str] = (), base_id: str | None = None):
        """Add the mask at `path` as the next version of `name`; returns its VersionRecord."""
        tags = self.check_push(name, tags)
        data = read_bytes(path)
        mask_file = parse_mask(data, str(path))
        mask_file.decode()  # a blob that does not decode never enters the store
        header = mask_file.header
        if base_id is not None and header.base_id != base_id:
            raise BaseMismatch(f"mask {path}", header.base_id, base_id)
        existing = [r for r in self.backend.records(name) if r.live]
        if existing and existing[-1].base_id != header.base_id:
            raise BaseMismatch(f"mask {path}", header.base_id, f"{existing[-1].base_id} of {name}@{existing[-1].version}")
        record = self.backend.add_version(
            name,
            {
                "digest": header.digest,
                "base_id": header.base_id,
                "nbytes": mask_file.nbytes,
                "removed": header.removed_count,
                "masked": header.masked_count,
                "training": header.training,
                "created_at": header.created_at,
                "pushed_at": utc_now(),
            },
            data,
            tags,
        )
        return self.resolve(record.ref)

    def tag(self, ref: str, tag: str) -> VersionRecord:
        check_tag(tag)
        self._refuse_latest([tag])
        record = self.resolve(ref)
        self.backend.set_tag(record.name, tag, record.version)
        return self.resolve(record.ref)

    def untag(self, name_tag: str) -> None:
        if ":" not in name_tag:
            raise InvalidRef(f"untag takes NAME:TAG, not {name_tag!r}")
        ref = MaskRef.parse(name_tag)
        self._refuse_latest([ref.tag])
        if not self.backend.delete_tag(ref.name, ref.tag):
            raise NotFound(f"no tag {name_tag!r} in store {self.uri}")

    def remove(self, ref: str) -> VersionRecord:
        """Remove one version (its number is never reused) and the tags pointing at it."""
        record = self.resolve(ref)
        for (name, tag), version in self.backend.tags(record.name).items():
            if version == record.version:
                self.backend.delete_tag(name, tag)
        self.backend.mark_removed(record.name, record.version, utc_now())
        return record

    def gc(self, grace_s: float = 3600.0) -> list[str]:
        """Delete blobs that no live version references; returns their digests."""
        referenced = {r.digest for r in self.backend.records() if r.live}
        return self.backend.collect_garbage(referenced, grace_s)

    def check_push(self, name: str, tags: Iterable[str]) -> list[str]:
        """The checks push makes on its arguments, for callers that want them before expensive work."""
        check_name(name)
        tags = [check_tag(t) for t in tags]
        self._refuse_latest(tags)
        return tags

    @staticmethod
    def _refuse_latest(tags: Iterable[str]) -> None:
        if LATEST in tags:
            raise InvalidRef("'latest' always names the newest version; it cannot be set or removed")

    # --- reading -------------------------------------------------------------------------------------------------

    def versions(self, base_id: str | None = None, name: str | None = None) -> list[VersionRecord]:
        records = [r for r in self.backend.records(name) if r.live]
        if base_id is not None:
            records = [r for r in records if r.base_id == base_id]
        return [self._with_tags(r, records) for r in records]

    def resolve(self, ref: str | MaskRef) -> VersionRecord:
        parsed = MaskRef.parse(ref) if isinstance(ref, str) else ref
        if parsed.digest_prefix is not None:
            return self._resolve_digest(parsed.digest_prefix)
        live = [r for r in self.backend.records(parsed.name) if r.live]
        if not live:
            raise NotFound(f"no mask named {parsed.name!r} in store {self.uri}")
        if parsed.version is not None:
            found = [r for r in live if r.version == parsed.version]
            if not found:
                raise NotFound(f"no version {parsed} in store {self.uri} (versions: {_span(live)})")
            return self._with_tags(found[0], live)
        if parsed.tag == LATEST:
            return self._with_tags(live[-1], live)
        version = self.backend.tags(parsed.name).get((parsed.name, parsed.tag))
        found = [r for r in live if r.version == version]
        if not found:
            raise NotFound(f"no tag {parsed} in store {self.uri}")
        return self._with_tags(found[0], live)

    def _resolve_digest(self, prefix: str) -> VersionRecord:
        live = [r for r in self.backend.records() if r.live]
        matches = [r for r in live if r.digest.startswith(prefix)]
        digests = {r.digest for r in matches}
        if not digests:
            raise NotFound(f"no mask with digest {prefix} in store {self.uri}")
        if len(digests) > 1:
            raise InvalidRef(f"digest prefix {prefix} is ambiguous ({len(digests)} masks); give more digits")
        newest = max(matches, key=lambda r: r.pushed_at)
        return self._with_tags(newest, live)

    def _with_tags(self, record: VersionRecord, live: list[VersionRecord]) -> VersionRecord:
        tags = sorted(t for (n, t), v in self.backend.tags(record.name).items() if v == record.version)
        newest = max(r.version for r in live if r.name == record.name)
        if record.version == newest:
            tags.insert(0, LATEST)
        return VersionRecord(**{**record.stored(), "tags": tuple(tags)})

    def read(self, ref: str) -> MaskFile:
        record = self.resolve(ref)
        return parse_mask(self.backend.read_blob(record.digest), f"{self.uri} {record.ref}")

    def local_path(self, record: VersionRecord) -> Path:
        return self.backend.local_blob(record.digest)

    def pull(self, ref: str, out: str | os.PathLike) -> VersionRecord:
        record = self.resolve(ref)
        data = self.backend.read_blob(record.digest)
        parse_mask(data, f"{self.uri} {record.ref}")
        atomic_write_bytes(out, data)
        return record

    def verify(self, ref: str | None = None) -> list[str]:
        """Re-hash and decode every live version's blob (or one); returns one line per problem."""
        records = [self.resolve(ref)] if ref else self.versions()
        problems = []
        for record in records:
            try:
                mask_file = parse_mask(self.backend.read_blob(record.digest), f"{record.ref} blob {record.digest}")
                mask_file.decode()
                if mask_file.digest != record.digest:
                    problems.append(f"{record.ref}: blob holds digest {mask_file.digest}, record says {record.digest}")
            except CorruptMask as e:
                problems.append(f"{record.ref}: {e}")
            except NotFound:
                problems.append(f"{record.ref}: blob {record.digest} is missing")
        return problems


def _span(records: list[VersionRecord]) -> str:
    versions = [r.version for r in records]
    return ", ".join(map(str, versions[:10])) + (" ..." if len(versions) > 10 else "")
