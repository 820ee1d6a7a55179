"""mask-eval without vLLM: a fake engine answers from a table, so scoring, intervals, mask staging and the CLI's
refusals are checked in seconds. The served-equals-evaluated check against a real server is in
tests/serve/test_evaluation_e2e.py (slow)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from mask_store.stats import newcombe, newcombe_paired, wilson
from mask_store.store import Store
from mask_store.tasks import DataError
from runtime import eval_cli
from runtime.evaluate import Problem, Subject, evaluate, greedy_params, load_problems, report
from tests.runtime.helpers import make_mask
from tests.tiny import byte_tokenizer, make_tiny_model

TOKENIZER = byte_tokenizer()
N = 10


class FakeEngine:
    """Answers problem i correctly when i < right[ref]; records what reached it."""

    def __init__(self, right: dict, store: Store | None = None):
        self.right, self.store, self.calls = right, store, []

    def generate(self, prompts, masks, sampling_params=None):
        self.calls.append((masks, sampling_params))
        key = masks if self.store is None or masks is None else self.store.resolve(masks).digest
        texts = []
        for ids in prompts:
            i = int(TOKENIZER.decode(ids).strip("Q?"))
            texts.append(f"The answer is {i}." if i < self.right[key] else "I do not know")
        return [SimpleNamespace(outputs=[SimpleNamespace(text=t)]) for t in texts]


def problems() -> list[Problem]:
    return [Problem(f"t line {i}", tuple(TOKENIZER(f"Q{i}?")["input_ids"]), str(i)) for i in range(N)]


def test_scores_intervals_and_differences_are_the_stats_modules():
    engine = FakeEngine({None: 3, "math": 8})
    scores = evaluate(engine, problems(), [Subject("base", None), Subject("math", "math")], "params")
    base, masked = report(scores, scores[0])
    assert (base["n"], base["correct"], base["exact_match"]) == (N, 3, 0.3)
    assert base["ci95"] == pytest.approx(wilson(3, N)) and "vs_base" not in base
    assert (masked["correct"], masked["vs_base"]["difference"]) == (8, pytest.approx(0.5))
    # the same problems on both sides: the paired interval (3 right on both, 5 only with the mask, 2 on neither), which
    # is narrower than the independent samples' one
    assert masked["vs_base"]["ci95"] == pytest.approx(newcombe_paired(3, 0, 5, 2))
    paired, independent = newcombe_paired(3, 0, 5, 2), newcombe(3, N, 8, N)
    assert paired[1] - paired[0] < independent[1] - independent[0]
    assert scores[1].correct.tolist() == [1.0] * 8 + [0.0] * 2
    assert [c[0] for c in engine.calls] == [None, "math"] and all(c[1] == "params" for c in engine.calls)


def test_generation_is_greedy_and_stops_at_every_special_token():
    params = greedy_params(TOKENIZER, 17)
    assert params.temperature == 0.0 and params.max_tokens == 17 and params.skip_special_tokens
    specials = {TOKENIZER.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<|im_start|>", "<|im_end|>")}
    assert set(params.stop_token_ids) == specials


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_problems_need_answers_and_prompts(tmp_path):
    good = {"prompt": "Q1?", "completion": "1", "answer": 1}
    chat = {"messages": [{"role": "user", "content": "Q2?"}, {"role": "assistant", "content": "2"}], "answer": "2"}
    loaded = load_problems(_write(tmp_path / "a.jsonl", [good, chat, good]), TOKENIZER, limit=2)
    assert [p.answer for p in loaded] == ["1", "2"]
    assert TOKENIZER.decode(loaded[1].prompt_ids).endswith("Q2?<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(DataError, match=r"b.jsonl line 2: no \"answer\""):
        load_problems(_write(tmp_path / "b.jsonl", [good, {"prompt": "x", "completion": "y"}]), TOKENIZER)
    with pytest.raises(DataError, match="c.jsonl line 1: the prompt is empty"):
        load_problems(_write(tmp_path / "c.jsonl", [{"prompt": "", "completion": "y", "answer": "y"}]), TOKENIZER)


@pytest.fixture
def world(tiny_model, tmp_path, monkeypatch):
    """A task, a mask file, a mask pushed to a store, and mask-eval's engine replaced by the fake."""
    monkeypatch.setenv("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    data = _write(tmp_path / "task.jsonl", [{"prompt": f"Q{i}?", "completion": str(i), "answer": i} for i in range(N)])
    store = Store(tmp_path / "store")
    pushed = store.push(make_mask(tiny_model, tmp_path / "a.mask", 0.2, seed=1), "alpha", tags=["prod"])
    local = make_mask(tiny_model, tmp_path / "b.mask", 0.3, seed=2)
    digest_b = Store(tmp_path / "scratch").push(local, "b").digest
    engines = []

    def fake(model_dir, staging, args):
        engines.append(FakeEngine({None: 2, pushed.digest: 5, digest_b: 9}, staging))
        return engines[-1]

    monkeypatch.setattr(eval_cli, "open_engine", fake)
    return SimpleNamespace(data=data, store=store, local=local, model=tiny_model, engines=engines,
                           digests=(pushed.digest, digest_b))


def test_cli_evaluates_the_base_a_ref_and_a_file(world, capsys):
    argv = ["--model", str(world.model), "--data", str(world.data), "--store", world.store.uri,
            "--mask", "alpha:prod", "--mask", str(world.local), "--json"]
    assert eval_cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["problems"] == N and result["max_new_tokens"] == 32
    rows = {r["subject"]: r for r in result["results"]}
    assert [rows[s]["correct"] for s in ("base", "alpha:prod", str(world.local))] == [2, 5, 9]
    assert (rows["alpha:prod"]["digest"], rows[str(world.local)]["digest"]) == world.digests
    assert rows["alpha:prod"]["per_problem"] == [1] * 5 + [0] * 5
    assert rows[str(world.local)]["vs_base"]["ci95"] == pytest.approx(newcombe_paired(2, 0, 7, 1))


def test_cli_table_shows_counts_and_intervals(world, capsys):
    assert eval_cli.main(["--model", str(world.model), "--data", str(world.data), "--limit", "4"]) == 0
    out = capsys.readouterr().out
    lo, hi = wilson(2, 4)
    assert "4 problems" in out and f"[{lo:.1%}, {hi:.1%}]" in out and "50.0%" in out


@pytest.mark.parametrize("extra, message", [
    (["--data", "missing.jsonl"], "--data missing.jsonl: no such file"),
    (["--mask", "gone.mask"], "--mask gone.mask: no such file"),
    (["--no-base"], "--no-base with no --mask leaves nothing to evaluate"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--mask", "x", "--mask", "x"], "a --mask is given twice"),
])
def test_bad_flags_are_refused_before_anything_loads(world, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main(["--model", str(world.model), "--data", str(world.data), *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err and not world.engines


def test_a_mask_for_another_base_is_refused_before_the_engine_starts(world, tmp_path, capsys):
    other = make_mask(make_tiny_model(tmp_path / "other", seed=3), tmp_path / "other.mask")
    assert eval_cli.main(["--model", str(world.model), "--data", str(world.data), "--mask", str(other)]) == 1
    assert "was trained on base" in capsys.readouterr().err and not world.engines
    assert eval_cli.main(["--model", str(world.model), "--data", str(world.data), "--store", world.store.uri,
                          "--mask", "nosuch"]) == 1
    assert "mask-eval: error:" in capsys.readouterr().err and not world.engines
