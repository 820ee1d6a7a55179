"""The A/B log: one SQLite row per experiment request, outcomes attached later, and the per-arm report.

    requests(id, experiment, arm, mask, status, latency_s, ttft_s, completion_tokens, at)
    feedback(id, score, at)        -- POST /v1/feedback {"id": response id, "score": float}

The report gives, per arm: requests, errors, mean and p95 latency, mean TTFT, tokens/s, and the mean score with a
95% confidence interval; then each arm's score difference to the first (control) arm with its interval. Scores that
are all 0 or 1 (exact match, thumbs up/down) get Wilson intervals, which stay inside [0, 1] on small counts, and
Newcombe's interval for the difference; other scores Student's t and Welch (mask_store/stats.py).

The log's layout version is SQLite's `user_version` (LOG_VERSION): a log from before it was set is version 1, an
older one is upgraded when opened, a newer one refused (mask_store/versions.py).
"""

import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mask_store import versions
from mask_store.errors import MaskError
from mask_store.stats import difference, interval_method, score_interval

LOG_VERSION = 1
# version v -> the step that turns a log of version v into v + 1.
_UPGRADES: dict = {}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT, experiment TEXT NOT NULL, arm TEXT NOT NULL, mask TEXT NOT NULL, status INTEGER NOT NULL,
    latency_s REAL NOT NULL, ttft_s REAL, completion_tokens INTEGER, at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_experiment ON requests (experiment);
CREATE INDEX IF NOT EXISTS requests_by_id ON requests (id);
CREATE TABLE IF NOT EXISTS feedback (id TEXT PRIMARY KEY, score REAL NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS experiments (name TEXT PRIMARY KEY, definition TEXT NOT NULL, at REAL NOT NULL);
"""


class ABLog:
    def __init__(self, path: str | Path, create: bool = True):
        """`create=False` for readers: a mistyped path is an error, not a new empty log."""
        if not create and not Path(path).is_file():
            raise MaskError(f"no A/B log at {path}")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            versions.open_sqlite(self.db, _SCHEMA, LOG_VERSION, _UPGRADES, str(path))
        except (OSError, sqlite3.Error) as e:
            raise MaskError(f"cannot open the A/B log {path}: {e}") from e

    def record(self, response_id: str | None, experiment: str, arm: str, mask: str, status: int,
               latency_s: float, ttft_s: float | None, completion_tokens: int | None) -> None:
        self.db.execute(
            "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (response_id, experiment, arm, mask, status, latency_s, ttft_s, completion_tokens, time.time()),
        )

    def feedback(self, response_id: str, score: float) -> bool:
        """Attach (or replace) a score; False if no experiment request has that id."""
        if self.db.execute("SELECT 1 FROM requests WHERE id=? LIMIT 1", (response_id,)).fetchone() is None:
            return False
        self.db.execute("INSERT OR REPLACE INTO feedback VALUES (?, ?, ?)", (response_id, score, time.time()))
        return True

    def close(self) -> None:
        self.db.close()

    def save_experiment(self, name: str, definition: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO experiments VALUES (?, ?, ?)", (name, definition, time.time()))

    def arms(self, experiment: str) -> list[str]:
        """Arms in the order the experiment declares them, then any others seen in the log."""
        import json

        row = self.db.execute("SELECT definition FROM experiments WHERE name=?", (experiment,)).fetchone()
        declared = [a["name"] for a in json.loads(row[0])["arms"]] if row else []
        seen = [a for (a,) in self.db.execute(
            "SELECT DISTINCT arm FROM requests WHERE experiment=? ORDER BY rowid", (experiment,))]
        return declared + [a for a in seen if a not in declared]

    def rows(self, experiment: str, arm: str) -> list[tuple]:
        return self.db.execute(
            "SELECT r.status, r.latency_s, r.ttft_s, r.completion_tokens, f.score FROM requests r "
            "LEFT JOIN feedback f ON f.id = r.id WHERE r.experiment=? AND r.arm=?",
            (experiment, arm),
        ).fetchall()


@dataclass
class ArmReport:
    arm: str
    requests: int
    errors: int
    latency_mean_s: float | None
    latency_p95_s: float | None
    ttft_mean_s: float | None
    tokens_per_s: float | None
    scored: int
    score_mean: float | None
    score_ci95: tuple[float, float] | None
    score_interval: str | None  # how score_ci95 was computed: "wilson" (0/1 scores) or "t"


def arm_report(arm: str, rows: list[tuple]) -> ArmReport:
    ok = [r for r in rows if r[0] < 400]
    latency = np.array([r[1] for r in ok])
    ttft = np.array([r[2] for r in ok if r[2] is not None])
    tokens = sum(r[3] or 0 for r in ok)
    scores = np.array([r[4] for r in rows if r[4] is not None])
    mean, ci = score_interval(scores)
    return ArmReport(
        arm=arm,
        requests=len(rows),
        errors=len(rows) - len(ok),
        latency_mean_s=float(latency.mean()) if len(latency) else None,
        latency_p95_s=float(np.percentile(latency, 95)) if len(latency) else None,
        ttft_mean_s=float(ttft.mean()) if len(ttft) else None,
        tokens_per_s=tokens / float(latency.sum()) if len(latency) and latency.sum() > 0 else None,
        scored=len(scores),
        score_mean=mean,
        score_ci95=ci,
        score_interval=interval_method(scores) if ci else None,
    )


def report(log: ABLog, experiment: str) -> dict:
    arms = log.arms(experiment)
    per_arm = {arm: log.rows(experiment, arm) for arm in arms}
    out = {"experiment": experiment, "arms": [asdict(arm_report(a, rows)) for a, rows in per_arm.items()],
           "differences": []}
    if arms:
        control = np.array([r[4] for r in per_arm[arms[0]] if r[4] is not None])
        for arm in arms[1:]:
            scores = np.array([r[4] for r in per_arm[arm] if r[4] is not None])
            d = difference(control, scores)
            out["differences"].append({"arm": arm, "vs": arms[0], "score_diff": d[0] if d else None,
                                       "ci95": d[1] if d else None,
                                       "interval": interval_method(np.concatenate([control, scores])) if d else None})
    return out


def format_report(data: dict) -> str:
    def f(x, spec=".3f"):
        return "-" if x is None else format(x, spec)

    lines = [f"experiment {data['experiment']}"]
    header = f"{'arm':<20} {'requests':>8} {'errors':>6} {'lat mean':>9} {'lat p95':>8} {'ttft':>7} " \
             f"{'tok/s':>7} {'scored':>6} {'score (95% CI)':>31}"
    lines.append(header)
    for a in data["arms"]:
        ci = a["score_ci95"]
        score = f"{f(a['score_mean'])}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}] {a['score_interval']}" if ci else "")
        lines.append(
            f"{a['arm']:<20} {a['requests']:>8} {a['errors']:>6} {f(a['latency_mean_s']):>9} "
            f"{f(a['latency_p95_s']):>8} {f(a['ttft_mean_s']):>7} {f(a['tokens_per_s'], '.1f'):>7} "
            f"{a['scored']:>6} {score:>31}"
        )
    for d in data["differences"]:
        if d["score_diff"] is None:
            lines.append(f"{d['arm']} - {d['vs']}: not enough scores for an interval")
        else:
            lo, hi = d["ci95"]
            lines.append(f"{d['arm']} - {d['vs']}: score {d['score_diff']:+.3f} "
                         f"(95% CI [{lo:+.3f}, {hi:+.3f}], {d['interval']})")
    return "\n".join(lines)
