"""The mask store: content-addressed blobs, immutable numbered versions per name, and movable tags.

    push FILE --name NAME  ->  blob stored once per digest, then version NAME@N+1 created atomically
    NAME / NAME:TAG / NAME@N / DIGEST  ->  one version record

A version is created in one atomic step after its blob is durable, so a push killed at any point leaves either
no version or a whole one. Version numbers are allocated by the backend under a real lock (SQLite) or a
conditional write (S3), so concurrent pushes get distinct numbers; removed versions leave a tombstone so a number
never comes back with other content. `latest` is not stored: it is always the newest live version.

Nothing read back is trusted: a blob is checked against the digest that names it whenever it is read for use
(a damaged one is a CorruptMask naming the ref, and a push of the same mask replaces it), and every record read
from an index or a bucket is validated before its fields name a file or a key; objects that are not valid records
are skipped with a warning and reported by `verify`.

This file holds the rules; `local.py` and `s3.py` hold the two backends behind the `Backend` protocol.
"""

import json
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from .errors import BaseMismatch, CorruptMask, InvalidRef, NotFound
from .atomic import atomic_write_bytes
from .format import MaskFile, parse_mask, read_bytes
from .mask import utc_now
from .paths import default_store_uri
from .refs import LATEST, MaskRef, check_name, check_tag

_HEX64 = re.compile(r"[0-9a-f]{64}")


def check_digest(value: object, what: str = "digest") -> str:
    """A digest or base id read back from storage, checked before it names a file or key: 64 lowercase hex."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not 64 lowercase hex digits")
    return value


def load_json(text: str | bytes) -> Any:
    """JSON read back from storage: ValueError for anything else, nesting too deep for the parser included."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def printable(text: str) -> str:
    """A stored name or key as it may appear in a one-line message (escaped if it holds control characters)."""
    return text if text.isprintable() else ascii(text)


def check_blob(data: bytes, digest: str, source: str) -> MaskFile:
    """Parse a blob and make sure it is the mask `digest` names: whole, and not some other mask's bytes."""
    mask_file = parse_mask(data, source)
    if mask_file.digest != digest:
        raise CorruptMask(f"{source}: holds mask {mask_file.digest}, not {digest}")
    return mask_file


def holds_blob(path: Path, digest: str) -> bool:
    """Whether the file at `path` is a whole copy of blob `digest` (False for a missing or damaged one)."""
    try:
        check_blob(path.read_bytes(), digest, str(path))
    except (OSError, CorruptMask):
        return False
    return True


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

    def __post_init__(self):
        """Records come back from an index or a bucket that others can write: an invalid one never exists."""
        try:
            check_name(self.name)
        except InvalidRef as e:
            raise ValueError(str(e)) from None
        counts = (self.version, self.nbytes, self.removed, self.masked)
        if any(type(n) is not int or n < 0 for n in counts) or self.version < 1:
            raise ValueError("version and counts must be whole numbers, the version from 1")
        check_digest(self.digest)
        check_digest(self.base_id, "base id")
        if not isinstance(self.training, dict):
            raise ValueError("training metadata must be an object")
        if not all(isinstance(t, str) for t in (self.created_at, self.pushed_at)):
            raise ValueError("times must be strings")
        if self.removed_at is not None and not isinstance(self.removed_at, str):
            raise ValueError("removed_at must be a string or null")

    @classmethod
    def from_stored(cls, raw: object) -> "VersionRecord":
        """The inverse of `stored()` for whatever storage hands back: ValueError unless it is a valid record."""
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        keys = {f.name for f in fields(cls)} - {"tags"}
        if set(raw) - keys or keys - {"removed_at"} - set(raw):
            raise ValueError("its fields are not those of a version record")
        return cls(**raw)

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
    """Every read returns only valid records and blobs that match their digest; anything else stored under the
    backend's layout is skipped (with a warning) and listed by `problems`."""

    uri: str

    def read_blob(self, digest: str) -> bytes:
        """The blob's bytes, checked with `check_blob` (CorruptMask if damaged, NotFound if missing)."""

    def local_blob(self, digest: str) -> Path:
        """A local file holding the blob, checked like `read_blob` (S3 refills its cache from the bucket)."""

    def list_blobs(self) -> list[BlobInfo]: ...

    def delete_blob(self, digest: str) -> None: ...

    def add_version(self, name: str, fields: dict[str, Any], blob: bytes, tags: list[str]) -> VersionRecord:
        """Store `blob` durably (replacing a damaged copy), then create version max+1 of `name` (tombstones count)
        in one atomic step, and point `tags` at it (in the same step where the backend can). Raises BaseMismatch
        if `name` is bound to another base, checked atomically with the claim."""

    def records(self, name: str | None = None) -> list[VersionRecord]:
        """Every version record, tombstones included, sorted by (name, version), without tags."""

    def mark_removed(self, name: str, version: int, when: str) -> None:
        """Make a live version a tombstone and delete the tags pointing at it; NotFound if it is not live."""

    def tags(self, name: str | None = None) -> dict[tuple[str, str], int]:
        """(name, tag) -> version."""

    def set_tag(self, name: str, tag: str, version: int) -> None:
        """Point a tag at a live version; NotFound (and no tag left behind) if the version is not live."""

    def delete_tag(self, name: str, tag: str) -> bool: ...

    def collect_garbage(self, referenced: set[str], grace_s: float) -> list[str]:
        """Delete blobs not in `referenced` (and older than `grace_s` where writers take no lock)."""

    def problems(self) -> list[str]:
        """One line per stored object that reads skip: not a valid version record, tag, name record or blob."""


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
        existing = self.backend.records(name)  # removed versions count: a name's base never changes
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
        tags = self.backend.tags(name) if records else {}  # one scan for the listing (on S3, one GET per tag)
        return [self._with_tags(r, records, tags) for r in records]

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
        tags = self.backend.tags(parsed.name)
        version = tags.get((parsed.name, parsed.tag))
        if version is None:
            raise NotFound(f"no tag {parsed} in store {self.uri}")
        found = [r for r in live if r.version == version]
        if not found:
            raise NotFound(f"tag {parsed} points at {parsed.name}@{version}, which is not in store {self.uri}")
        return self._with_tags(found[0], live, tags)

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

    def _with_tags(self, record: VersionRecord, live: list[VersionRecord],
                   tags: dict[tuple[str, str], int] | None = None) -> VersionRecord:
        """The record with its tags, from `tags` when the caller has read them already."""
        if tags is None:
            tags = self.backend.tags(record.name)
        tags = sorted(t for (n, t), v in tags.items() if n == record.name and v == record.version)
        newest = max(r.version for r in live if r.name == record.name)
        if record.version == newest:
            tags.insert(0, LATEST)
        return VersionRecord(**{**record.stored(), "tags": tuple(tags)})

    @contextmanager
    def _blob_of(self, record: VersionRecord) -> Iterator[None]:
        """A blob that fails its check is reported under the ref the user asked for, with the way to repair it."""
        try:
            yield
        except (CorruptMask, NotFound) as e:
            raise type(e)(f"{record.ref} is damaged: {e}; push its .mask file again to repair it") from e

    def read(self, ref: str) -> MaskFile:
        record = self.resolve(ref)
        with self._blob_of(record):
            return parse_mask(self.backend.read_blob(record.digest), f"{self.uri} {record.ref}")

    def local_path(self, record: VersionRecord) -> Path:
        """A local file holding the version's blob, checked against its digest just now."""
        with self._blob_of(record):
            return self.backend.local_blob(record.digest)

    def pull(self, ref: str, out: str | os.PathLike) -> VersionRecord:
        record = self.resolve(ref)
        with self._blob_of(record):
            data = self.backend.read_blob(record.digest)
        atomic_write_bytes(out, data)
        return record

    def verify(self, ref: str | None = None) -> list[str]:
        """Re-hash and decode every live version's blob (or one); for the whole store also report tags that
        point at no live version and stored objects that reads skip. Returns one line per problem."""
        records = [self.resolve(ref)] if ref else self.versions()
        problems = [line for record in records if (line := self._blob_problem(record))]
        if ref is None:
            problems += self._dangling_tags() + self.backend.problems()
        return problems

    def _blob_problem(self, record: VersionRecord) -> str | None:
        try:
            parse_mask(self.backend.read_blob(record.digest), f"{record.ref} blob {record.digest}").decode()
        except CorruptMask as e:
            return f"{record.ref}: {e}"
        except NotFound:
            return f"{record.ref}: blob {record.digest} is missing"
        return None

    def _dangling_tags(self) -> list[str]:
        live = {(r.name, r.version) for r in self.backend.records() if r.live}
        return [
            f"tag {name}:{tag} points at {name}@{version}, which does not exist"
            for (name, tag), version in sorted(self.backend.tags().items())
            if (name, version) not in live
        ]


def _span(records: list[VersionRecord]) -> str:
    versions = [r.version for r in records]
    return ", ".join(map(str, versions[:10])) + (" ..." if len(versions) > 10 else "")
