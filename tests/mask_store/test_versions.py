"""Every persisted format of mask_store reads what the previous version wrote (tests/fixtures/v1) and refuses a
newer version with one line naming the file and the versions it reads."""

import json
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest

from mask_store import identity, local, s3, versions
from mask_store.errors import MaskError, StoreError
from mask_store.store import Store

from .test_format import V1_DIGEST

FIXTURES = Path(__file__).parents[1] / "fixtures" / "v1"


def _user_version(path: Path) -> int:
    return sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]


def _set_user_version(path: Path, version: int) -> None:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {version}")
    db.close()


def test_upgrade_runs_one_step_per_version_behind():
    steps = {1: lambda v: v + ["1->2"], 2: lambda v: v + ["2->3"]}
    assert versions.upgrade([], 1, 3, steps, "f") == ["1->2", "2->3"]
    assert versions.upgrade([], 3, 3, steps, "f") == []


@pytest.mark.parametrize("version", [0, -1, "1", True, None, 1.0])
def test_a_version_maskserve_never_writes_is_refused(version):
    with pytest.raises(MaskError, match="^f: format version .* is not one maskserve writes"):
        versions.upgrade({}, version, 1, {}, "f")


# --- the local index ---------------------------------------------------------------------------------------------


@pytest.fixture
def old_local(tmp_path) -> Path:
    shutil.copytree(FIXTURES / "local-store", tmp_path / "store")
    return tmp_path / "store"


def test_a_local_store_from_before_index_versions_reads_and_is_stamped(old_local):
    assert _user_version(old_local / "index.sqlite") == 0
    store = Store(old_local)
    assert [(r.ref, r.tags) for r in store.versions()] == [("math@1", ("prod",)), ("math@2", ("latest",))]
    assert store.read("math:prod").digest == V1_DIGEST
    assert store.push(FIXTURES / "tiny.mask", "math").ref == "math@3"
    assert _user_version(old_local / "index.sqlite") == local.INDEX_VERSION == 1


def test_a_new_local_store_records_its_index_version(tmp_path):
    Store(tmp_path / "new")
    assert _user_version(tmp_path / "new" / "index.sqlite") == local.INDEX_VERSION


def test_an_older_local_index_is_upgraded_in_place(old_local, monkeypatch):
    def add_note(db):
        db.execute("ALTER TABLE versions ADD COLUMN note TEXT")
        return db

    monkeypatch.setattr(local, "INDEX_VERSION", 2)
    monkeypatch.setitem(local._UPGRADES, 1, add_note)
    store = Store(old_local)
    assert [r.ref for r in store.versions()] == ["math@1", "math@2"]
    assert _user_version(old_local / "index.sqlite") == 2
    assert "note" in [row[1] for row in store.backend.db.execute("PRAGMA table_info(versions)")]


def test_a_newer_local_index_is_refused(old_local):
    _set_user_version(old_local / "index.sqlite", 2)
    with pytest.raises(StoreError) as e:
        Store(old_local)
    assert str(e.value) == (f"{old_local / 'index.sqlite'}: format version 2 is newer than this maskserve reads (1); "
                            "upgrade maskserve")


# --- the S3 layout -----------------------------------------------------------------------------------------------


def _upload(uri: str, folder: Path) -> None:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        boto3.client("s3").put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder)}", Body=path.read_bytes())


def _format_json(store: Store):
    backend = store.backend
    body = backend._get(backend._key("format.json"))
    return None if body is None else json.loads(body)


def test_an_s3_store_from_before_format_json_reads_and_a_push_records_it(s3_store_uri):
    _upload(s3_store_uri, FIXTURES / "s3-store")
    store = Store(s3_store_uri)
    assert [(r.ref, r.tags) for r in store.versions()] == [("math@1", ("prod",)), ("math@2", ("latest",))]
    assert store.read("math:prod").digest == V1_DIGEST
    assert store.verify() == [] and _format_json(store) is None  # reading writes nothing
    assert store.push(FIXTURES / "tiny.mask", "math").ref == "math@3"
    assert _format_json(store) == {"format": s3.STORE_FORMAT} == {"format": 1}
    assert store.verify() == []


def test_an_older_s3_layout_is_upgraded_once_then_recorded(s3_store_uri, monkeypatch):
    """A made-up layout 2: its step runs on the version-1 bucket at open, then format.json says 2, so the next
    opener finds it done."""
    _upload(s3_store_uri, FIXTURES / "s3-store")
    Store(s3_store_uri).push(FIXTURES / "tiny.mask", "math")  # a format.json that says 1
    steps = []
    monkeypatch.setattr(s3, "STORE_FORMAT", 2)
    monkeypatch.setitem(s3._UPGRADES, 1, lambda backend: steps.append(backend.uri) or backend)
    store = Store(s3_store_uri)
    assert steps == [s3_store_uri] and _format_json(store) == {"format": 2}
    assert [r.ref for r in store.versions()] == ["math@1", "math@2", "math@3"]
    Store(s3_store_uri)
    assert len(steps) == 1


def test_a_newer_s3_layout_is_refused(s3_store_uri):
    _upload(s3_store_uri, FIXTURES / "s3-store")
    store = Store(s3_store_uri)
    store.backend._put(store.backend._key("format.json"), b'{"format": 2}')
    with pytest.raises(StoreError) as e:
        Store(s3_store_uri)
    assert str(e.value) == (f"{s3_store_uri}/format.json: format version 2 is newer than this maskserve reads (1); "
                            "upgrade maskserve")


@pytest.mark.parametrize("body", [b"not json", b'{"version": 1}', b"[1]"])
def test_a_damaged_s3_format_json_is_a_store_error(s3_store_uri, body):
    store = Store(s3_store_uri)
    store.backend._put(store.backend._key("format.json"), body)
    with pytest.raises(StoreError, match="format.json is damaged"):
        Store(s3_store_uri)


# --- the base-id cache -------------------------------------------------------------------------------------------


def test_a_base_id_cache_from_before_versions_reads(tmp_path):
    shutil.copy(FIXTURES / "base-ids.sqlite", tmp_path / "base-ids.sqlite")
    cache = identity._Cache(tmp_path / "base-ids.sqlite")
    found = cache.get(Path("/models/tiny/model.safetensors"), SimpleNamespace(st_size=1234, st_mtime_ns=5678))
    assert found == [identity.TensorRecord("lm_head.weight", "F32", (8, 4), "e" * 64)]
    assert _user_version(tmp_path / "base-ids.sqlite") == identity.CACHE_VERSION == 1


def test_an_older_base_id_cache_is_upgraded_in_place(tmp_path, monkeypatch):
    def add_column(db):
        db.execute(f"ALTER TABLE {_only_table(db)} ADD COLUMN seen_at REAL")
        return db

    shutil.copy(FIXTURES / "base-ids.sqlite", tmp_path / "base-ids.sqlite")
    monkeypatch.setattr(identity, "CACHE_VERSION", 2)
    monkeypatch.setitem(identity._UPGRADES, 1, add_column)
    cache = identity._Cache(tmp_path / "base-ids.sqlite")
    found = cache.get(Path("/models/tiny/model.safetensors"), SimpleNamespace(st_size=1234, st_mtime_ns=5678))
    assert found == [identity.TensorRecord("lm_head.weight", "F32", (8, 4), "e" * 64)]
    assert _user_version(tmp_path / "base-ids.sqlite") == 2


def _only_table(db) -> str:
    (name,), = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return name


def test_a_newer_base_id_cache_is_refused(tmp_path):
    shutil.copy(FIXTURES / "base-ids.sqlite", tmp_path / "base-ids.sqlite")
    _set_user_version(tmp_path / "base-ids.sqlite", 7)
    with pytest.raises(MaskError, match=r"base-ids.sqlite: format version 7 is newer than this maskserve reads \(1\)"):
        identity._Cache(tmp_path / "base-ids.sqlite")
