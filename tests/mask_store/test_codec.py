import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mask_store import codec


@st.composite
def masks(draw):
    size = draw(st.integers(1, 5000))
    mode = draw(st.sampled_from(["empty", "full", "random", "runs"]))
    if mode == "empty":
        return size, np.empty(0, np.int64)
    if mode == "full":
        return size, np.arange(size, dtype=np.int64)
    if mode == "runs":  # long gaps exercise the escape symbols, clusters the kept-side coding
        start = draw(st.integers(0, size - 1))
        return size, np.arange(start, min(size, start + draw(st.integers(1, size))), dtype=np.int64)
    p = draw(st.floats(0.0, 1.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return size, np.flatnonzero(rng.random(size) < p).astype(np.int64)


@settings(max_examples=300, deadline=None)
@given(masks())
def test_round_trip_is_exact(case):
    size, removed = case
    decoded = codec.decode(*codec.encode(removed, size), size, len(removed))
    assert decoded.dtype == np.int64
    np.testing.assert_array_equal(decoded, removed)


def test_one_element_tensor():
    for removed in (np.empty(0, np.int64), np.array([0])):
        assert np.array_equal(codec.decode(*codec.encode(removed, 1), 1, len(removed)), removed)


def test_empty_and_full_masks_cost_nothing():
    assert codec.encode(np.empty(0, np.int64), 1000) == (codec.GAPS, b"")
    assert codec.encode(np.arange(1000), 1000) == (codec.GAPS, b"")


@pytest.mark.parametrize("p", [0.01, 0.05, 0.1, 0.2, 0.3, 0.38, 0.45, 0.5])
def test_random_masks_code_within_3_percent_of_entropy(p):
    size = 2_000_000
    removed = np.flatnonzero(np.random.default_rng(1).random(size) < p)
    name, payload = codec.encode(removed, size)
    assert name == (codec.BITMAP if p >= 1 / 3 else codec.GAPS)
    bits = 8 * len(payload)
    assert bits <= 1.03 * codec.entropy_bits(len(removed), size)
    assert bits >= codec.entropy_bits(len(removed), size) * 0.99  # sanity: not below the bound


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 10_000), st.integers(0, 10_000))
def test_garbage_payload_never_decodes_silently_out_of_range(payload, size, count):
    count = min(count, size)
    name = codec.choose_codec(count, size)  # any other is refused before decoding
    try:
        out = codec.decode(name, payload, size, count)
    except codec.PayloadError:
        return
    # Anything that does decode must at least be a well-formed mask of the promised size.
    assert len(out) == count and (len(out) == 0 or (out[0] >= 0 and out[-1] < size))
    assert np.all(np.diff(out) > 0)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_truncated_payload_is_an_error(p):
    removed = np.flatnonzero(np.random.default_rng(0).random(100_000) < p)
    name, payload = codec.encode(removed, 100_000)
    with pytest.raises(codec.PayloadError):
        codec.decode(name, payload[:-4], 100_000, len(removed))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(3, 3000), st.sampled_from([1 / 3, 1 / 2, 2 / 3]), st.integers(-2, 2), st.integers(0, 2**32 - 1))
def test_round_trip_at_the_codec_and_side_thresholds(size, fraction, step, seed):
    count = min(size, max(0, int(size * fraction) + step))
    removed = np.sort(np.random.default_rng(seed).choice(size, count, replace=False)).astype(np.int64)
    name, payload = codec.encode(removed, size)
    assert name == codec.choose_codec(count, size)
    np.testing.assert_array_equal(codec.decode(name, payload, size, count), removed)


def test_symbol_count_is_bounded_by_the_escapes_the_size_allows():
    """One position among 10**6 has at most 10**6 // K escapes before it; a larger count is refused undecoded."""
    payload = np.uint64(10**6).astype("<u8").tobytes() + b"\x01\0\0\0"
    with pytest.raises(codec.PayloadError, match="symbol count"):
        codec.decode(codec.GAPS, payload, 10**6, 1)


def test_a_codec_the_counts_do_not_choose_is_refused():
    removed = np.array([3, 70], dtype=np.int64)
    payload = codec._encode_bitmap(removed, 100)
    np.testing.assert_array_equal(codec._decode_bitmap(payload, 100, 2), removed)  # a valid stream, of one reading
    with pytest.raises(codec.PayloadError, match="codec"):
        codec.decode(codec.BITMAP, payload, 100, 2)


@pytest.mark.parametrize(
    "removed, size",
    [([3, 2], 10), ([2, 2], 10), ([-1, 2], 10), ([2, 10], 10), ([], 0), ([0], 2**34 + 1)],
)
def test_encode_refuses_positions_no_mask_has(removed, size):
    """Encoding them would write a file that decodes to another mask, or that no reader accepts."""
    with pytest.raises(ValueError):
        codec.encode(np.array(removed, dtype=np.int64), size)
