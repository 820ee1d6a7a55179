import numpy as np
import pytest

from mask_store.errors import CorruptMask
from mask_store.format import encode_mask, load_mask, parse_mask, read_mask_file, save_mask
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
    import json

    import blake3

    from mask_store.format import MAGIC

    data = encode_mask(random_mask(0))
    n = int.from_bytes(data[8:16], "little")
    header = json.loads(data[16 : 16 + n])
    header["format"] = 99
    head = json.dumps(header).encode()
    body = MAGIC + len(head).to_bytes(8, "little") + head + data[16 + n : -32]
    with pytest.raises(CorruptMask, match="format version 99"):
        parse_mask(body + blake3.blake3(body).digest(), "future.mask")
