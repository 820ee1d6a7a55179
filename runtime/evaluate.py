"""Exact-match accuracy of a model and its masks on a JSON-lines task, through the engine that serves them.

    problems = load_problems("eval.jsonl", tokenizer)
    scores = evaluate(engine, problems, [Subject("base", None), Subject("math:prod", "math:prod")],
                      greedy_params(tokenizer, max_new_tokens=32))
    report(scores)   # n, correct, accuracy and its 95% interval per subject; each mask's difference from the base

Contract:
- The task schema, the prompt and the exact-match rule are mask_store/tasks.py's, the ones `mask-train --eval` uses.
  Every record needs an "answer"; a record without one, or with an empty prompt, is a `DataError` naming its line.
- Generation is greedy, at most `max_new_tokens` tokens, stopping at the tokenizer's first special token; the text
  scored is what vLLM returns (what an OpenAI client of `mask-serve` receives with the same settings), so the
  accuracy served over HTTP is the accuracy reported here.
- Intervals come from mask_store/stats.py: Wilson for each accuracy, Newcombe's paired interval for a mask's
  difference from the base (both scored the same problems).

Non-goals: sampling, metrics other than exact match, loading models (the caller hands in an `Engine`).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from mask_store.stats import paired_difference, score_interval
from mask_store.tasks import DataError, answer_of, exact_match, prompt_ids, read_records


@dataclass(frozen=True)
class Problem:
    where: str  # "FILE line N"
    prompt_ids: tuple[int, ...]  # what greedy generation continues (tasks.prompt_ids)
    answer: str


@dataclass(frozen=True)
class Subject:
    label: str  # what the user named: "base", a REF or a .mask path
    ref: str | None  # the REF the engine serves; None = the model itself, no mask


@dataclass(frozen=True)
class Score:
    subject: Subject
    correct: np.ndarray  # (n,) 1.0 where the answer matched, else 0.0
    texts: tuple[str, ...]  # (n,) what the model generated

    def summary(self) -> dict:
        accuracy, interval = score_interval(self.correct)
        return {"subject": self.subject.label, "n": len(self.correct), "correct": int(self.correct.sum()),
                "exact_match": accuracy, "ci95": list(interval) if interval else None}


class Generates(Protocol):
    """What evaluation needs of `runtime.Engine`: one batch, a mask REF (or None) per prompt."""

    def generate(self, prompts: Sequence[Sequence[int]], masks: Sequence[str | None] | str | None,
                 sampling_params=None) -> list: ...


def load_problems(path: str | Path, tokenizer, limit: int | None = None) -> list[Problem]:
    """The first `limit` (default: all) records of the task as problems; every one needs an answer and a prompt."""
    problems = []
    for number, record in read_records(path)[:limit]:
        where = f"{path} line {number}"
        answer = answer_of(record)
        if answer is None:
            raise DataError(f"{where}: no \"answer\" (exact match needs one on every record)")
        ids = prompt_ids(record, tokenizer, where)
        if not ids:
            raise DataError(f"{where}: the prompt is empty; there is nothing to generate from")
        problems.append(Problem(where, tuple(ids), answer))
    return problems


def greedy_params(tokenizer, max_new_tokens: int):
    """Greedy decoding that stops at any special token (EOS, end of turn), as the trainer's evaluation does."""
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=stop_ids(tokenizer),
                          skip_special_tokens=True)


def stop_ids(tokenizer) -> list[int]:
    return sorted(set(tokenizer.all_special_ids))


def evaluate(engine: Generates, problems: Sequence[Problem], subjects: Sequence[Subject], params) -> list[Score]:
    """Each subject over every problem, one engine batch per subject."""
    prompts = [list(p.prompt_ids) for p in problems]
    scores = []
    for subject in subjects:
        outputs = engine.generate(prompts, subject.ref, sampling_params=params)
        texts = tuple(out.outputs[0].text for out in outputs)
        correct = np.array([float(exact_match(t, p.answer)) for t, p in zip(texts, problems, strict=True)])
        scores.append(Score(subject, correct, texts))
    return scores


def report(scores: Sequence[Score], base: Score | None = None) -> list[dict]:
    """One row per subject; with a base, every other subject's difference from it (95% interval)."""
    rows = []
    for score in scores:
        row = score.summary()
        if base is not None and score is not base:
            diff = paired_difference(base.correct, score.correct)  # the same problems on both sides
            row["vs_base"] = None if diff is None else {"difference": diff[0], "ci95": list(diff[1])}
        rows.append(row)
    return rows
