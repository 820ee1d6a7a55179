import dataclasses

import pytest

from mask_store.errors import BaseMismatch, CorruptMask, InvalidRef, NotFound, StoreError
from mask_store.format import encode_mask, parse_mask, read_mask_file, save_mask
from mask_store.store import Store

from .helpers import BASE_B, random_mask


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return Store(tmp_path / "store")
    return Store(request.getfixturevalue("s3_store_uri"))


@pytest.fixture
def files(tmp_path):
    out = []
    for seed in range(3):
        path = tmp_path / f"m{seed}.mask"
        save_mask(random_mask(seed), path)
        out.append(path)
    return out


def test_versions_count_up_and_latest_moves(store, files):
    a = store.push(files[0], "math")
    b = store.push(files[1], "math", tags=["prod"])
    assert (a.version, b.version) == (1, 2)
    assert store.resolve("math").version == 2
    assert store.resolve("math:latest").version == 2
    assert store.resolve("math:prod").version == 2
    assert store.resolve("math@1").digest == read_mask_file(files[0]).digest
    assert store.resolve("math@2").tags == ("latest", "prod")


def test_refs_by_digest_prefix(store, files):
    rec = store.push(files[0], "math")
    assert store.resolve(rec.digest[:12]).ref == "math@1"
    assert store.resolve(rec.digest).ref == "math@1"
    with pytest.raises(NotFound):
        store.resolve("0" * 12 if not rec.digest.startswith("0" * 12) else "f" * 12)


def test_same_mask_twice_is_stored_once(store, files):
    store.push(files[0], "a")
    store.push(files[0], "b")
    store.push(files[0], "a")
    assert len(store.backend.list_blobs()) == 1
    assert [r.ref for r in store.versions()] == ["a@1", "a@2", "b@1"]


def test_tags_move_and_untag(store, files):
    store.push(files[0], "math", tags=["prod"])
    store.push(files[1], "math")
    assert store.tag("math@2", "prod").version == 2
    assert store.resolve("math:prod").version == 2
    store.untag("math:prod")
    with pytest.raises(NotFound):
        store.resolve("math:prod")
    with pytest.raises(NotFound):
        store.untag("math:prod")
    with pytest.raises(InvalidRef, match="latest"):
        store.tag("math@1", "latest")


def test_removed_versions_never_come_back(store, files):
    store.push(files[0], "math", tags=["prod"])
    store.push(files[1], "math")
    store.remove("math@2")
    assert store.resolve("math").version == 1
    with pytest.raises(NotFound):
        store.resolve("math@2")
    assert store.push(files[2], "math").version == 3
    store.remove("math:prod")
    with pytest.raises(NotFound):
        store.resolve("math:prod")


def test_ls_filters_by_base(store, tmp_path, files):
    other = tmp_path / "other.mask"
    save_mask(random_mask(5, base_id=BASE_B), other)
    store.push(files[0], "a")
    store.push(other, "b")
    assert [r.name for r in store.versions(base_id=BASE_B)] == ["b"]
    assert len(store.versions()) == 2


def test_a_name_keeps_one_base(store, tmp_path, files):
    other = tmp_path / "other.mask"
    save_mask(random_mask(5, base_id=BASE_B), other)
    store.push(files[0], "math")
    with pytest.raises(BaseMismatch):
        store.push(other, "math")
    with pytest.raises(BaseMismatch):
        store.push(files[1], "math2", base_id=BASE_B)
    assert [r.ref for r in store.versions()] == ["math@1"]


def test_pull_writes_the_same_bytes(store, files, tmp_path):
    store.push(files[0], "math")
    store.pull("math", tmp_path / "out.mask")
    assert (tmp_path / "out.mask").read_bytes() == files[0].read_bytes()


def test_verify_finds_corruption_and_gc_removes_orphans(store, files):
    store.push(files[0], "a")
    rec_b = store.push(files[1], "b")
    assert store.verify() == []
    store.remove("b@1")
    removed = store.gc(grace_s=0)
    assert removed == [rec_b.digest]
    assert store.verify() == []
    # Damage the remaining blob behind the store's back.
    rec_a = store.resolve("a")
    data = bytearray(store.backend.read_blob(rec_a.digest))
    data[len(data) // 2] ^= 0xFF
    _overwrite_blob(store, rec_a.digest, bytes(data))
    problems = store.verify()
    assert len(problems) == 1 and "a@1" in problems[0]


def _overwrite_blob(store, digest, data):
    if hasattr(store.backend, "root"):
        path = store.backend._blob(digest)
        path.write_bytes(data)
    else:
        store.backend.s3.put_object(Bucket=store.backend.bucket, Key=store.backend._key("blobs", f"{digest}.mask"),
                                    Body=data)


def test_corrupt_file_is_refused_at_push(store, tmp_path):
    data = bytearray(encode_mask(random_mask(0)))
    data[-40] ^= 1
    bad = tmp_path / "bad.mask"
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptMask, match="bad.mask"):
        store.push(bad, "math")
    assert store.versions() == []


def test_unknown_refs_say_what_is_missing(store, files):
    store.push(files[0], "math")
    with pytest.raises(NotFound, match="nope"):
        store.resolve("nope")
    with pytest.raises(NotFound, match="math@7"):
        store.resolve("math@7")
    with pytest.raises(NotFound, match="math:gone"):
        store.resolve("math:gone")


def test_unwritable_local_store_is_a_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="not usable"):
        Store(blocker / "store")


def test_parse_digest_matches_record(store, files):
    rec = store.push(files[0], "math")
    assert parse_mask(store.backend.read_blob(rec.digest), "x").digest == rec.digest


def test_s3_gc_spares_a_blob_a_push_uploaded_after_its_listing(s3_store_uri, files):
    store = Store(s3_store_uri)
    store.push(files[0], "a")
    store.remove("a@1")  # the blob is now unreferenced
    listed = [dataclasses.replace(b, age_s=1e6) for b in store.backend.list_blobs()]  # gc's listing: old enough
    store.backend.list_blobs = lambda: listed
    store.push(files[0], "b")  # between gc's listing and its deletes: re-uploads the same blob
    assert store.backend.collect_garbage(referenced=set(), grace_s=3600) == []
    assert store.verify() == [] and store.pull("b", files[0].with_name("out.mask"))
