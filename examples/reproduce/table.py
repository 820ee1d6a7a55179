"""The results as Markdown tables in the paper's shape: one row per method, one column per task, every score with
its n and 95% interval, the artifact's size in bytes and the training time. Pure functions over the run's
`results.json` (see run.py), so the table can be rebuilt without a model.

Non-goals: plotting, significance tests beyond the intervals the scores carry.
"""

from collections.abc import Sequence

from mask_store.stats import paired_difference

# (row key, label) in the paper's order: the starting points, MFT on FFT and its same-size baselines, then the
# multi-task case (masks on the shared instruct base) and LoRA.
ROWS = (
    ("base", "Instruct base (no training)"),
    ("fft", "FFT (all weights)"),
    ("mft_fft", "MFT on FFT (paper)"),
    ("random_fft", "Random mask on FFT"),
    ("magnitude_fft", "Magnitude (L1) mask on FFT"),
    ("mft_base", "MFT on instruct base"),
    ("lora", "LoRA on instruct base"),
)


def cell(score: dict | None) -> str:
    """'12.0% [7.0, 19.8]' (exact match, Wilson 95% interval in points), or '-' when not measured."""
    if not score:
        return "-"
    ci = score.get("ci95")
    interval = "" if ci is None else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return f"{100 * score['exact_match']:.1f}%{interval}"


def size(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _joined(values: Sequence[str]) -> str:
    return " / ".join(values) if len(set(values)) > 1 else values[0]


def delta(a: dict | None, b: dict | None) -> str:
    """b - a in points with the paired Newcombe 95% interval, from the per-problem results of the same problems."""
    if not a or not b or "per_problem" not in a or "per_problem" not in b:
        return "-"
    import numpy as np

    diff = paired_difference(np.array(a["per_problem"], dtype=float), np.array(b["per_problem"], dtype=float))
    if diff is None:
        return "-"
    d, (lo, hi) = diff
    return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def main_table(results: dict, tasks: Sequence[str]) -> str:
    """results["rows"][key][task] = {"score": {...}, "bytes": int, "seconds": float, "note": str}."""
    n = {t: next((r[t]["score"]["n"] for r in results["rows"].values() if r.get(t, {}).get("score")), "?")
         for t in tasks}
    head = ["method", *[f"{t} exact match (n={n[t]}) [95% CI]" for t in tasks],
            f"artifact bytes ({' / '.join(tasks)})", f"train s ({' / '.join(tasks)})", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label in ROWS:
        row = results["rows"].get(key, {})
        per_task = [row.get(t, {}) for t in tasks]
        lines.append("| " + " | ".join([
            label, *[cell(p.get("score")) for p in per_task],
            _joined([size(p.get("bytes")) for p in per_task]), _joined([seconds(p.get("seconds")) for p in per_task]),
            row.get("note", ""),
        ]) + " |")
    return "\n".join(lines)


def comparison_lines(results: dict, tasks: Sequence[str]) -> str:
    """MFT on FFT, random and magnitude minus FFT, per task, with intervals: the paper's claims, checked."""
    lines = []
    for t in tasks:
        fft = results["rows"].get("fft", {}).get(t, {}).get("score")
        for key in ("mft_fft", "random_fft", "magnitude_fft"):
            other = results["rows"].get(key, {}).get(t, {}).get("score")
            lines.append(f"- {t}: {key} - fft = {delta(fft, other)} points")
    return "\n".join(lines)


def ablation_table(results: dict) -> str:
    """results["ablation"] = [{"ratio", "band", "layers", "score", "bytes", "seconds"}], with the FFT score."""
    ablation = results.get("ablation") or []
    if not ablation:
        return "(no ablation measured)"
    fft = results.get("ablation_fft")
    head = ["mask ratio", "band (layers)", f"exact match (n={ablation[0]['score']['n'] if ablation[0].get('score') else '?'})"
            " [95% CI]", "vs FFT, points [95% CI]", "mask bytes", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in ablation:
        lines.append("| " + " | ".join([f"{a['ratio']:g}", f"{a['band']} ({a['layers']})", cell(a.get("score")),
                                        delta(fft, a.get("score")), size(a.get("bytes")),
                                        seconds(a.get("seconds"))]) + " |")
    return "\n".join(lines)
