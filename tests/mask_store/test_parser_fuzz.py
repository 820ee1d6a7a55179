"""The .mask parser under hostile bytes: a file either decodes to a mask that re-encodes to the same digest, or
fails with CorruptMask naming the file. Never another exception, never an allocation its bytes cannot justify.

Each body runs in a child process under RLIMIT_AS, so a giant allocation fails the test (a MemoryError, or the
child aborting) instead of taking the machine down. Examples are derandomized and few, so the default `pytest`
run stays reproducible and takes seconds.
"""

import json
import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import blake3
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mask_store import codec
from mask_store.errors import CorruptMask
from mask_store.format import MAGIC, _digest, encode_mask, parse_mask
from mask_store.mask import Mask, TensorMask

from .helpers import BASE_A

ROOT = Path(__file__).resolve().parents[2]
MEMORY_LIMIT = 2 << 30  # address space of the child: interpreter, numpy and hypothesis take about 0.3 GiB
DECODE_BUDGET = 64 << 20  # accepted files are decoded only if their mask is this small in memory (see _mask_bytes)
SOURCE = "fuzzed.mask"
FUZZ = settings(
    max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)


@pytest.mark.parametrize("body", ["bombs", "mutations", "headers"])
def test_in_a_memory_capped_child(body):
    code = f"from tests.mask_store.test_parser_fuzz import main; main({body!r})"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, f"exit {child.returncode}\n{child.stdout}\n{child.stderr}"


def main(body: str) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    {"bombs": bombs, "mutations": mutations, "headers": headers}[body]()


# --- the property ----------------------------------------------------------------------------------------------


def check(data: bytes) -> None:
    """CorruptMask naming the file, or a mask whose canonical encoding has the file's digest."""
    try:
        mask_file = parse_mask(data, SOURCE)
        if _mask_bytes(mask_file.header) > DECODE_BUDGET:
            return
        mask = mask_file.decode()
    except CorruptMask as e:
        assert SOURCE in str(e), str(e)
        return
    again = parse_mask(encode_mask(mask), "again")
    assert again.digest == mask_file.digest
    assert again.decode().same_removals(mask)


def _mask_bytes(header) -> int:
    """What the decoded mask legitimately takes: 8 bytes a removed entry, plus a bool a weight where the file codes
    the kept side. A dense mask over a huge tensor is small on disk and big in memory by design (positions)."""
    return sum(8 * t.removed + t.size * codec.stores_kept_side(t.removed, t.size) for t in header.tensors)


# --- sealing: a right checksum and digest, so that mutations reach the checks behind them ---------------------


def _split(data: bytes) -> tuple[bytes, bytes]:
    n = int.from_bytes(data[8:16], "little")
    return data[16 : 16 + n], data[16 + n : -32]


def _seal(head: bytes, payload: bytes) -> bytes:
    body = MAGIC + len(head).to_bytes(8, "little") + head + payload
    return body + blake3.blake3(body).digest()


def _seal_header(header, payload: bytes) -> bytes:
    if isinstance(header, dict) and isinstance(header.get("tensors"), list):
        header = {**header, "digest": _digest(str(header.get("base_id")), header["tensors"], payload)}
    return _seal(json.dumps(header, sort_keys=True).encode(), payload)


# --- bombs: tiny files whose numbers claim decodes far larger than the mask they describe ---------------------


def _bomb(shape, removed: int, name: str, payload: bytes) -> bytes:
    entry = {"name": "w", "shape": shape, "removed": removed, "codec": name, "offset": 0, "length": len(payload)}
    header = {"format": 1, "base_id": BASE_A, "tensors": [entry], "training": {}, "created_at": ""}
    return _seal_header(header, payload)


BIG = [2**17, 2**17]  # 2**34 weights: as large as a weight tensor may be
WORD = b"\x01\x00\x00\x00"


def bombs() -> None:
    """One removed position each (8 bytes decoded), in files of under 400 bytes, that once cost 8 to 64 GB."""
    cases = {
        "symbol count 1e10": _bomb([10**5, 10**5], 1, codec.GAPS, struct.pack("<Q", 10**10) + WORD),
        "symbol count 2**34": _bomb(BIG, 1, codec.GAPS, struct.pack("<Q", 2**34) + WORD),
        "a bitmap of 2**34 bits": _bomb(BIG, 1, codec.BITMAP, WORD),
    }
    for what, data in cases.items():
        print(what, flush=True)  # the last one printed is the one that took the child down
        assert len(data) < 400, what
        try:
            parse_mask(data, SOURCE).decode()
        except CorruptMask as e:
            assert SOURCE in str(e), str(e)
            continue
        raise AssertionError(f"accepted {what}")


# --- mutations of valid files ---------------------------------------------------------------------------------


def _seed_masks() -> list[Mask]:
    rng = np.random.default_rng(0)

    def ratio(shape, p):
        size = int(np.prod(shape))
        return TensorMask(shape, np.flatnonzero(rng.random(size) < p).astype(np.int64))

    return [
        Mask(BASE_A, {"a": ratio((16, 16), 0.1), "b": ratio((8, 32), 0.9)}, {"method": "random"}),
        Mask(BASE_A, {"w": ratio((4, 8, 8), 0.5)}),
        Mask(BASE_A, {"e": ratio((3, 5), 0.0), "f": ratio((5, 3), 1.0), "s": ratio((1,), 1.0)}),
        Mask(BASE_A, {"x": ratio((300, 7), 0.01)}, {"nested": {"list": [1, 2.5, None, "s"]}}),
        Mask(BASE_A, {}),
    ]


SEEDS = [encode_mask(m) for m in _seed_masks()]
INTERESTING = st.one_of(
    st.integers(-2, 300),
    st.sampled_from([2**16, 2**17, 2**31, 2**32, 2**33, 2**34, 2**34 + 1, 2**62, 2**63, 2**64, 10**10, -(2**63)]),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
    st.lists(st.integers(-1, 2**33), max_size=3),
    st.sampled_from([[2**32, 2**32], [2**17, 2**17], [10**5, 10**5], [0, 4], [-4, -4], [16.0, 16], {}]),
)
FIELDS = ["name", "shape", "removed", "codec", "offset", "length"]


def _mutate_bytes(data: bytes, draw) -> bytes:
    kind = draw(st.sampled_from(["flip", "cut", "splice", "insert", "delete"]))
    at = draw(st.integers(0, len(data)))
    if kind == "flip" and at < len(data):
        return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
    if kind == "cut":
        return data[:at]
    if kind == "splice":
        other = draw(st.sampled_from(SEEDS))
        return data[:at] + other[draw(st.integers(0, len(other))) :]
    if kind == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    return data[:at] + data[at + draw(st.integers(1, 16)) :]


def _mutate_header(data: bytes, draw) -> bytes:
    """Set one field of one tensor entry (or a top-level key) and reseal, digest included."""
    head, payload = _split(data)
    header = json.loads(head)
    if header["tensors"] and draw(st.booleans()):
        entry = draw(st.sampled_from(header["tensors"]))
        entry[draw(st.sampled_from(FIELDS))] = draw(INTERESTING)
    else:
        header[draw(st.sampled_from(["format", "base_id", "tensors", "training", "created_at", "extra"]))] = draw(
            INTERESTING
        )
    return _seal_header(header, payload)


def _mutate_payload(data: bytes, draw) -> bytes:
    """Flip a bit of the payload (or of a symbol count) and reseal, digest included: only the codec can object."""
    head, payload = _split(data)
    if not payload:
        return data
    at = draw(st.integers(0, len(payload) - 1))
    payload = payload[:at] + bytes([payload[at] ^ (1 << draw(st.integers(0, 7)))]) + payload[at + 1 :]
    return _seal_header(json.loads(head), payload)


def mutations() -> None:
    @FUZZ
    @given(st.sampled_from(SEEDS), st.data())
    def fuzz(data: bytes, draws: st.DataObject) -> None:
        for _ in range(draws.draw(st.integers(1, 3))):
            kind = draws.draw(st.sampled_from(["bytes", "bytes+checksum", "header", "header", "payload", "payload"]))
            if kind.startswith("bytes"):
                data = _mutate_bytes(data, draws.draw)
                if kind.endswith("checksum") and len(data) >= 48:
                    data = data[:-32] + blake3.blake3(data[:-32]).digest()
            elif _parses(data):
                data = (_mutate_header if kind == "header" else _mutate_payload)(data, draws.draw)
        check(data)

    fuzz()


def _parses(data: bytes) -> bool:
    try:
        parse_mask(data, SOURCE)
        return True
    except CorruptMask:
        return False


# --- generated headers ----------------------------------------------------------------------------------------

DIMS = st.one_of(
    st.integers(1, 24),
    st.sampled_from([0, -1, -16, 2**16, 2**17, 2**31, 2**32, 2**63, 2**64]),
    st.floats(0, 64),
    st.sampled_from(["3", True, None, [2]]),
)
SYMBOL_COUNTS = st.sampled_from([0, 1, 3, 2**20, 10**10, 2**63])
CHUNKS = st.one_of(
    st.binary(max_size=24),
    st.builds(lambda n, words: struct.pack("<Q", n) + words, SYMBOL_COUNTS, st.binary(max_size=12)),
)


@st.composite
def _honest_entry(draw, name: str, offset: int) -> tuple[dict, bytes]:
    """An entry and payload chunk as encode_mask writes them, for a random small mask."""
    shape = draw(st.lists(st.integers(1, 24), min_size=1, max_size=3))
    size = int(np.prod(shape))
    removed = np.sort(np.random.default_rng(draw(st.integers(0, 99))).choice(size, draw(st.integers(0, size)), False))
    name_, chunk = codec.encode(removed.astype(np.int64), size)
    entry = {"name": name, "shape": shape, "removed": len(removed), "codec": name_, "offset": offset}
    return entry | {"length": len(chunk)}, chunk


@st.composite
def _wild_entry(draw, name: str, offset: int) -> tuple[dict, bytes]:
    """An entry whose every field is drawn from the values most likely to break arithmetic and allocation."""
    chunk = draw(CHUNKS)
    entry = {
        "name": name,
        "shape": draw(st.lists(DIMS, max_size=3)),
        "removed": draw(st.one_of(st.integers(0, 600), INTERESTING)),
        "codec": draw(st.sampled_from([*codec.CODECS, "rle", 7])),
        "offset": draw(st.one_of(st.just(offset), INTERESTING)),
        "length": draw(st.one_of(st.just(len(chunk)), INTERESTING)),
    }
    return entry, chunk


@st.composite
def _files(draw) -> bytes:
    entries, chunks, offset = [], [], 0
    for i in range(draw(st.integers(0, 3))):
        name = draw(st.one_of(st.just(f"t{i}"), st.just("t0"), st.text(max_size=3)))
        entry, chunk = draw(st.one_of(_honest_entry(name, offset), _wild_entry(name, offset)))
        entries.append(entry)
        chunks.append(chunk)
        offset += len(chunk)
    header = {"format": 1, "base_id": BASE_A, "tensors": entries, "training": {}, "created_at": ""}
    if draw(st.booleans()):
        header[draw(st.sampled_from([*header, "extra"]))] = draw(INTERESTING)
    return _seal_header(header, b"".join(chunks) + draw(st.sampled_from([b"", b"\0", WORD])))


def headers() -> None:
    @FUZZ
    @given(_files())
    def fuzz(data: bytes) -> None:
        check(data)

    fuzz()
