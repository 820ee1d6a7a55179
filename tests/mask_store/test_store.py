import dataclasses
import json

import pytest

from mask_store.errors import BaseMismatch, CorruptMask, InvalidRef, NotFound, StoreError
from mask_store.format import encode_mask, parse_mask, read_mask_file, save_mask
from mask_store.paths import cache_dir
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


def test_a_listing_reads_the_tags_once(store, files, monkeypatch):
    """On S3 reading the tags is a LIST and a GET per tag; the listing did that once per version it listed."""
    for i, path in enumerate(files):
        store.push(path, "math", tags=[f"t{i}"])
    store.push(files[0], "code", tags=["prod"])
    calls = []
    real = store.backend.tags
    monkeypatch.setattr(store.backend, "tags", lambda name=None: calls.append(name) or real(name))
    listed = {(r.name, r.version): r.tags for r in store.versions()}
    assert len(calls) == 1
    assert listed == {("math", 1): ("t0",), ("math", 2): ("t1",), ("math", 3): ("latest", "t2"),
                      ("code", 1): ("latest", "prod")}
    calls.clear()
    assert store.resolve("math:t1").tags == ("t1",) and len(calls) == 1


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


# --- blobs are checked against their digest wherever they are read (issue 10, item 12) ---------------------------


def test_a_blob_holding_another_mask_is_never_served(store, files, tmp_path):
    rec_a = store.push(files[0], "a")
    store.push(files[1], "b")
    _overwrite_blob(store, rec_a.digest, files[1].read_bytes())  # a whole, valid mask, but not a@1's
    out = tmp_path / "out.mask"
    with pytest.raises(CorruptMask, match="a@1"):
        store.pull("a", out)
    assert not out.exists()
    with pytest.raises(CorruptMask, match="a@1"):
        store.read("a")
    with pytest.raises(CorruptMask, match="a@1"):
        store.local_path(rec_a)
    problems = store.verify()
    assert len(problems) == 1 and "a@1" in problems[0]


def test_pushing_again_repairs_a_damaged_blob(store, files, tmp_path):
    rec = store.push(files[0], "a")
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    _overwrite_blob(store, rec.digest, bytes(data))
    assert store.push(files[0], "b").digest == rec.digest
    assert store.verify() == []
    store.pull("a@1", tmp_path / "out.mask")
    assert (tmp_path / "out.mask").read_bytes() == files[0].read_bytes()


def test_s3_cache_copy_is_checked_and_refilled(s3_store_uri, files):
    store = Store(s3_store_uri)
    rec = store.push(files[0], "a")
    cached = store.local_path(rec)
    cached.write_bytes(files[1].read_bytes())  # the cache now holds another mask under a@1's digest
    assert store.local_path(rec).read_bytes() == files[0].read_bytes()


def test_s3_damaged_blob_never_enters_the_cache(s3_store_uri, files, tmp_path):
    store = Store(s3_store_uri)
    fresh = tmp_path / "fresh.mask"  # a digest no other test has put in the shared cache
    save_mask(random_mask(1234), fresh)
    rec = store.push(fresh, "a")
    _overwrite_blob(store, rec.digest, files[1].read_bytes())
    with pytest.raises(CorruptMask, match="a@1"):
        store.local_path(rec)
    assert not any(p.name.startswith(rec.digest) for p in (cache_dir() / "s3-blobs").glob("*"))


# --- whatever is read from the bucket or the index is validated before use (issue 10, item 13) -----------------


def _put_raw(store, key, body: bytes):
    """Write an object behind the store's back (S3) under the store's prefix."""
    store.backend.s3.put_object(Bucket=store.backend.bucket, Key=store.backend.prefix + key, Body=body)


def _record_body(store, ref, **changes):
    record = store.resolve(ref)
    return json.dumps({**record.stored(), **changes}).encode()


def test_s3_stray_objects_are_skipped_and_reported(s3_store_uri, files, caplog):
    store = Store(s3_store_uri)
    store.push(files[0], "math", tags=["prod"])
    strays = {
        "versions/notes.json": b'{"hello": 1}',
        "versions/math/notes.json": b"not json at all",
        "versions/math/00000007.json": b"\x00\xff garbage",
        "versions/other/00000001.json": b'["a", "list"]',
        "versions/other/00000002.json": b"[" * 100_000 + b"]" * 100_000,
        "tags/readme.txt": b"hi",
        "tags/math/beta.json": b"{}",
        "tags/math/gamma.json": b'{"version": "1"}',
        "blobs/readme.txt": b"hi",
    }
    for key, body in strays.items():
        _put_raw(store, key, body)
    with caplog.at_level("WARNING"):
        assert [r.ref for r in store.versions()] == ["math@1"]
    assert "versions/notes.json" in caplog.text
    assert store.resolve("math:prod").version == 1
    assert store.push(files[1], "math").version == 8  # number 7 is taken by the garbage object
    with pytest.raises(NotFound, match="math:beta"):
        store.resolve("math:beta")
    problems = "\n".join(store.verify())
    for key in strays:
        assert key in problems
    assert store.gc(grace_s=0) == []
    assert store.backend._get(store.backend._key("blobs/readme.txt")) == b"hi"  # not ours: never deleted


def test_s3_damaged_name_record_refuses_pushes_cleanly(s3_store_uri, files):
    store = Store(s3_store_uri)
    _put_raw(store, "names/math.json", b'{"base_id": "../.."}')
    with pytest.raises(StoreError, match="names/math.json"):
        store.push(files[0], "math")
    assert any("names/math.json" in p for p in store.verify())


def test_s3_record_with_a_path_for_a_digest_is_refused(s3_store_uri, files, tmp_path):
    store = Store(s3_store_uri)
    store.push(files[0], "math")
    evil = "../../../../../escaped"
    _put_raw(store, f"blobs/{evil}.mask", files[0].read_bytes())
    _put_raw(store, "versions/evil/00000001.json", _record_body(store, "math@1", name="evil", digest=evil))
    assert [r.ref for r in store.versions()] == ["math@1"]
    with pytest.raises(NotFound, match="evil"):
        store.resolve("evil")
    assert any("versions/evil/00000001.json" in p for p in store.verify())
    assert not list(cache_dir().parent.rglob("escaped*"))


def test_s3_record_under_another_key_is_refused(s3_store_uri, files):
    store = Store(s3_store_uri)
    store.push(files[0], "math")
    _put_raw(store, "versions/math/00000002.json", _record_body(store, "math@1", version=5))
    assert [r.ref for r in store.versions()] == ["math@1"]


def test_local_index_rows_are_validated(tmp_path, files):
    store = Store(tmp_path / "store")
    rec = store.push(files[0], "math")
    row = {**rec.stored(), "training": "{}"}
    bad_rows = [{**row, "name": "evil", "digest": "../../escaped"},
                {**row, "name": "junk", "training": "not json"},
                {**row, "name": "neg", "nbytes": -1}]
    for bad in bad_rows:
        store.backend.db.execute(f"INSERT INTO versions VALUES ({', '.join('?' * len(bad))})", list(bad.values()))
    store.backend.db.execute("INSERT INTO tags VALUES ('math', 'prod', 'one')")
    (tmp_path / "store" / "blobs" / "zz").mkdir()
    (tmp_path / "store" / "blobs" / "zz" / "notes.mask").write_bytes(b"x")
    assert [r.ref for r in store.versions()] == ["math@1"]
    with pytest.raises(NotFound, match="evil"):
        store.resolve("evil")
    problems = "\n".join(store.verify())
    assert "evil@1" in problems and "junk@1" in problems and "neg@1" in problems and "math:prod" in problems
    assert "notes.mask" in problems
    assert store.gc(grace_s=0) == []


# --- one base per name, atomically; tags point at versions that exist (issue 10, item 13) -----------------------


def test_racing_first_pushes_with_different_bases(store, tmp_path):
    """Both pushes passed Store.push's check before either claimed a version: the backend refuses the second."""
    first, second = tmp_path / "a.mask", tmp_path / "b.mask"
    save_mask(random_mask(0), first)
    save_mask(random_mask(1, base_id=BASE_B), second)
    for path in (first, second):
        header = read_mask_file(path).header
        fields = {"digest": header.digest, "base_id": header.base_id, "nbytes": path.stat().st_size,
                  "removed": header.removed_count, "masked": header.masked_count, "training": header.training,
                  "created_at": header.created_at, "pushed_at": "now"}
        if path is first:
            store.backend.add_version("math", fields, path.read_bytes(), [])
        else:
            with pytest.raises(BaseMismatch):
                store.backend.add_version("math", fields, path.read_bytes(), [])
    assert [r.ref for r in store.versions()] == ["math@1"]


def test_a_name_keeps_its_base_after_its_versions_are_removed(store, tmp_path, files):
    other = tmp_path / "other.mask"
    save_mask(random_mask(5, base_id=BASE_B), other)
    store.push(files[0], "math")
    store.remove("math@1")
    with pytest.raises(BaseMismatch):
        store.push(other, "math")


def test_tagging_a_version_removed_meanwhile_leaves_no_tag(store, files):
    """`tag` resolved math@2, then `rm math@2` ran to completion, then the tag is written."""
    store.push(files[0], "math")
    store.push(files[1], "math")
    store.remove("math@2")
    with pytest.raises(NotFound, match="math@2"):
        store.backend.set_tag("math", "prod", 2)
    assert store.backend.tags("math") == {}
    with pytest.raises(NotFound, match="math:prod"):
        store.resolve("math:prod")


def test_s3_tag_pointing_at_a_missing_version(s3_store_uri, files):
    store = Store(s3_store_uri)
    store.push(files[0], "math")
    _put_raw(store, "tags/math/prod.json", b'{"version": 9}')
    with pytest.raises(NotFound, match="math:prod"):
        store.resolve("math:prod")
    assert any("math:prod" in p and "math@9" in p for p in store.verify())
