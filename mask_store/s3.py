"""S3 backend (`s3://bucket/prefix`): the same store shared by many machines, with no server of our own.

    PREFIX/blobs/<digest>.mask            written once per digest
    PREFIX/versions/<name>/<00000007>.json  created with `If-None-Match: *`, so exactly one writer gets each number
    PREFIX/tags/<name>/<tag>.json         {"version": N}, last writer wins

A push uploads its blob, then claims the next version number with a conditional PUT; a 412 means another pusher
took that number, so it re-lists and tries the next one. A single PUT is atomic, so a killed push leaves at most an
unreferenced blob. Removal overwrites the record with a tombstone, keeping the number taken. Without a lock,
garbage collection only deletes unreferenced blobs older than a grace period, and re-reads a blob's age just before
deleting it: a push re-uploads its blob even when present, so a push in flight makes it young again. What remains is
the gap between that re-read and the DELETE (milliseconds, against a push's upload-then-claim).

Endpoint and credentials come from the usual AWS settings (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...).
"""

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions

from .atomic import atomic_write_bytes
from .errors import NotFound, StoreError
from .paths import cache_dir
from .store import BlobInfo, VersionRecord

_MAX_CLAIMS = 1000


class S3Backend:
    def __init__(self, uri: str):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise StoreError(f"store {uri!r}: expected s3://bucket/prefix")
        self.uri = uri
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.s3 = boto3.client("s3")
        try:
            self.s3.head_bucket(Bucket=bucket)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            raise StoreError(f"store {uri}: bucket is not reachable ({_reason(e)})") from e

    def _key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

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

    def put_blob(self, digest: str, data: bytes) -> None:
        """Always written, even if present: the fresh LastModified keeps garbage collection's grace from racing."""
        self._put(self._key("blobs", f"{digest}.mask"), data)

    def read_blob(self, digest: str) -> bytes:
        data = self._get(self._key("blobs", f"{digest}.mask"))
        if data is None:
            raise NotFound(f"blob {digest} is missing from store {self.uri}")
        return data

    def local_blob(self, digest: str) -> Path:
        path = cache_dir() / "s3-blobs" / f"{digest}.mask"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, self.read_blob(digest))
        return path

    def list_blobs(self) -> list[BlobInfo]:
        now = time.time()
        return [
            BlobInfo(Path(o["Key"]).stem, o["Size"], now - o["LastModified"].timestamp())
            for o in self._list(self._key("blobs", ""))
        ]

    def delete_blob(self, digest: str) -> None:
        self._delete(self._key("blobs", f"{digest}.mask"))

    # --- versions and tags ---------------------------------------------------------------------------------------

    def _version_key(self, name: str, version: int) -> str:
        return self._key("versions", name, f"{version:08d}.json")

    def add_version(self, name: str, fields: dict[str, Any], blob: bytes, tags: list[str]) -> VersionRecord:
        """Tags are objects of their own, PUT after the claim: a push killed in between leaves its version untagged."""
        self.put_blob(fields["digest"], blob)
        for _ in range(_MAX_CLAIMS):
            taken = [int(Path(o["Key"]).stem) for o in self._list(self._key("versions", name, ""))]
            record = VersionRecord(name=name, version=max(taken, default=0) + 1, **fields)
            body = json.dumps(record.stored(), sort_keys=True).encode()
            if self._put(self._version_key(name, record.version), body, create_only=True):
                for tag in tags:
                    self.set_tag(name, tag, record.version)
                return record
        raise StoreError(f"store {self.uri}: could not claim a version of {name} after {_MAX_CLAIMS} tries")

    def records(self, name: str | None = None) -> list[VersionRecord]:
        prefix = self._key("versions", name, "") if name else self._key("versions", "")
        out = []
        for obj in self._list(prefix):
            body = self._get(obj["Key"])
            if body is not None:
                out.append(VersionRecord(**json.loads(body)))
        return sorted(out, key=lambda r: (r.name, r.version))

    def mark_removed(self, name: str, version: int, when: str) -> None:
        key = self._version_key(name, version)
        body = self._get(key)
        if body is None:
            raise NotFound(f"no version {name}@{version} in store {self.uri}")
        self._put(key, json.dumps({**json.loads(body), "removed_at": when}, sort_keys=True).encode())

    def tags(self, name: str | None = None) -> dict[tuple[str, str], int]:
        prefix = self._key("tags", name, "") if name else self._key("tags", "")
        out = {}
        for obj in self._list(prefix):
            tag_name, tag = obj["Key"][len(self._key("tags", "")) :].removesuffix(".json").split("/", 1)
            body = self._get(obj["Key"])
            if body is not None:
                out[(tag_name, tag)] = json.loads(body)["version"]
        return out

    def set_tag(self, name: str, tag: str, version: int) -> None:
        self._put(self._key("tags", name, f"{tag}.json"), json.dumps({"version": version}).encode())

    def delete_tag(self, name: str, tag: str) -> bool:
        key = self._key("tags", name, f"{tag}.json")
        if self._get(key) is None:
            return False
        self._delete(key)
        return True

    def collect_garbage(self, referenced: set[str], grace_s: float) -> list[str]:
        doomed = []
        for blob in self.list_blobs():
            if blob.digest in referenced or blob.age_s <= grace_s:
                continue
            age = self._age_s(self._key("blobs", f"{blob.digest}.mask"))  # a push may have re-uploaded it since
            if age is not None and age > grace_s:
                self.delete_blob(blob.digest)
                doomed.append(blob.digest)
        return doomed


def _reason(e: Exception) -> str:
    if isinstance(e, botocore.exceptions.ClientError):
        return e.response["Error"].get("Message") or e.response["Error"].get("Code", "error")
    return str(e)
