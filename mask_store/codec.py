"""The payload codecs: sorted positions of a tensor's removed weights <-> bytes at the entropy bound.

A random mask removing a fraction p of n weights carries n * H(p) bits; both codecs reach that (measured ratio
1.0000, bench/codec.py) with rANS from `constriction` under a model fixed by the counts already in the header, so no
probability table is stored. Which one is used depends on p, for decode speed:

- `rans-gaps-v1` (p < 1/3 or p > 2/3): codes only the sparse side (removed positions, or kept ones when more than
  half are removed) as gaps between positions, which are geometric. A gap g is sent as q = g // K escape symbols and
  a remainder r = g % K; for a geometric gap q and r are independent and the model is exact, so escapes cost nothing
  beyond the entropy while the alphabet stays small. Payload: uint64 symbol count, then the coder's words.
- `rans-bitmap-v1` (1/3 <= p <= 2/3): codes the bitmap a byte at a time, each byte a symbol of 256 with probability
  p^ones (1-p)^zeros. Near p = 1/2 the gaps are short and this decodes faster. Payload: the coder's words.

Models are built from + * / only (no pow or log), so every platform derives the same tables. Words are uint32
little-endian. Non-goal: adapting to structured masks; they cost what a random mask of the same density does.

Decoding trusts no number alone. Before allocating, it checks the header's numbers against each other and the
payload's length (`check_bounds`) and the payload's symbol count against the escapes the tensor's size allows, so
its memory is a small multiple of the decoded positions' own 8 bytes each. A payload's length cannot bound the
count itself: the coder's state 0 decodes symbol 0 forever at no cost, so a trailing run of adjacent positions
(or of all-kept bitmap bytes) is free, and a dense mask over a huge tensor is legitimately a tiny file.
"""

import math

import constriction
import numpy as np

GAPS = "rans-gaps-v1"
BITMAP = "rans-bitmap-v1"
CODECS = (GAPS, BITMAP)
_MAX_ALPHABET = 1 << 16
# Larger than any weight tensor we know (Llama 4 Maverick's fused experts: 1.07e10 = 2**33.3). Bounding the size
# bounds the escape symbols a gaps payload may claim, which cost almost nothing when few positions are removed.
MAX_TENSOR_SIZE = min(1 << 34, int(np.iinfo(np.intp).max))


class PayloadError(ValueError):
    """Positions, or a payload with its header numbers, that no mask of the tensor has."""


def stores_kept_side(count: int, size: int) -> bool:
    """Whether the payload holds kept positions instead of removed ones (more than half removed)."""
    return 2 * count > size


def check_positions(positions: np.ndarray, size: int) -> None:
    """Raise PayloadError unless `positions` is what a TensorMask holds: strictly increasing, each in [0, size)."""
    if not 1 <= size <= MAX_TENSOR_SIZE:
        raise PayloadError(f"tensor size {size} is outside 1..{MAX_TENSOR_SIZE}")
    if len(positions) and not 0 <= positions[0] <= positions[-1] < size:
        raise PayloadError(f"a position is outside [0, {size})")
    if not (positions[1:] > positions[:-1]).all():  # one pass, no diff array: 8 ms for 10 M positions
        raise PayloadError("positions are not strictly increasing")


def check_bounds(name: str, length: int, size: int, count: int) -> None:
    """Refuse, from the numbers alone, what no payload of `encode` is: a size beyond any tensor, more removed than
    entries, a codec other than the one the counts choose, a length that is not the codec's layout."""
    if not 1 <= size <= MAX_TENSOR_SIZE:
        raise PayloadError(f"tensor size {size} is outside 1..{MAX_TENSOR_SIZE}")
    if not 0 <= count <= size:
        raise PayloadError(f"{count} removed of {size} entries")
    if name not in CODECS:
        raise PayloadError(f"unknown codec {name!r}")
    if name != choose_codec(count, size):
        raise PayloadError(f"codec {name} is not the one for {count} removed of {size} ({choose_codec(count, size)})")
    if name == BITMAP:
        if length % 4:
            raise PayloadError(f"payload of {length} bytes is not whole words")
    elif count in (0, size):
        if length:
            raise PayloadError("payload present for an empty side")
    elif length < 8 or (length - 8) % 4:
        raise PayloadError(f"payload of {length} bytes is not a symbol count plus whole words")


def _gap_model(count: int, size: int) -> tuple[int, constriction.stream.model.Categorical]:
    """Escape threshold K and the categorical model over {0..K-1, ESC} for `count` positions among `size`."""
    p = count / size
    k = min(_MAX_ALPHABET, max(1, math.ceil(4.0 / p)))
    survive = np.cumprod(np.full(k, 1.0 - p))  # (1-p)^1 .. (1-p)^K
    probs = np.empty(k + 1)
    probs[0] = p
    probs[1:k] = p * survive[: k - 1]  # P(r) = p (1-p)^r
    probs[k] = survive[k - 1]  # P(ESC) = (1-p)^K
    return k, constriction.stream.model.Categorical(probs, perfect=False)


def _encode_sparse(positions: np.ndarray, size: int) -> bytes:
    count = len(positions)
    if count == 0:
        return b""
    k, model = _gap_model(count, size)
    gaps = np.diff(positions, prepend=-1) - 1  # (n,) entries skipped before each position
    escapes, remainders = np.divmod(gaps, k)
    ends = np.cumsum(escapes + 1) - 1  # index of each remainder in the symbol stream
    symbols = np.full(int(ends[-1]) + 1, k, dtype=np.int32)
    symbols[ends] = remainders
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols, model)
    words = coder.get_compressed().astype("<u4", copy=False)
    return np.uint64(len(symbols)).astype("<u8").tobytes() + words.tobytes()


def _decode_sparse(payload: bytes, size: int, count: int) -> np.ndarray:
    """Lengths are checked (check_bounds); this checks the symbol count against the escapes the size allows."""
    if count == 0:
        return np.empty(0, dtype=np.int64)
    n_symbols = int(np.frombuffer(payload, "<u8", count=1)[0])
    k, model = _gap_model(count, size)
    if not count <= n_symbols <= count + (size - count) // k:  # escapes: sum(gap // K) <= sum(gap) / K
        raise PayloadError(f"symbol count {n_symbols} out of range for {count} positions among {size}")
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(payload, "<u4", offset=8).astype(np.uint32))
        symbols = coder.decode(model, n_symbols)  # (n_symbols,) int32
    except ValueError as e:  # constriction rejects some malformed streams itself
        raise PayloadError(str(e)) from e
    if not coder.is_empty():
        raise PayloadError("coder has words left over")
    # position_i = sum_{j<=i} (gap_j + 1) - 1 with gap_j = K * escapes_j + remainder_j
    at = None
    remainders = symbols
    if n_symbols != count:
        at = np.flatnonzero(symbols != k)  # where each remainder sits in the stream
        if len(at) != count:
            raise PayloadError(f"decoded {len(at)} positions, header says {count}")
        remainders = symbols[at]
    positions = remainders.astype(np.int64)
    positions += 1
    np.cumsum(positions, out=positions)
    positions -= 1
    if at is not None:
        at -= np.arange(count)  # escapes seen before each remainder
        at *= k
        positions += at
    if positions[-1] >= size:
        raise PayloadError("position past the end of the tensor")
    return positions


def _byte_model(count: int, size: int) -> constriction.stream.model.Categorical:
    p = count / size
    ones = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1)  # popcount of each byte
    p_pow = np.cumprod(np.concatenate([[1.0], np.full(8, p)]))  # p^0 .. p^8
    q_pow = np.cumprod(np.concatenate([[1.0], np.full(8, 1.0 - p)]))
    return constriction.stream.model.Categorical(p_pow[ones] * q_pow[8 - ones], perfect=False)


def _encode_bitmap(removed: np.ndarray, size: int) -> bytes:
    bits = np.zeros(size, dtype=bool)
    bits[removed] = True
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.packbits(bits).astype(np.int32), _byte_model(len(removed), size))
    return coder.get_compressed().astype("<u4", copy=False).tobytes()


def _decode_bitmap(payload: bytes, size: int, count: int) -> np.ndarray:
    try:
        coder = constriction.stream.stack.AnsCoder(np.frombuffer(payload, "<u4").astype(np.uint32))
        packed = coder.decode(_byte_model(count, size), (size + 7) // 8).astype(np.uint8)
    except ValueError as e:
        raise PayloadError(str(e)) from e
    if not coder.is_empty():
        raise PayloadError("coder has words left over")
    bits = np.unpackbits(packed)
    if bits[size:].any():
        raise PayloadError("bits set past the end of the tensor")
    removed = np.flatnonzero(bits[:size])
    if len(removed) != count:
        raise PayloadError(f"decoded {len(removed)} positions, header says {count}")
    return removed


def choose_codec(count: int, size: int) -> str:
    return BITMAP if size <= 3 * count <= 2 * size else GAPS


def encode(removed: np.ndarray, size: int) -> tuple[str, bytes]:
    """Code the sorted, unique flat positions `removed` (int64, in [0, size)); returns (codec, payload)."""
    check_positions(removed, size)
    name = choose_codec(len(removed), size)
    if name == BITMAP:
        return name, _encode_bitmap(removed, size)
    if stores_kept_side(len(removed), size):
        keep = np.ones(size, dtype=bool)
        keep[removed] = False
        return name, _encode_sparse(np.flatnonzero(keep), size)
    return name, _encode_sparse(removed, size)


def decode(name: str, payload: bytes, size: int, removed_count: int) -> np.ndarray:
    """Inverse of `encode`: the sorted removed positions (int64). Raises PayloadError on any inconsistency."""
    check_bounds(name, len(payload), size, removed_count)
    if name == BITMAP:
        return _decode_bitmap(payload, size, removed_count)
    if not stores_kept_side(removed_count, size):
        return _decode_sparse(payload, size, removed_count)
    kept = _decode_sparse(payload, size, size - removed_count)
    removed = np.ones(size, dtype=bool)
    removed[kept] = False
    return np.flatnonzero(removed)


def entropy_bits(count: int, size: int) -> float:
    """size * H(count/size): the bound a payload for `count` random positions among `size` can approach."""
    if count in (0, size):
        return 0.0
    p = count / size
    return size * -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
