"""Gather a finished run's artifacts and scores into results.json and results.md (tables from table.py).

Sizes are the bytes on disk of what a user would ship per task: the checkpoint's safetensors for the base and FFT,
the .mask file for masks, the adapter's safetensors for LoRA. Training time is the optimizer loop's seconds as
recorded by the trainer (Trainer for FFT and LoRA, the mask's own metadata for MFT); for random and magnitude masks
it is the wall time of making them. MFT on FFT also needs the FFT's time, noted in the table.

Non-goals: re-running anything; a stage that did not finish is left out of the tables ("-").
"""

import json
import platform
from pathlib import Path

from runtime.requests import vector_flags

from .budget import layer_spec
from .table import ablation_table, comparison_lines, main_table
from .tasks import TASKS


def _bytes(folder: Path, pattern: str = "*.safetensors") -> int | None:
    files = list(folder.glob(pattern)) if folder.is_dir() else []
    return sum(f.stat().st_size for f in files) if files else None


def _train_seconds(folder: Path) -> float | None:
    path = folder / "train.json"
    return json.loads(path.read_text())["seconds"] if path.exists() else None


def _mask_info(path: Path) -> tuple[int | None, float | None]:
    if not path.exists():
        return None, None
    from mask_store.format import load_mask

    training = load_mask(path).training
    return path.stat().st_size, training.get("train_seconds")


def _scores(out: Path) -> dict:
    merged: dict = {}
    for path in sorted((out / "scores").glob("*.json")):
        if path.name.endswith(".spec.json"):
            continue
        for task, subjects in json.loads(path.read_text())["results"].items():
            for label, score in subjects.items():
                merged.setdefault(task, {})[label] = score
    return merged


def collect(pipeline) -> dict:
    out, b = pipeline.out, pipeline.budget
    scores = _scores(out)
    # per-task rows: where its score comes from in scoring.py's labels, and its artifact
    rows: dict = {key: {} for key in ("base", "fft", "mft_fft", "random_fft", "magnitude_fft", "mft_base", "lora")}
    for t in TASKS:
        s = scores.get(t, {})
        fft_seconds = _train_seconds(pipeline.fft_dir(t))
        rows["base"][t] = {"score": s.get("base"), "bytes": _bytes(pipeline.base)}
        rows["fft"][t] = {"score": s.get("fft"), "bytes": _bytes(pipeline.fft_dir(t)), "seconds": fft_seconds}
        for key, name in (("mft_fft", pipeline.mft_name("fft", b.mask_ratio, b.band)), ("random_fft", "random_fft"),
                          ("magnitude_fft", "magnitude_fft"),
                          ("mft_base", pipeline.mft_name("base", b.mask_ratio, b.band))):
            size, seconds = _mask_info(pipeline.mask(t, name))
            if seconds is None:
                seconds = pipeline.times.get(f"{t}: {name}")
            rows[key][t] = {"score": s.get(key), "bytes": size, "seconds": seconds}
        lora = out / t / "lora"
        rows["lora"][t] = {"score": s.get("lora"), "bytes": _bytes(lora), "seconds": _train_seconds(lora)}
        if (lora / "train.json").exists():
            info = json.loads((lora / "train.json").read_text())
            rows["lora"]["note"] = f"rank {info['rank']}, alpha {info['alpha']}, layers {info['layers'][0]}-" \
                                   f"{info['layers'][1]}, all 7 projections"
    band = layer_spec(b.band, pipeline.n_layers)
    rows["mft_fft"]["note"] = f"+ FFT time; {b.mask_ratio:g} of layers {band}"
    rows["random_fft"]["note"] = rows["magnitude_fft"]["note"] = f"same ratio and layers; made, not trained"
    rows["mft_base"]["note"] = f"{b.mask_ratio:g} of layers {band}, all tasks share one base"
    ablation = []
    if pipeline.ablation:
        s = scores.get("math", {})
        for ratio, band_name in pipeline.ablation_masks():
            name = pipeline.mft_name("fft", ratio, band_name)
            label = "mft_fft" if (ratio, band_name) == (b.mask_ratio, b.band) else name
            size, seconds = _mask_info(pipeline.mask("math", name))
            ablation.append({"ratio": ratio, "band": band_name, "layers": layer_spec(band_name, pipeline.n_layers),
                             "score": s.get(label), "bytes": size, "seconds": seconds})
    return {"budget": json.loads((out / "budget.json").read_text()), "rows": rows, "ablation": ablation,
            "ablation_fft": scores.get("math", {}).get("fft"), "stage_seconds": pipeline.times,
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpu_flags": vector_flags(), "scoring_dtypes": _dtypes(out)}}


def _dtypes(out: Path) -> list[str]:
    """The dtypes the scoring engines ran in (the engine picks the fast one for the CPU unless told)."""
    found = {json.loads(p.read_text()).get("dtype", "unrecorded")
             for p in (out / "scores").glob("*.json") if not p.name.endswith(".spec.json")}
    return sorted(found)


def render(results: dict) -> str:
    budget = results["budget"]
    return "\n\n".join([
        "## Main table\n\nExact match on held-out problems, greedy, scored through runtime.Engine (vLLM) like "
        "mask-eval; Wilson 95% intervals in points. Scored in "
        f"{', '.join(results['machine'].get('scoring_dtypes', ['?']))} on a CPU with "
        f"{results['machine'].get('cpu_flags', '?')}.\n\n" + main_table(results, TASKS),
        "## Differences from FFT (paired Newcombe 95% intervals, points)\n\n" + comparison_lines(results, TASKS),
        "## Ablation (math, MFT on the FFT model)\n\n" + ablation_table(results),
        "## Budget\n\n```json\n" + json.dumps(budget, indent=2) + "\n```",
        "## Stage wall times (s)\n\n" + "\n".join(f"- {k}: {v}" for k, v in results["stage_seconds"].items()),
    ]) + "\n"


def write_results(out: Path, results: dict) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(render(results))
