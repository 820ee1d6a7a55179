import json
from pathlib import Path

import blake3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mask_store import codec
from mask_store import format as format_module
from mask_store.errors import CorruptMask
from mask_store.format import MAGIC, _digest, encode_mask, load_mask, parse_mask, read_mask_file, save_mask
from mask_store.mask import Mask, TensorMask

from .helpers import BASE_A, random_mask


def test_save_and_load_round_trip(tmp_path):
    mask = random_mask(0)
    digest = save_mask(mask, tmp_path / "m.mask")
    loaded = load_mask(tmp_path / "m.mask")
    assert loaded.same_removals(mask)
    assert loaded.training == mask.training and loaded.created_at == mask.created_at
    assert read_mask_file(tmp_path / "m.mask").digest == digest
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_digest_names_the_removals_not_the_metadata():
    a = parse_mask(encode_mask(random_mask(0, note="first")), "a").digest
    b = parse_mask(encode_mask(random_mask(0, note="second")), "b").digest
    c = parse_mask(encode_mask(random_mask(1)), "c").digest
    assert a == b != c


def test_digest_depends_on_the_base():
    mask = random_mask(0)
    other = Mask("c" * 64, mask.tensors, mask.training, mask.created_at)
    assert parse_mask(encode_mask(mask), "a").digest != parse_mask(encode_mask(other), "b").digest


def test_edge_tensors_round_trip():
    tensors = {
        "empty": TensorMask((4, 4), np.empty(0, np.int64)),
        "full": TensorMask((3, 5), np.arange(15, dtype=np.int64)),
        "one": TensorMask((1,), np.array([0])),
    }
    mask = Mask(BASE_A, tensors)
    assert parse_mask(encode_mask(mask), "x").decode().same_removals(mask)


@pytest.mark.parametrize("cut", [0, 1, 8, 15, 40, -33, -1])
def test_truncated_file_fails_naming_it(tmp_path, cut):
    data = encode_mask(random_mask(0))
    path = tmp_path / "cut.mask"
    path.write_bytes(data[:cut] if cut > 0 else data[: len(data) + cut] if cut else b"")
    with pytest.raises(CorruptMask, match="cut.mask"):
        read_mask_file(path).decode()


def test_every_single_bit_flip_is_caught():
    data = encode_mask(random_mask(0))
    rng = np.random.default_rng(0)
    for pos in rng.choice(len(data), 200, replace=False):
        bad = bytearray(data)
        bad[pos] ^= 1 << int(rng.integers(8))
        with pytest.raises(CorruptMask, match="flipped.mask"):
            parse_mask(bytes(bad), "flipped.mask").decode()


def test_unknown_format_version_is_refused(tmp_path):
    data = encode_mask(random_mask(0))
    n = int.from_bytes(data[8:16], "little")
    header = json.loads(data[16 : 16 + n])
    header["format"] = 99
    head = json.dumps(header).encode()
    body = MAGIC + len(head).to_bytes(8, "little") + head + data[16 + n : -32]
    with pytest.raises(CorruptMask, match="format version 99"):
        parse_mask(body + blake3.blake3(body).digest(), "future.mask")


# --- hostile headers: each is a well-sealed file (checksum and digest right), so only validation can refuse it --


def _split(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[8:16], "little")
    return json.loads(data[16 : 16 + n]), data[16 + n : -32]


def _seal(header, payload: bytes, digest_entries=None) -> bytes:
    """A file with a correct checksum, and a correct digest wherever the header has the fields for one."""
    if isinstance(header, dict) and isinstance(header.get("tensors"), list):
        entries = header["tensors"] if digest_entries is None else digest_entries
        header = {**header, "digest": _digest(header.get("base_id", ""), entries, payload)}
    return _seal_text(json.dumps(header, sort_keys=True).encode(), payload)


def _seal_text(head: bytes, payload: bytes) -> bytes:
    body = MAGIC + len(head).to_bytes(8, "little") + head + payload
    return body + blake3.blake3(body).digest()


def _one_tensor(**entry) -> bytes:
    """A one-tensor file whose entry has `entry`'s fields replaced."""
    header, payload = _split(encode_mask(Mask(BASE_A, {"w": random_mask(0).tensors[_Q]})))
    header["tensors"][0].update(entry)
    return _seal(header, payload)


def _refused(data: bytes, match: str = "") -> str:
    with pytest.raises(CorruptMask, match="hostile.mask") as e:
        parse_mask(data, "hostile.mask").decode()
    assert match in str(e.value)
    return str(e.value)


_Q = "model.layers.0.self_attn.q_proj.weight"


@pytest.mark.parametrize("head", [b"[]", b"1", b'"x"', b"null", b"[" * 100_000 + b"]" * 100_000])
def test_a_header_that_is_not_a_json_object_is_corrupt(head):
    _refused(_seal_text(head, b""))


def test_a_deeply_nested_header_is_corrupt():
    header, payload = _split(encode_mask(random_mask(0)))
    header["training"]["deep"] = json.loads("[" * 200 + "]" * 200)
    _refused(_seal(header, payload), "nest")


def test_duplicate_json_keys_are_corrupt():
    header, payload = _split(encode_mask(random_mask(0)))
    head = json.dumps(_split(_seal(header, payload))[0], sort_keys=True)
    _refused(_seal_text(('{"format": 1, ' + head[1:]).encode(), payload), "format")


def test_format_true_is_not_format_1():
    header, payload = _split(encode_mask(random_mask(0)))
    _refused(_seal({**header, "format": True}, payload))


@pytest.mark.parametrize(
    "shape, removed",
    [
        ([2**32, 2**32], 0),  # wraps to 0 in int64
        ([2**40, 2**40], 0),
        ([2**64, 1], 0),  # beyond int64
        ([2**31, 2**31], 0),  # fits int64, beyond any weight tensor
        ([0, 16], 0),
        ([16, 0, 16], 0),
        ([-16, -16], 25),  # negative dims whose product looks right
    ],
)
def test_shapes_that_overflow_or_are_not_positive_are_corrupt(shape, removed):
    if removed:  # the real 16x16 payload
        _refused(_one_tensor(shape=shape, removed=removed), "shape")
        return
    header, _ = _split(_one_tensor(shape=shape, removed=0, length=0))
    _refused(_seal(header, b""), "shape")


@pytest.mark.parametrize("dims, as_read", [([16.0, 16], [16, 16]), (["16", 16], [16, 16]), ([True, 256], [1, 256])])
def test_dims_that_are_not_json_integers_are_corrupt(dims, as_read):
    """Sealed with the digest a lax reader computes from the dims it coerced, so only the type check can refuse."""
    header, payload = _split(_one_tensor())
    entry = header["tensors"][0]
    header["tensors"][0] = entry | {"shape": dims}
    _refused(_seal(header, payload, digest_entries=[entry | {"shape": as_read}]), "shape")


def test_duplicate_tensor_names_are_corrupt():
    header, payload = _split(_one_tensor())
    twin = dict(header["tensors"][0], offset=len(payload))
    header["tensors"].append(twin)
    _refused(_seal(header, payload + payload), "duplicate")


def test_tensors_out_of_name_order_are_corrupt():
    header, payload = _split(encode_mask(random_mask(0)))
    a, b = header["tensors"]
    chunk_a, chunk_b = payload[: a["length"]], payload[a["length"] :]
    swapped = [dict(b, offset=0), dict(a, offset=b["length"])]
    _refused(_seal({**header, "tensors": swapped}, chunk_b + chunk_a), "order")


def test_trailing_payload_bytes_are_corrupt():
    header, payload = _split(encode_mask(random_mask(0)))
    _refused(_seal(header, payload + b"\0\0\0\0"), "payload")


def test_overlapping_payload_slices_are_corrupt():
    same = random_mask(0).tensors[_Q]
    header, payload = _split(encode_mask(Mask(BASE_A, {"a": same, "b": same})))
    header["tensors"][1]["offset"] = 0  # both read the first chunk, the second chunk is left unread
    _refused(_seal(header, payload[: header["tensors"][0]["length"]]), "offset")


@pytest.mark.parametrize("offset, length", [(10**6, 0), (0, 10**6), (2**63, 2**63)])
def test_payload_slices_out_of_range_are_corrupt(offset, length):
    _refused(_one_tensor(offset=offset, length=length))


def test_more_removed_than_entries_is_corrupt():
    _refused(_one_tensor(removed=257))


def test_a_codec_other_than_the_one_the_counts_choose_is_corrupt():
    removed = random_mask(0).tensors[_Q].removed
    header, _ = _split(_one_tensor())
    payload = codec._encode_bitmap(removed, 256)  # a valid stream, but a 10% mask is always coded as gaps
    header["tensors"][0].update(codec=codec.BITMAP, length=len(payload))
    assert np.array_equal(codec._decode_bitmap(payload, 256, len(removed)), removed)
    _refused(_seal(header, payload), "codec")


@pytest.mark.parametrize("positions", [[3, 3, 7], [7, 3, 9], [-1, 3, 9], [3, 9, 256]])
def test_decoded_positions_must_be_increasing_and_in_range(monkeypatch, positions):
    """The last guard: whatever a codec returns, only sorted in-range positions become a mask."""
    data = _one_tensor()
    monkeypatch.setattr(codec, "decode", lambda *args: np.array(positions, dtype=np.int64))
    _refused(data, "position")


# --- round trips ------------------------------------------------------------------------------------------------


@st.composite
def masks(draw):
    tensors = {}
    for name in draw(st.lists(st.text(min_size=1, max_size=8), min_size=0, max_size=4, unique=True)):
        shape = tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=3)))
        size = int(np.prod(shape))
        count = draw(st.integers(0, size))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        tensors[name] = TensorMask(shape, np.sort(rng.choice(size, count, replace=False)).astype(np.int64))
    return Mask(BASE_A, tensors, {"seed": draw(st.integers(0, 9))})


@settings(max_examples=150, deadline=None, derandomize=True)
@given(masks())
def test_any_mask_round_trips_and_encodes_the_same_again(mask):
    data = encode_mask(mask)
    decoded = parse_mask(data, "x").decode()
    assert decoded.same_removals(mask)
    assert encode_mask(decoded) == data


def test_a_shape_of_many_huge_dims_is_refused_quickly():
    """Multiplying 2000 dims of 1000 digits out would take minutes; the size check stops at the first overflow."""
    header, _ = _split(_one_tensor(removed=0, length=0))
    header["tensors"][0]["shape"] = [10**1000] * 2000
    _refused(_seal(header, b""), "shape")


def test_a_header_in_utf16_is_corrupt():
    header, payload = _split(encode_mask(random_mask(0)))
    _refused(_seal_text(json.dumps(_split(_seal(header, payload))[0]).encode("utf-16"), payload))


# --- versions: files written by earlier code keep loading, and keep their digest ------------------------------

FIXTURES = Path(__file__).parents[1] / "fixtures" / "v1"
V1_DIGEST = "8cc4e84b164dee5a40533e90455af2bb251bcf3c0e238b7f4f572df529f6bf16"  # tiny.mask, written at 47e7a4e


def test_a_format_1_file_keeps_its_digest():
    mask_file = read_mask_file(FIXTURES / "tiny.mask")
    assert mask_file.digest == V1_DIGEST and mask_file.header.format == 1
    assert mask_file.decode().removed_count == 76


def test_a_format_bump_upgrades_old_files_without_changing_their_digest(monkeypatch):
    """The digest covers the version the file wrote, not the code's: format 2 reads a format 1 file as itself."""
    monkeypatch.setattr(format_module, "FORMAT_VERSION", 2)
    monkeypatch.setitem(format_module._UPGRADES, 1, lambda raw: {**raw, "format": 2})
    mask_file = read_mask_file(FIXTURES / "tiny.mask")
    assert mask_file.header.format == 2 and mask_file.digest == V1_DIGEST


def test_a_newer_format_is_refused_naming_the_file_and_the_versions_read():
    header, payload = _split((FIXTURES / "tiny.mask").read_bytes())
    with pytest.raises(CorruptMask) as e:
        parse_mask(_seal({**header, "format": 2}, payload), "future.mask")
    assert str(e.value) == "future.mask: format version 2 is newer than this maskserve reads (1); upgrade maskserve"
