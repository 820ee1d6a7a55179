import logging

import pytest

from mask_store import paths
from mask_store.paths import default_store_uri


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("MASKSERVE_STORE", raising=False)
    monkeypatch.delenv("MASK_STORE", raising=False)
    monkeypatch.setattr(paths, "_warned", set())


def test_the_store_comes_from_maskserve_store(monkeypatch, caplog):
    monkeypatch.setenv("MASKSERVE_STORE", "s3://bucket/masks")
    assert default_store_uri() == "s3://bucket/masks" and not caplog.records


def test_mask_store_still_works_with_one_deprecation_warning(monkeypatch, caplog):
    monkeypatch.setenv("MASK_STORE", "/srv/masks")
    with caplog.at_level(logging.WARNING, logger="mask_store.paths"):
        assert default_store_uri() == default_store_uri() == "/srv/masks"
    assert [r.getMessage() for r in caplog.records] == ["MASK_STORE is deprecated; set MASKSERVE_STORE instead"]


def test_the_new_name_wins(monkeypatch):
    monkeypatch.setenv("MASK_STORE", "/old")
    monkeypatch.setenv("MASKSERVE_STORE", "/new")
    assert default_store_uri() == "/new"


def test_without_either_the_store_is_in_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MASKSERVE_CACHE", str(tmp_path))
    assert default_store_uri() == str(tmp_path / "store")
