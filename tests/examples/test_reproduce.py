"""examples/reproduce: the pure parts (split, bands, LoRA rank, tables) and the training plumbing on the tiny model.

Every training stage runs on tests/tiny.py's model with budgets of a step or two, then a rerun must skip them all.
Scoring starts vLLM engines (five of them), so the whole pipeline, scoring and tables included, is a slow test.
"""

import json

import numpy as np
import pytest

from examples.reproduce.budget import PRESETS, Budget, band_layers, layer_spec, lora_params_per_rank, lora_rank_for
from examples.reproduce.run import main
from examples.reproduce.table import ablation_table, cell, delta, main_table
from examples.reproduce.tasks import (MATH_EVAL_TEMPLATE, MATH_TRAIN_TEMPLATES, REVERSAL_INSTRUCTION,
                                      REVERSAL_TRAIN_INITIALS, build_task, split_pool)
from mask_store.format import load_mask


def _question(r: dict) -> str:
    return r["messages"][0]["content"]


def test_math_split_is_by_template_and_disjoint():
    train, held_out = build_task("math", 60, 30, seed=0)
    assert len(train) == 60 and len(held_out) == 30
    assert all(_question(r).startswith(MATH_TRAIN_TEMPLATES) for r in train)
    assert all(_question(r).startswith(MATH_EVAL_TEMPLATE) for r in held_out)
    expression = lambda r: _question(r).split(" ", 1)[1].rstrip("?.")  # noqa: E731
    assert not {expression(r) for r in train} & {expression(r) for r in held_out}


def test_reversal_split_is_by_first_word_disjoint_and_answers_are_the_reversed_list():
    train, held_out = build_task("reversal", 60, 30, seed=0)
    words = lambda r: _question(r).removeprefix(REVERSAL_INSTRUCTION).strip().split(", ")  # noqa: E731
    assert all(_question(r).startswith(REVERSAL_INSTRUCTION) for r in train + held_out)
    assert all(r["answer"] == ", ".join(reversed(words(r))) and 3 <= len(words(r)) <= 4 for r in train + held_out)
    initial = lambda r: words(r)[0][0].lower()  # noqa: E731
    assert {initial(r) for r in train} <= REVERSAL_TRAIN_INITIALS
    assert not {initial(r) for r in held_out} & REVERSAL_TRAIN_INITIALS
    assert not {r["answer"].lower() for r in train} & {r["answer"].lower() for r in held_out}
    assert len({r["answer"] for r in held_out}) == 30  # no constant answer can score


def test_split_pool_never_shares_a_key():
    items = [{"k": i % 5, "side": "train" if i % 2 else "eval"} for i in range(40)]
    train, held_out = split_pool(items, lambda x: x["side"], lambda x: x["k"], 10, 10)
    assert not {x["k"] for x in train} & {x["k"] for x in held_out}


def test_bands_on_smollm2_and_a_small_model():
    assert [layer_spec(b, 30) for b in ("early", "middle", "late")] == ["5-8", "13-16", "21-24"]
    for band in ("early", "middle", "late"):
        first, last = band_layers(band, 4)
        assert (first, last) == (0, 3)


def test_lora_rank_matches_the_target_size():
    shapes = {"q": (576, 576), "down": (576, 1536)}
    per_rank = lora_params_per_rank(shapes) * 4
    assert per_rank == (1152 + 2112) * 4
    assert lora_rank_for(5 * per_rank, shapes) == 5
    assert lora_rank_for(int(5.4 * per_rank), shapes) == 5
    assert lora_rank_for(1, shapes) == 1  # never rank 0
    with pytest.raises(ValueError):
        lora_rank_for(100, {})


def test_budget_checks_and_overrides():
    quick = PRESETS["quick"]
    assert quick.override(fft_steps=3, mft_lr=None).fft_steps == 3
    with pytest.raises(ValueError):
        quick.override(mask_ratio=1.5)
    with pytest.raises(ValueError):
        Budget(**{**quick.__dict__, "band": "top"})


def _score(correct: list[int]) -> dict:
    from mask_store.stats import score_interval

    accuracy, interval = score_interval(np.array(correct, dtype=float))
    return {"n": len(correct), "exact_match": accuracy, "ci95": list(interval), "per_problem": correct}


def test_tables_show_n_interval_bytes_and_seconds():
    fft, mft = _score([1, 0, 1, 0]), _score([1, 1, 1, 0])
    results = {"rows": {"fft": {"math": {"score": fft, "bytes": 1000, "seconds": 12.0}},
                        "mft_fft": {"math": {"score": mft, "bytes": 20, "seconds": 3.0}, "note": "x"}},
               "ablation": [{"ratio": 0.05, "band": "late", "layers": "21-24", "score": mft, "bytes": 20,
                             "seconds": 3.0}],
               "ablation_fft": fft}
    table = main_table(results, ["math"])
    assert "(n=4)" in table and "75.0% [" in table and "1,000" in table and "| 12 |" in table
    assert "| Instruct base (no training) | - | - | - |" in table  # not measured: a dash, not a zero
    assert cell(None) == "-" and delta(fft, mft).startswith("+25.0 [")
    assert "| 0.05 | late (21-24) | 75.0% [" in ablation_table(results)


def test_training_stages_on_the_tiny_model_then_a_rerun_skips_them(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model), "--out", str(out), "--train-size", "8", "--eval-size", "3", "--seq-len", "200",
            "--batch-size", "2", "--fft-steps", "1", "--mft-steps", "1", "--lora-steps", "1", "--until", "train",
            "--no-ablation"]
    assert main(argv) == 0
    for task in ("math", "reversal"):
        assert (out / task / "fft" / "config.json").exists()
        assert (out / task / "lora_merged" / "config.json").exists()
        assert (out / task / "lora" / "adapter_model.safetensors").exists()
        shapes = set()
        for name in ("mft_fft_r0.1_late", "random_fft", "magnitude_fft", "mft_base_r0.1_late"):
            training = load_mask(out / task / f"{name}.mask").training
            shapes.add((training["mask_ratio"], training["layers"], tuple(training["modules"])))
        assert len(shapes) == 1  # the baselines and both MFT masks: the same ratio, layers and projections
        info = json.loads((out / task / "lora" / "train.json").read_text())
        assert info["rank"] >= 1 and info["steps"] == 1
    capsys.readouterr()
    assert main(argv) == 0
    assert " run " not in capsys.readouterr().err  # every stage found its artifact
    assert main([*argv, "--fft-steps", "2"]) == 1  # another budget on the same folder: one clear error
    assert "another budget" in capsys.readouterr().err


def test_scores_saved_for_another_plan_are_scored_again(tiny_model, tmp_path, monkeypatch):
    """A run with --no-ablation, then one with the ablation: the saved fft_math scores lacked the ablation's masks,
    and the stage was skipped because its file existed, leaving the ablation table empty."""
    import subprocess

    from examples.reproduce import run as reproduce
    from examples.reproduce.budget import PRESETS

    scored = []

    def fake_scoring(argv, **kwargs):
        spec_path, out = argv[-2], argv[-1]
        scored.append(json.loads(open(spec_path).read()))
        open(out, "w").write('{"results": {}}')
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(reproduce.subprocess, "run", fake_scoring)
    (tmp_path / "out" / "scores").mkdir(parents=True)
    pipeline = reproduce.Pipeline(tmp_path / "out", tiny_model, PRESETS["quick"], ablation=False, eager=True)
    jobs = [{"task": "math", "data": "d", "subjects": [["fft", None]]}]
    pipeline.score("fft_math", tiny_model, jobs)
    pipeline.score("fft_math", tiny_model, jobs)  # same plan: skipped
    assert len(scored) == 1
    more = [{**jobs[0], "subjects": [["fft", None], ["mft_fft_r0.05_late", "m.mask"]]}]
    pipeline.score("fft_math", tiny_model, more)
    assert len(scored) == 2 and scored[-1]["jobs"] == more


@pytest.mark.slow
def test_the_whole_pipeline_with_the_ablation_ends_in_a_table(tiny_model, tmp_path):
    """Every stage, scoring engines and the results files included, on the tiny model: the path the fast tests stop
    before (`--until train`) and the one docs/results.md was made by."""
    out = tmp_path / "out"
    argv = ["--model", str(tiny_model), "--out", str(out), "--train-size", "8", "--eval-size", "3", "--seq-len", "200",
            "--batch-size", "2", "--fft-steps", "1", "--mft-steps", "1", "--lora-steps", "1"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    for key in ("base", "fft", "mft_fft", "random_fft", "magnitude_fft", "mft_base", "lora"):
        for task in ("math", "reversal"):
            score = results["rows"][key][task]["score"]
            assert score["n"] == 3 and len(score["per_problem"]) == 3, (key, task)
    assert len(results["ablation"]) == 5  # three ratios on the late band, then the early and middle bands at 0.1
    markdown = (out / "results.md").read_text()
    assert "## Ablation" in markdown and "paired Newcombe" in markdown
