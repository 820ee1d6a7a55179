"""Reproduce the MFT paper's table at small scale, offline, on SmolLM2-135M-Instruct (or any local model).

    python -m examples.reproduce --quick [--out DIR]         # 25-40 min on a 2-core CPU
    python -m examples.reproduce [--fft-steps 500 ...]        # the default, longer budget

For each task of tasks.py (math by template, word-list reversal by first word), in this order:
  data -> FFT (transformers Trainer, completion-only loss) -> on the FFT model: MFT (mask-train, 10% of a band of
  4 layers), random and magnitude masks of the same ratio and layers -> on the instruct base: MFT, and LoRA (peft)
  of the rank whose adapter is about the size of that mask, merged into a checkpoint -> the ablation (math only):
  MFT on FFT at ratios 0.05 / 0.1 / 0.2 and bands early / middle / late -> scoring through runtime.Engine
  (scoring.py: one engine per model folder) -> results.json and results.md (table.py).

Every stage writes its artifact under --out and is skipped when the artifact exists, so a rerun continues where a
stopped one ended; the budget is recorded in budget.json and another budget on the same folder is refused. Errors
print one line. Scripts that start vLLM need the `__main__` guard; run this as a module or a script.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

from .budget import BANDS, PRESETS, Budget, band_layers, layer_spec, lora_rank_for
from .tasks import TASKS, build_task, write_jsonl

ABLATION_TASK = "math"


class StageError(Exception):
    """A stage that failed; its message is the one line the user sees."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m examples.reproduce", description=__doc__.splitlines()[0])
    run = parser.add_argument_group("run")
    run.add_argument("--quick", action="store_const", dest="preset", const="quick", help="the quick preset")
    run.add_argument("--preset", choices=sorted(PRESETS), default="default", help="budget preset (default: default)")
    run.add_argument("--out", help="output folder (default: <maskserve cache>/reproduce/<preset>)")
    run.add_argument("--model", help="base model folder (default: SmolLM2-135M-Instruct, offline from PyPI)")
    run.add_argument("--until", choices=("train", "score", "table"), default="table",
                     help="stop after training, after scoring, or go through to the table (default)")
    run.add_argument("--no-ablation", action="store_true", help="skip the ratio / band ablation")
    run.add_argument("--compile", action="store_true",
                     help="let vLLM compile the model when scoring (minutes per engine on a CPU; default: eager)")
    budget = parser.add_argument_group("budget (each overrides the preset's value)")
    for f in fields(Budget):
        if f.type in (int, float, "int", "float"):
            budget.add_argument("--" + f.name.replace("_", "-"), type=int if f.type in (int, "int") else float)
    budget.add_argument("--band", choices=BANDS, help="band of the main masks")
    return parser


def budget_from_args(args: argparse.Namespace) -> Budget:
    values = {f.name: getattr(args, f.name, None) for f in fields(Budget)}
    return PRESETS[args.preset or "default"].override(**values)


class Pipeline:
    """The stages over one output folder. Each `_stage` is skipped when its artifact exists."""

    def __init__(self, out: Path, base: Path, budget: Budget, ablation: bool, eager: bool):
        from rich.console import Console

        self.out, self.base, self.budget, self.ablation, self.eager = out, base, budget, ablation, eager
        self.console = Console(stderr=True)
        self.n_layers = json.loads((base / "config.json").read_text())["num_hidden_layers"]
        self.started = time.perf_counter()
        self.times_path = out / "times.json"
        self.times = json.loads(self.times_path.read_text()) if self.times_path.exists() else {}

    # -- bookkeeping ------------------------------------------------------------------------------------------
    def _stage(self, name: str, artifact: Path, work: Callable[[], object]) -> None:
        elapsed = time.perf_counter() - self.started
        if artifact.exists():
            self.console.print(f"[dim]{elapsed:6.0f}s  skip  {name} ({artifact.relative_to(self.out)} exists)[/dim]")
            return
        self.console.print(f"[bold]{elapsed:6.0f}s  run   {name}[/bold]")
        artifact.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        try:
            work()
        except StageError:
            raise
        except Exception as e:  # any failure inside a stage: name the stage, keep the cause's one line
            raise StageError(f"{name}: {type(e).__name__}: {e}") from e
        self.times[name] = round(time.perf_counter() - started, 1)
        self.times_path.write_text(json.dumps(self.times, indent=2))

    def data(self, task: str, split: str) -> Path:
        return self.out / "data" / task / f"{split}.jsonl"

    def mask(self, task: str, name: str) -> Path:
        return self.out / task / f"{name}.mask"

    def fft_dir(self, task: str) -> Path:
        return self.out / task / "fft"

    @staticmethod
    def mft_name(on: str, ratio: float, band: str) -> str:
        return f"mft_{on}_r{ratio:g}_{band}"

    def check_budget(self) -> None:
        path = self.out / "budget.json"
        mine = {**asdict(self.budget), "model": str(self.base)}
        mine = json.loads(json.dumps(mine))  # tuples as lists, as read back
        if path.exists():
            theirs = json.loads(path.read_text())
            if theirs != mine:
                changed = sorted(k for k in mine if theirs.get(k) != mine[k])
                raise StageError(f"{self.out} was made with another budget ({', '.join(changed)} differ): "
                                 f"use another --out or the same flags")
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(mine, indent=2))

    # -- stages -----------------------------------------------------------------------------------------------
    def make_data(self, task: str) -> None:
        def work():
            train, held_out = build_task(task, self.budget.train_size, self.budget.eval_size, self.budget.seed)
            write_jsonl(self.data(task, "eval"), held_out)
            write_jsonl(self.data(task, "train"), train)
        self.data(task, "eval").parent.mkdir(parents=True, exist_ok=True)
        self._stage(f"{task}: data", self.data(task, "train"), work)

    def fft(self, task: str) -> None:
        from .finetune import full_finetune

        b = self.budget
        self._stage(f"{task}: FFT", self.fft_dir(task), lambda: full_finetune(
            self.base, self.data(task, "train"), self.fft_dir(task), steps=b.fft_steps, lr=b.fft_lr,
            batch_size=b.batch_size, seq_len=b.seq_len, seed=b.seed))

    def mask_train(self, task: str, model: Path, name: str, method: str, ratio: float, band: str) -> None:
        from trainer.cli import main as mask_train

        b = self.budget
        argv = ["--model", str(model), "--method", method, "--layers", layer_spec(band, self.n_layers),
                "--mask-ratio", str(ratio), "--seed", str(b.seed), "--out", str(self.mask(task, name))]
        if method == "mft":
            argv += ["--data", str(self.data(task, "train")), "--steps", str(b.mft_steps), "--lr", str(b.mft_lr),
                     "--batch-size", str(b.batch_size), "--seq-len", str(b.seq_len)]

        def work():
            if mask_train(argv) != 0:
                raise StageError(f"{task}: {name}: mask-train {' '.join(argv)} failed (its error is above)")
        self._stage(f"{task}: {name}", self.mask(task, name), work)

    def lora(self, task: str) -> None:
        from mask_store.checkpoint import tensor_shapes
        from trainer.targets import TargetSpec, select_targets

        from .finetune import lora_finetune

        b = self.budget
        layers = layer_spec(b.band, self.n_layers)
        shapes = tensor_shapes(self.base)
        names = select_targets(TargetSpec.parse(layers, "all"), shapes)
        target = self.mask(task, self.mft_name("base", b.mask_ratio, b.band)).stat().st_size
        rank = lora_rank_for(target, {n: shapes[n] for n in names})
        self._stage(f"{task}: LoRA r={rank}", self.out / task / "lora", lambda: lora_finetune(
            self.base, self.data(task, "train"), self.out / task / "lora", self.out / task / "lora_merged",
            rank=rank, layers=band_layers(b.band, self.n_layers), steps=b.lora_steps, lr=b.lora_lr,
            batch_size=b.batch_size, seq_len=b.seq_len, seed=b.seed))

    def ablation_masks(self) -> list[tuple[float, str]]:
        b = self.budget
        pairs = [(r, b.band) for r in b.ablation_ratios] + [(b.mask_ratio, band) for band in b.ablation_bands]
        return list(dict.fromkeys(pairs))  # the main (ratio, band) appears in both lists: train it once

    def score(self, key: str, model: Path, jobs: list[dict]) -> None:
        spec = {"model": str(model), "max_new_tokens": self.budget.max_new_tokens, "eager": self.eager, "jobs": jobs}
        spec_path, out = self.out / "scores" / f"{key}.spec.json", self.out / "scores" / f"{key}.json"
        if out.exists() and (not spec_path.exists() or json.loads(spec_path.read_text()) != spec):
            # scored for other subjects (a run without the ablation, say): its file would hide the missing scores
            self.console.print(f"[yellow]score {key}: the saved scores are for another plan; scoring again[/yellow]")
            out.unlink()

        def work():
            spec_path.write_text(json.dumps(spec, indent=2))
            log = self.out / "scores" / f"{key}.log"
            with open(log, "w") as f:
                done = subprocess.run([sys.executable, "-m", "examples.reproduce.scoring", str(spec_path), str(out)],
                                      stdout=f, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2])
            if done.returncode != 0:
                tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
                raise StageError(f"scoring {key} failed ({tail[0][:300]}); full log: {log}")
        self._stage(f"score {key}", out, work)

    def scoring_plan(self) -> dict[str, tuple[Path, list[dict]]]:
        b = self.budget
        main_mft = {on: self.mft_name(on, b.mask_ratio, b.band) for on in ("fft", "base")}
        plan: dict[str, tuple[Path, list[dict]]] = {"base": (self.base, [
            {"task": t, "data": str(self.data(t, "eval")),
             "subjects": [["base", None], ["mft_base", str(self.mask(t, main_mft["base"]))]]} for t in TASKS])}
        for t in TASKS:
            subjects = [["fft", None], ["mft_fft", str(self.mask(t, main_mft["fft"]))],
                        ["random_fft", str(self.mask(t, "random_fft"))],
                        ["magnitude_fft", str(self.mask(t, "magnitude_fft"))]]
            if self.ablation and t == ABLATION_TASK:
                for ratio, band in self.ablation_masks():
                    name = self.mft_name("fft", ratio, band)
                    if name != main_mft["fft"]:
                        subjects.append([name, str(self.mask(t, name))])
            plan[f"fft_{t}"] = (self.fft_dir(t), [{"task": t, "data": str(self.data(t, "eval")), "subjects": subjects}])
            plan[f"lora_{t}"] = (self.out / t / "lora_merged",
                                 [{"task": t, "data": str(self.data(t, "eval")), "subjects": [["lora", None]]}])
        return plan

    def run(self, until: str) -> None:
        b = self.budget
        self.check_budget()
        for t in TASKS:
            self.make_data(t)
        for t in TASKS:
            self.fft(t)
            main = self.mft_name("fft", b.mask_ratio, b.band)
            self.mask_train(t, self.fft_dir(t), main, "mft", b.mask_ratio, b.band)
            for method in ("random", "magnitude"):
                self.mask_train(t, self.fft_dir(t), f"{method}_fft", method, b.mask_ratio, b.band)
        for t in TASKS:
            self.mask_train(t, self.base, self.mft_name("base", b.mask_ratio, b.band), "mft", b.mask_ratio, b.band)
            self.lora(t)
        if self.ablation:
            for ratio, band in self.ablation_masks():
                self.mask_train(ABLATION_TASK, self.fft_dir(ABLATION_TASK), self.mft_name("fft", ratio, band), "mft",
                                ratio, band)
        if until == "train":
            return
        for key, (model, jobs) in self.scoring_plan().items():
            self.score(key, model, jobs)
        if until == "score":
            return
        from .results import collect, write_results

        write_results(self.out, collect(self))
        self.console.print(f"[bold green]done in {time.perf_counter() - self.started:.0f}s: "
                           f"{self.out / 'results.md'}[/bold green]")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        budget = budget_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        from mask_store.default_model import default_model_dir
        from mask_store.paths import cache_dir

        base = Path(args.model) if args.model else default_model_dir()
        if not (base / "config.json").is_file():
            raise StageError(f"--model {base}: not a Hugging Face model folder (no config.json)")
        out = Path(args.out) if args.out else cache_dir() / "reproduce" / (args.preset or "default")
        Pipeline(out.resolve(), base.resolve(), budget, not args.no_ablation, not args.compile).run(args.until)
    except KeyboardInterrupt:
        print("reproduce: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    except Exception as e:  # StageError, MaskError and anything unforeseen: one line, not a traceback
        print(f"reproduce: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
