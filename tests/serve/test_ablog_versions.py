"""The A/B log reads what the previous version wrote and refuses a newer version."""

import shutil
import sqlite3
from pathlib import Path

import pytest

from mask_store.errors import MaskError
from serve import ablog
from serve.ablog import ABLog, report

FIXTURES = Path(__file__).parents[1] / "fixtures" / "v1"


def _user_version(path: Path) -> int:
    return sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0]


def test_a_log_from_before_versions_reports_and_takes_new_rows(tmp_path):
    shutil.copy(FIXTURES / "ab.sqlite", tmp_path / "ab.sqlite")
    log = ABLog(tmp_path / "ab.sqlite", create=False)
    assert _user_version(tmp_path / "ab.sqlite") == ablog.LOG_VERSION == 1
    log.record("m9", "exp", "math", "math@1", 200, 2.0, 0.2, 20)
    base, math = report(log, "exp")["arms"]
    assert (base["arm"], base["requests"], base["score_mean"]) == ("base", 4, 0.5)
    assert (math["arm"], math["requests"], math["scored"]) == ("math", 5, 4)


def test_a_new_log_records_its_version(tmp_path):
    ABLog(tmp_path / "ab.sqlite")
    assert _user_version(tmp_path / "ab.sqlite") == ablog.LOG_VERSION


def test_an_older_log_is_upgraded_in_place_and_keeps_its_rows(tmp_path, monkeypatch):
    """What the next version of the log will do: its step runs once, on the version-1 file, under the lock."""
    def add_region(db):
        db.execute("ALTER TABLE requests ADD COLUMN region TEXT")
        return db

    shutil.copy(FIXTURES / "ab.sqlite", tmp_path / "ab.sqlite")
    monkeypatch.setattr(ablog, "LOG_VERSION", 2)
    monkeypatch.setitem(ablog._UPGRADES, 1, add_region)
    log = ABLog(tmp_path / "ab.sqlite", create=False)
    assert _user_version(tmp_path / "ab.sqlite") == 2
    columns = sqlite3.connect(tmp_path / "ab.sqlite").execute("PRAGMA table_info(requests)")
    assert "region" in [row[1] for row in columns]
    assert [a["requests"] for a in report(log, "exp")["arms"]] == [4, 4]


def test_a_newer_log_is_refused(tmp_path):
    shutil.copy(FIXTURES / "ab.sqlite", tmp_path / "ab.sqlite")
    db = sqlite3.connect(tmp_path / "ab.sqlite")
    db.execute("PRAGMA user_version = 2")
    db.close()
    with pytest.raises(MaskError, match=r"ab.sqlite: format version 2 is newer than this maskserve reads \(1\)"):
        ABLog(tmp_path / "ab.sqlite", create=False)
