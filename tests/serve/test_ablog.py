import json

import numpy as np
import pytest

from serve.ablog import ABLog, report
from serve.cli import main


@pytest.fixture
def log(tmp_path):
    log = ABLog(tmp_path / "ab.sqlite")
    log.save_experiment("exp", json.dumps({"name": "exp", "arms": [{"name": "base"}, {"name": "math"}]}))
    for i in range(20):
        log.record(f"b{i}", "exp", "base", "base", 200, 1.0 + i / 100, 0.1, 10, )
        log.feedback(f"b{i}", 0.2 + (i % 2) * 0.1)
        log.record(f"m{i}", "exp", "math", "math@1", 200 if i else 500, 2.0, None, 20)
        log.feedback(f"m{i}", 0.8)
    return log


def test_report_per_arm(log):
    data = report(log, "exp")
    base, math = data["arms"]
    assert base["arm"] == "base" and base["requests"] == 20 and base["errors"] == 0
    assert base["latency_mean_s"] == pytest.approx(1.095)
    assert base["tokens_per_s"] == pytest.approx(200 / 21.9)
    assert base["score_mean"] == pytest.approx(0.25)
    lo, hi = base["score_ci95"]
    assert lo < 0.25 < hi
    assert math["errors"] == 1 and math["requests"] == 20 and math["ttft_mean_s"] is None
    (d,) = data["differences"]
    assert d["arm"] == "math" and d["score_diff"] == pytest.approx(0.55)


def test_exact_match_scores_get_intervals_inside_0_1(tmp_path):
    """A normal-approximation interval for 1 success in 5 went below 0; Wilson's and Newcombe's stay in range."""
    log = ABLog(tmp_path / "ab.sqlite")
    for i in range(5):
        for arm, hit in (("base", i == 0), ("math", True)):
            log.record(f"{arm}{i}", "exp", arm, arm, 200, 1.0, None, 1)
            log.feedback(f"{arm}{i}", float(hit))
    data = report(log, "exp")
    base, math = data["arms"]
    assert base["score_interval"] == "wilson" and 0.0 <= base["score_ci95"][0] < 0.2 < base["score_ci95"][1] < 1
    assert math["score_ci95"][1] == 1.0 and math["score_ci95"][0] < 1.0
    (d,) = data["differences"]
    assert d["interval"] == "wilson" and -1 <= d["ci95"][0] < 0.8 < d["ci95"][1] <= 1


def test_feedback_needs_a_logged_request(log):
    assert log.feedback("unknown", 1.0) is False


def test_report_command(log, tmp_path, capsys):
    assert main(["ab", "report", "exp", "--ab-db", str(tmp_path / "ab.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "experiment exp" in out and "math - base: score +0.550" in out
    assert main(["ab", "report", "exp", "--ab-db", str(tmp_path / "ab.sqlite"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["arms"][0]["arm"] == "base"
    assert main(["ab", "report", "missing", "--db", str(tmp_path / "ab.sqlite")]) == 1
    assert "missing" in capsys.readouterr().err




def test_the_server_writes_the_log_off_the_event_loop_and_in_order(tmp_path):
    """A commit on the event loop stalls every request; feedback right after its response must still find the row."""
    import asyncio
    import threading

    from serve.ablog_writer import ABLogWriter

    class Watched(ABLog):
        def record(self, *row):
            threads.append(threading.current_thread())
            super().record(*row)

    threads = []

    async def scenario():
        writer = ABLogWriter(Watched(tmp_path / "ab.sqlite"))
        for i in range(50):
            writer.record(f"r{i}", "exp", "base", "base", 200, 1.0, None, 1)
        assert await writer.feedback("r49", 1.0)  # queued behind the 50 rows, so it finds the last one
        return threading.current_thread()

    loop_thread = asyncio.run(scenario())
    assert len(threads) == 50 and loop_thread not in threads
    assert report(ABLog(tmp_path / "ab.sqlite", create=False), "exp")["arms"][0]["scored"] == 1
