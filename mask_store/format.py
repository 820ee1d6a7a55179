"""The `.mask` file: a versioned JSON header, the coded payload, and a checksum over both.

    MAGIC (8 bytes) | header length (uint64 LE) | header (JSON, UTF-8) | payload | BLAKE3 of everything before (32)

The header names the base model (its base id), lists each masked tensor (name, shape, removed count, codec and
the slice of the payload holding it) and carries training metadata. The trailing checksum makes any truncation
or flipped bit fail loudly, naming the file, before a single position is decoded.

The digest that names a mask hashes only what defines it (format, base id, tensor entries, payload), so the same
removals with other metadata keep the same digest.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import codec
from .atomic import atomic_write_bytes
from .errors import CorruptMask
from .mask import Mask, TensorMask

MAGIC = b"\x89MASK\r\n\x1a"
FORMAT_VERSION = 1
_CHECKSUM_LEN = 32
_PREFIX_LEN = len(MAGIC) + 8


class TensorEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    shape: tuple[int, ...]
    removed: int = Field(ge=0)  # count of removed entries
    codec: str
    offset: int = Field(ge=0)  # into the payload
    length: int = Field(ge=0)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class Header(BaseModel):
    """Format version 1. A later version adds an upgrade function in `_UPGRADES` and bumps FORMAT_VERSION."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int
    base_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    tensors: tuple[TensorEntry, ...]
    training: dict[str, Any] = {}
    created_at: str = ""

    @property
    def removed_count(self) -> int:
        return sum(t.removed for t in self.tensors)

    @property
    def masked_count(self) -> int:
        return sum(t.size for t in self.tensors)


# version -> function turning that version's header dict into the next version's.
_UPGRADES: dict[int, Any] = {}


def _upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    version = raw.get("format")
    while version in _UPGRADES:
        raw = _UPGRADES[version](raw)
        version = raw["format"]
    return raw


def _digest(base_id: str, tensors: list[dict[str, Any]], payload: bytes | memoryview) -> str:
    defining = {"format": FORMAT_VERSION, "base_id": base_id, "tensors": tensors}
    h = blake3.blake3(json.dumps(defining, sort_keys=True, separators=(",", ":")).encode())
    h.update(payload)
    return h.hexdigest()


def encode_mask(mask: Mask) -> bytes:
    entries, chunks, offset = [], [], 0
    for name in sorted(mask.tensors):
        t = mask.tensors[name]
        codec_name, chunk = codec.encode(t.removed, t.size)
        entries.append(
            {"name": name, "shape": list(t.shape), "removed": t.count, "codec": codec_name,
             "offset": offset, "length": len(chunk)}
        )
        chunks.append(chunk)
        offset += len(chunk)
    payload = b"".join(chunks)
    header = {
        "format": FORMAT_VERSION,
        "base_id": mask.base_id,
        "digest": _digest(mask.base_id, entries, payload),
        "tensors": entries,
        "training": dict(mask.training),
        "created_at": mask.created_at,
    }
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = MAGIC + len(head).to_bytes(8, "little") + head + payload
    return body + blake3.blake3(body).digest()


@dataclass(frozen=True)
class MaskFile:
    """A checked file: header parsed and checksum verified; positions are decoded on demand."""

    header: Header
    payload: memoryview
    source: str
    nbytes: int

    @property
    def digest(self) -> str:
        return self.header.digest

    def decode(self) -> Mask:
        tensors = {}
        for t in self.header.tensors:
            chunk = self.payload[t.offset : t.offset + t.length]
            try:
                removed = codec.decode(t.codec, bytes(chunk), t.size, t.removed)
            except (codec.PayloadError, ValueError) as e:
                raise CorruptMask(f"{self.source}: tensor {t.name} does not decode ({e})") from e
            tensors[t.name] = TensorMask(t.shape, removed)
        return Mask(self.header.base_id, tensors, self.header.training, self.header.created_at)


def parse_mask(data: bytes, source: str) -> MaskFile:
    """Check and parse a whole file's bytes. Raises CorruptMask naming `source` on any defect."""
    if len(data) < _PREFIX_LEN + _CHECKSUM_LEN or not data.startswith(MAGIC):
        raise CorruptMask(f"{source}: not a .mask file (bad magic or too short)")
    if blake3.blake3(memoryview(data)[:-_CHECKSUM_LEN]).digest() != data[-_CHECKSUM_LEN:]:
        raise CorruptMask(f"{source}: checksum mismatch (truncated or corrupted)")
    head_len = int.from_bytes(data[len(MAGIC) : _PREFIX_LEN], "little")
    head_end = _PREFIX_LEN + head_len
    if head_end > len(data) - _CHECKSUM_LEN:
        raise CorruptMask(f"{source}: header runs past the end of the file")
    try:
        raw = _upgrade(json.loads(data[_PREFIX_LEN:head_end]))
        if raw.get("format") != FORMAT_VERSION:
            raise CorruptMask(f"{source}: format version {raw.get('format')} is not supported by this maskserve")
        header = Header.model_validate(raw)
    except (ValueError, ValidationError) as e:
        raise CorruptMask(f"{source}: unreadable header ({e.__class__.__name__})") from e
    payload = memoryview(data)[head_end : len(data) - _CHECKSUM_LEN]
    for t in header.tensors:
        if t.codec not in codec.CODECS:
            raise CorruptMask(f"{source}: tensor {t.name} uses unknown codec {t.codec!r}")
        if t.offset + t.length > len(payload) or t.removed > t.size:
            raise CorruptMask(f"{source}: tensor {t.name} entry is inconsistent with the payload")
    entries = [t.model_dump(mode="json") for t in header.tensors]
    if _digest(header.base_id, entries, payload) != header.digest:
        raise CorruptMask(f"{source}: digest does not match its content")
    return MaskFile(header, payload, source, len(data))


def read_bytes(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CorruptMask(f"{path}: cannot read ({e.strerror})") from e


def read_mask_file(path: str | os.PathLike) -> MaskFile:
    return parse_mask(read_bytes(path), str(path))


def load_mask(path: str | os.PathLike) -> Mask:
    return read_mask_file(path).decode()


def save_mask(mask: Mask, path: str | os.PathLike) -> str:
    """Write atomically; returns the digest."""
    data = encode_mask(mask)
    atomic_write_bytes(path, data)
    return parse_mask(data, str(path)).digest
