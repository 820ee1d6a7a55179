"""The `.mask` file: a versioned JSON header, the coded payload, and a checksum over both.

    MAGIC (8 bytes) | header length (uint64 LE) | header (JSON, UTF-8) | payload | BLAKE3 of everything before (32)

The header names the base model (its base id), lists each masked tensor (name, shape, removed count, codec and
the slice of the payload holding it) and carries training metadata. The trailing checksum makes any truncation
or flipped bit fail loudly, naming the file, before a single position is decoded.

The digest that names a mask hashes only what defines it (format, base id, tensor entries, payload), so the same
removals with other metadata keep the same digest. It hashes those fields as the file wrote them, its own format
version included, so a file keeps its digest when a later format upgrades its header on load.

A file is accepted only in the one form `encode_mask` writes it: a JSON object without duplicate keys, nesting at
most MAX_HEADER_DEPTH deep, JSON integers where numbers are meant, tensors in strictly increasing name order whose
slices tile the payload exactly, each coded with the codec its counts choose. Everything else is a CorruptMask
naming the file, whatever its checksum says, since anyone can compute a checksum.
"""

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import blake3
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from . import codec, versions
from .atomic import atomic_write_bytes
from .errors import CorruptMask
from .mask import Mask, TensorMask

MAGIC = b"\x89MASK\r\n\x1a"
FORMAT_VERSION = 1
_CHECKSUM_LEN = 32
_PREFIX_LEN = len(MAGIC) + 8
MAX_HEADER_DEPTH = 32  # format 1 nests 4 deep; the rest is room for training metadata
_Count = Annotated[StrictInt, Field(ge=0)]  # a JSON integer: not 3.0, "3" or true


class TensorEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: StrictStr = Field(min_length=1)
    shape: tuple[Annotated[StrictInt, Field(ge=1)], ...]
    removed: _Count  # count of removed entries
    codec: StrictStr
    offset: _Count  # into the payload
    length: _Count

    @property
    def size(self) -> int:
        """Exact, never wrapped to int64; parse_mask refuses shapes past MAX_TENSOR_SIZE before anything reads it."""
        return math.prod(self.shape)


class Header(BaseModel):
    """Format version 1. A later version bumps FORMAT_VERSION and adds to `_UPGRADES` the step from the one before."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: StrictInt
    base_id: StrictStr = Field(pattern=r"^[0-9a-f]{64}$")
    digest: StrictStr = Field(pattern=r"^[0-9a-f]{64}$")
    tensors: tuple[TensorEntry, ...]
    training: dict[str, Any] = {}
    created_at: StrictStr = ""

    @property
    def removed_count(self) -> int:
        return sum(t.removed for t in self.tensors)

    @property
    def masked_count(self) -> int:
        return sum(t.size for t in self.tensors)


# version v -> the function turning a header dict of version v into one of version v + 1 (see versions.py).
_UPGRADES: dict[int, Any] = {}


def _digest(base_id: str, tensors: list[dict[str, Any]], payload: bytes | memoryview,
            version: object = FORMAT_VERSION) -> str:
    """Over the defining fields as a file of `version` writes them (parse_mask passes the file's own version)."""
    defining = {"format": version, "base_id": base_id, "tensors": tensors}
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
        """Every tensor decoded and its positions checked (sorted, unique, in range): a whole mask or CorruptMask."""
        tensors = {}
        for t in self.header.tensors:
            chunk = self.payload[t.offset : t.offset + t.length]
            try:
                removed = codec.decode(t.codec, bytes(chunk), t.size, t.removed)
                codec.check_positions(removed, t.size)
            except ValueError as e:  # PayloadError, or a stream constriction itself refuses
                raise CorruptMask(f"{self.source}: tensor {t.name!r} does not decode ({e})") from e
            if len(removed) != t.removed:
                raise CorruptMask(f"{self.source}: tensor {t.name!r} has {len(removed)} positions, not {t.removed}")
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
    header, written = _parse_header(data[_PREFIX_LEN:head_end], source)
    payload = memoryview(data)[head_end : len(data) - _CHECKSUM_LEN]
    _check_entries(header.tensors, len(payload), source)
    if _digest(written.get("base_id"), written.get("tensors"), payload, written["format"]) != header.digest:
        raise CorruptMask(f"{source}: digest does not match its content")
    return MaskFile(header, payload, source, len(data))


def _parse_header(head: bytes, source: str) -> tuple[Header, dict[str, Any]]:
    """The header upgraded to FORMAT_VERSION, and the dict as the file wrote it (what its digest covers)."""
    try:
        raw = json.loads(head.decode("utf-8"), object_pairs_hook=_unique_keys)  # bytes would also take UTF-16
    except RecursionError:
        raise CorruptMask(f"{source}: header nests deeper than {MAX_HEADER_DEPTH}") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, a duplicate key, an integer of 4300 digits
        raise CorruptMask(f"{source}: unreadable header ({e})") from e
    if not isinstance(raw, dict):
        raise CorruptMask(f"{source}: header is a JSON {type(raw).__name__}, not an object")
    if _depth(raw) > MAX_HEADER_DEPTH:
        raise CorruptMask(f"{source}: header nests deeper than {MAX_HEADER_DEPTH}")
    upgraded = versions.upgrade(raw, raw.get("format"), FORMAT_VERSION, _UPGRADES, source, CorruptMask)
    try:
        return Header.model_validate(upgraded), raw
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise CorruptMask(f"{source}: unreadable header ({where}: {first['msg']})") from e


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object with one key twice has two readings; json.loads would silently keep the last."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        duplicate = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise ValueError(f"duplicate key {duplicate!r}")
    return obj


def _depth(value: Any) -> int:
    """How deep lists and objects nest in a parsed JSON value, walked without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, (list, dict)):
            deepest = max(deepest, depth)
            todo.extend((child, depth + 1) for child in (value.values() if isinstance(value, dict) else value))
    return deepest


def _check_entries(entries: tuple[TensorEntry, ...], payload_len: int, source: str) -> None:
    """Tensors in strictly increasing name order, each slice starting where the last one ended, the last one ending
    where the payload does, and each entry's numbers possible for its codec (codec.check_bounds)."""
    end, previous = 0, None
    for t in entries:
        where = f"{source}: tensor {t.name!r}"
        if previous is not None and t.name <= previous:
            problem = "duplicate tensor name" if t.name == previous else "tensors out of name order"
            raise CorruptMask(f"{where}: {problem}")
        if not _fits(t.shape):
            raise CorruptMask(f"{where}: shape {list(t.shape)} has more than {codec.MAX_TENSOR_SIZE} entries")
        if t.offset != end:
            raise CorruptMask(f"{where}: payload offset {t.offset}, expected {end} (slices tile the payload in order)")
        if t.offset + t.length > payload_len:
            raise CorruptMask(f"{where}: its {t.length} bytes run past the payload's {payload_len}")
        try:
            codec.check_bounds(t.codec, t.length, t.size, t.removed)
        except codec.PayloadError as e:
            raise CorruptMask(f"{where}: {e}") from None
        end, previous = t.offset + t.length, t.name
    if end != payload_len:
        raise CorruptMask(f"{source}: {payload_len - end} payload bytes belong to no tensor")


def _fits(shape: tuple[int, ...]) -> bool:
    """At most MAX_TENSOR_SIZE entries, found without multiplying out a hostile shape (dims >= 1: it only grows)."""
    size = 1
    for dim in shape:
        size *= dim
        if size > codec.MAX_TENSOR_SIZE:
            return False
    return True


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
