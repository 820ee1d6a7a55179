"""S3 backend (`s3://bucket/prefix`): the same store shared by many machines, with no server of our own.

    PREFIX/blobs/<digest>.mask            written by every push of that digest
    PREFIX/names/<name>.json              {"base_id": ...}, created with `If-None-Match: *` by the name's first push
    PREFIX/versions/<name>/<00000007>.json  created with `If-None-Match: *`, so exactly one writer gets each number
    PREFIX/tags/<name>/<tag>.json         {"version": N}, last writer wins
    PREFIX/format.json                    {"format": 1}, the layout's version, created by the first push

A push uploads its blob, binds the name to its base (the first conditional PUT of `names/<name>.json` wins, so two
racing first pushes with different bases cannot both land; later pushes compare against it), then claims the next
version number with a conditional PUT; a 412 means another pusher took that number, so it re-lists and tries the
next one. A single PUT is atomic, so a killed push leaves at most an unreferenced blob (or, killed after its first
claim, a name bound to its base). Removal overwrites the record with a tombstone, keeping the number taken, then
deletes the version's tags; a tag write re-reads the version afterwards and takes itself back if it was removed, so
`tag` racing `rm` leaves no dangling tag. Tags are objects of their own, written after the version claim: a push
killed between the two leaves its version untagged (`latest` still reaches it; `mask-store tag` sets the rest).

Without a lock, garbage collection only deletes unreferenced blobs older than a grace period, and re-reads a blob's
age just before deleting it: a push re-uploads its blob even when present, so a push in flight makes it young again
(and a push repairs a damaged blob). What remains is the gap between that re-read and the DELETE (milliseconds,
against a push's upload-then-claim).

Nothing read from the bucket is trusted: keys and records are validated (a digest must be 64 hex digits before it
names a key or a cache file), objects that are not valid are skipped with a warning and listed by `problems`, and
blobs, including the local cache's copies, are checked against their digest on every read.

The layout's version (STORE_FORMAT) is checked when the backend opens: a bucket without `format.json` was written
before the layout carried one and is format 1; an older layout is brought up to date by the steps in `_UPGRADES`
(run at open, then `format.json` is rewritten, so the next opener finds it done), a newer one is refused
(mask_store/versions.py). Opening a bucket in the current layout writes nothing, so a read-only replica works; the
one opener that meets an older layout needs write access, once (no older layout exists yet: 1 is the only one).

Endpoint and credentials come from the usual AWS settings (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...).
"""

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions

from . import versions
from .atomic import atomic_write_bytes
from .errors import BaseMismatch, InvalidRef, NotFound, StoreError
from .paths import cache_dir
from .refs import check_name, check_tag
from .store import BlobInfo, VersionRecord, check_blob, check_digest, holds_blob, load_json, printable
from .logs import get_logger

log = get_logger("store")
_MAX_CLAIMS = 1000
_VERSION_FILE = re.compile(r"([0-9]{8,})\.json")
STORE_FORMAT = 1
# version v -> the step that turns a bucket of layout v into v + 1, run when a backend opens it.
_UPGRADES: dict[int, Callable[["S3Backend"], "S3Backend"]] = {}


class S3Backend:
    def __init__(self, uri: str):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise StoreError(f"store {uri!r}: expected s3://bucket/prefix")
        self.uri = uri
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.s3 = boto3.client("s3")
        self._warned: set[str] = set()
        try:
            self.s3.head_bucket(Bucket=bucket)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            raise StoreError(f"store {uri}: bucket is not reachable ({_reason(e)})") from e
        self._format_written = self._open_format()

    def _open_format(self) -> bool:
        """Check the layout's version (upgrading an older one); True if `format.json` is there."""
        key = self._key("format.json")
        try:
            raw = self._get_json(key)
        except ValueError as e:
            raise StoreError(f"store {self.uri}: {self._rel(key)} is damaged ({e})") from e
        if raw is not None and not (isinstance(raw, dict) and set(raw) == {"format"}):
            raise StoreError(f'store {self.uri}: {self._rel(key)} is damaged (expected {{"format": N}})')
        version = 1 if raw is None else raw["format"]  # no format.json: written before the layout had a version
        versions.upgrade(self, version, STORE_FORMAT, _UPGRADES, f"{self.uri}/{self._rel(key)}", StoreError)
        if version != STORE_FORMAT:  # upgraded just now
            self._put(key, json.dumps({"format": STORE_FORMAT}).encode())
            return True
        return raw is not None

    def _write_format(self) -> None:
        """The first push to a bucket records its layout's version (create-only: racing first pushes agree)."""
        if not self._format_written:
            self._put(self._key("format.json"), json.dumps({"format": STORE_FORMAT}).encode(), create_only=True)
            self._format_written = True

    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def _rel(self, key: str) -> str:
        """A key as messages show it: relative to the store's prefix."""
        return printable(key.removeprefix(self.prefix))

    def _warn(self, problems: list[str]) -> None:
        """Each skipped object is reported once per process, not on every read."""
        for line in problems:
            if line not in self._warned:
                self._warned.add(line)
                log.warning("store %s: ignoring %s", self.uri, line)

    @contextmanager
    def _failures(self, action: str) -> Iterator[None]:
        """Any S3 or network failure inside the block becomes one StoreError line naming the store and `action`."""
        try:
            yield
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            raise StoreError(f"store {self.uri}: cannot {action} ({_reason(e)})") from e

    def _list(self, prefix: str) -> list[dict[str, Any]]:
        out = []
        with self._failures(f"list {prefix}"):
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                out.extend(page.get("Contents", []))
        return out

    def _delete(self, key: str) -> None:
        with self._failures(f"delete {key}"):
            self.s3.delete_object(Bucket=self.bucket, Key=key)

    def _read(self, key: str, call: Callable[[], Any]) -> Any | None:
        """Run one read of `key`: None if the key does not exist."""
        with self._failures(f"read {key}"):
            try:
                return call()
            except botocore.exceptions.ClientError as e:
                if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
                    return None
                raise

    def _get(self, key: str) -> bytes | None:
        return self._read(key, lambda: self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def _get_json(self, key: str) -> Any:
        """The JSON object at `key` (None if absent); ValueError if it is not JSON."""
        body = self._get(key)
        return None if body is None else load_json(body)

    def _age_s(self, key: str) -> float | None:
        head = self._read(key, lambda: self.s3.head_object(Bucket=self.bucket, Key=key))
        return None if head is None else time.time() - head["LastModified"].timestamp()

    def _put(self, key: str, body: bytes, create_only: bool = False) -> bool:
        """PUT `key`; with create_only, returns False instead of overwriting."""
        extra = {"IfNoneMatch": "*"} if create_only else {}
        with self._failures(f"write {key}"):
            try:
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, **extra)
                return True
            except botocore.exceptions.ClientError as e:
                if create_only and e.response["Error"]["Code"] in ("PreconditionFailed", "412"):
                    return False
                raise

    # --- blobs ---------------------------------------------------------------------------------------------------

    def _blob_key(self, digest: str) -> str:
        return self._key("blobs", f"{check_digest(digest)}.mask")

    def put_blob(self, digest: str, data: bytes) -> None:
        """Always written, even if present: the fresh LastModified keeps garbage collection's grace from racing,
        and a damaged copy is replaced."""
        self._put(self._blob_key(digest), data)

    def read_blob(self, digest: str) -> bytes:
        data = self._get(self._blob_key(digest))
        if data is None:
            raise NotFound(f"blob {digest} is missing from store {self.uri}")
        check_blob(data, digest, f"blob {digest} in store {self.uri}")
        return data

    def local_blob(self, digest: str) -> Path:
        """The cached copy if it is whole, else a fresh download (checked before it enters the cache)."""
        path = cache_dir() / "s3-blobs" / f"{check_digest(digest)}.mask"
        if not holds_blob(path, digest):
            data = self.read_blob(digest)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        return path

    def _scan_blobs(self) -> tuple[list[BlobInfo], list[str]]:
        now = time.time()
        blobs, problems = [], []
        for obj in self._list(self._key("blobs", "")):
            digest = obj["Key"].removeprefix(self._key("blobs", "")).removesuffix(".mask")
            try:
                if self._blob_key(digest) != obj["Key"]:
                    raise ValueError("not named like a blob")
            except ValueError:
                problems.append(f"{self._rel(obj['Key'])}: not a blob (blobs are blobs/<64 hex digits>.mask)")
                continue
            blobs.append(BlobInfo(digest, obj["Size"], now - obj["LastModified"].timestamp()))
        return blobs, problems

    def list_blobs(self) -> list[BlobInfo]:
        blobs, problems = self._scan_blobs()
        self._warn(problems)
        return blobs

    def delete_blob(self, digest: str) -> None:
        self._delete(self._blob_key(digest))

    # --- versions and tags ---------------------------------------------------------------------------------------

    def _version_key(self, name: str, version: int) -> str:
        return self._key("versions", name, f"{version:08d}.json")

    def _parse_version_key(self, key: str) -> tuple[str, int] | None:
        """(name, version) for a key laid out as `_version_key` writes it, else None."""
        name, _, file = key.removeprefix(self._key("versions", "")).partition("/")
        match = _VERSION_FILE.fullmatch(file)
        if not match or not _is_name(name) or key != self._version_key(name, int(match[1])):
            return None
        return name, int(match[1])

    def _claim_base(self, name: str, base_id: str, what: str) -> None:
        """Bind `name` to one base with a create-only PUT, so of two racing first pushes only one base wins."""
        key = self._key("names", f"{name}.json")
        try:
            bound = self._read_name(key)
            if bound is None:
                existing = self.records(name)  # a name pushed before names/ existed keeps the base it has
                proposed = existing[-1].base_id if existing else base_id
                self._put(key, json.dumps({"base_id": proposed}).encode(), create_only=True)
                bound = self._read_name(key)
        except ValueError as e:
            raise StoreError(f"store {self.uri}: {self._rel(key)} is damaged ({e}); delete it to push again") from e
        if bound != base_id:
            raise BaseMismatch(what, base_id, f"{bound}, the base of {name}")

    def _read_name(self, key: str) -> str | None:
        """The base a name record binds (None if there is none); ValueError if it is not a valid record."""
        raw = self._get_json(key)
        if raw is None:
            return None
        if not isinstance(raw, dict) or set(raw) != {"base_id"}:
            raise ValueError('expected {"base_id": BASE_ID}')
        return check_digest(raw["base_id"], "base id")

    def add_version(self, name: str, fields: dict[str, Any], blob: bytes, tags: list[str]) -> VersionRecord:
        self._write_format()
        self.put_blob(fields["digest"], blob)
        self._claim_base(name, fields["base_id"], f"mask {fields['digest'][:12]}")
        for _ in range(_MAX_CLAIMS):
            keys = [o["Key"] for o in self._list(self._key("versions", name, ""))]
            taken = [parsed[1] for parsed in map(self._parse_version_key, keys) if parsed]
            record = VersionRecord(name=name, version=max(taken, default=0) + 1, **fields)
            body = json.dumps(record.stored(), sort_keys=True).encode()
            if self._put(self._version_key(name, record.version), body, create_only=True):
                for tag in tags:
                    self.set_tag(name, tag, record.version)
                return record
        raise StoreError(f"store {self.uri}: could not claim a version of {name} after {_MAX_CLAIMS} tries")

    def _read_record(self, key: str) -> VersionRecord | None:
        """The record at a version key (None if absent); ValueError unless it is valid and matches its key."""
        parsed = self._parse_version_key(key)
        if parsed is None:
            raise ValueError("not a version key (versions/<name>/<8-digit number>.json)")
        raw = self._get_json(key)
        if raw is None:
            return None
        record = VersionRecord.from_stored(raw)
        if (record.name, record.version) != parsed:
            raise ValueError(f"it holds the record of {record.ref}")
        return record

    def _scan_records(self, name: str | None) -> tuple[list[VersionRecord], list[str]]:
        prefix = self._key("versions", name, "") if name else self._key("versions", "")
        records, problems = [], []
        for obj in self._list(prefix):
            try:
                record = self._read_record(obj["Key"])
            except ValueError as e:
                problems.append(f"{self._rel(obj['Key'])}: not a version record ({e})")
                continue
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: (r.name, r.version)), problems

    def records(self, name: str | None = None) -> list[VersionRecord]:
        records, problems = self._scan_records(name)
        self._warn(problems)
        return records

    def _live_record(self, name: str, version: int) -> VersionRecord | None:
        try:
            record = self._read_record(self._version_key(name, version))
        except ValueError:
            return None
        return record if record is not None and record.live else None

    def mark_removed(self, name: str, version: int, when: str) -> None:
        """Tombstone first, then tags: a tag written meanwhile sees the tombstone (see `set_tag`) or is deleted."""
        record = self._live_record(name, version)
        if record is None:
            raise NotFound(f"no version {name}@{version} in store {self.uri}")
        tombstone = {**record.stored(), "removed_at": when}
        self._put(self._version_key(name, version), json.dumps(tombstone, sort_keys=True).encode())
        for (_, tag), tagged in self.tags(name).items():
            if tagged == version:
                self._delete(self._tag_key(name, tag))

    def _tag_key(self, name: str, tag: str) -> str:
        return self._key("tags", name, f"{tag}.json")

    def _read_tag(self, key: str) -> tuple[tuple[str, str], int | None]:
        """((name, tag), version) for a tag object (version None if it vanished); ValueError if it is not valid."""
        name, _, file = key.removeprefix(self._key("tags", "")).partition("/")
        tag = file.removesuffix(".json")
        if not (_is_name(name) and _is_tag(tag) and key == self._tag_key(name, tag)):
            raise ValueError("not a tag key (tags/<name>/<tag>.json)")
        raw = self._get_json(key)
        if raw is None:
            return (name, tag), None
        version = raw.get("version") if isinstance(raw, dict) and set(raw) == {"version"} else None
        if type(version) is not int or version < 1:
            raise ValueError('expected {"version": N}')
        return (name, tag), version

    def _scan_tags(self, name: str | None) -> tuple[dict[tuple[str, str], int], list[str]]:
        prefix = self._key("tags", name, "") if name else self._key("tags", "")
        tags, problems = {}, []
        for obj in self._list(prefix):
            try:
                name_tag, version = self._read_tag(obj["Key"])
            except ValueError as e:
                problems.append(f"{self._rel(obj['Key'])}: not a tag ({e})")
                continue
            if version is not None:
                tags[name_tag] = version
        return tags, problems

    def tags(self, name: str | None = None) -> dict[tuple[str, str], int]:
        tags, problems = self._scan_tags(name)
        self._warn(problems)
        return tags

    def set_tag(self, name: str, tag: str, version: int) -> None:
        """Written, then the version re-read: if a removal got in first, the tag takes itself back (unless another
        writer has moved it since), so the tag never stays on a removed version."""
        key = self._tag_key(name, tag)
        self._put(key, json.dumps({"version": version}).encode())
        if self._live_record(name, version) is None:
            if self.tags(name).get((name, tag)) == version:
                self._delete(key)
            raise NotFound(f"cannot point {name}:{tag} at {name}@{version}: no such version in store {self.uri}")

    def delete_tag(self, name: str, tag: str) -> bool:
        key = self._tag_key(name, tag)
        if self._get(key) is None:
            return False
        self._delete(key)
        return True

    def collect_garbage(self, referenced: set[str], grace_s: float) -> list[str]:
        doomed = []
        for blob in self.list_blobs():
            if blob.digest in referenced or blob.age_s <= grace_s:
                continue
            age = self._age_s(self._blob_key(blob.digest))  # a push may have re-uploaded it since
            if age is not None and age > grace_s:
                self.delete_blob(blob.digest)
                doomed.append(blob.digest)
        return doomed

    def problems(self) -> list[str]:
        return (self._scan_records(None)[1] + self._scan_tags(None)[1] + self._scan_names()
                + self._scan_blobs()[1])

    def _scan_names(self) -> list[str]:
        problems = []
        for obj in self._list(self._key("names", "")):
            name = obj["Key"].removeprefix(self._key("names", "")).removesuffix(".json")
            try:
                if not _is_name(name) or obj["Key"] != self._key("names", f"{name}.json"):
                    raise ValueError("not a name key (names/<name>.json)")
                self._read_name(obj["Key"])
            except ValueError as e:
                problems.append(f"{self._rel(obj['Key'])}: not a name record ({e})")
        return problems


def _is_name(text: str) -> bool:
    try:
        check_name(text)
    except InvalidRef:
        return False
    return True


def _is_tag(text: str) -> bool:
    try:
        check_tag(text)
    except InvalidRef:
        return False
    return True


def _reason(e: Exception) -> str:
    if isinstance(e, botocore.exceptions.ClientError):
        return e.response["Error"].get("Message") or e.response["Error"].get("Code", "error")
    return str(e)
