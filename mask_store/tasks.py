"""JSON-lines tasks: the record schema, the prompt a model answers, and the exact-match rule.

One home for what `mask-train --eval` (trainer/) and `mask-eval` (runtime/) must agree on, so a score means the same
thing in both. Each non-blank line is one JSON object, one of:

    {"prompt": "What is 2 + 3?\\n", "completion": "5"}                 plain text, no template
    {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]}

optionally with "answer" (a string or number) for exact-match accuracy. Other keys are ignored.

Contract:
- A malformed line is a `DataError` naming the file and line number.
- The generation prompt (`prompt_ids`): for prompt/completion, the prompt tokenized as a client's text prompt is
  (with the tokenizer's special tokens, e.g. a BOS); for messages, the conversation before the last assistant turn
  rendered with the chat template and its generation prompt, tokenized without adding special tokens (as an
  OpenAI chat request is).
- Exact match (`exact_match`): the generated text (cut at the first special token) matches `answer` when the answer
  is a number and the last number in the text equals it (commas ignored; 7, 7.0 and +7 are equal); otherwise when
  both are equal after lower-casing, collapsing whitespace and dropping a trailing period.

Non-goals: tokenizing for training (trainer/data.py), generation (each caller's engine), metrics beyond exact match.
"""

import json
import os
import re
from pathlib import Path
from typing import Any

from .errors import MaskError


class DataError(MaskError):
    """A data file that cannot be used: unreadable, malformed line, or an example with nothing to learn."""


def read_records(path: str | os.PathLike) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line, each checked against the schema above."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from e
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            record = json.loads(line)
        except ValueError as e:
            raise DataError(f"{where}: not valid JSON ({e})") from e
        check_record(record, where)
        records.append((number, record))
    if not records:
        raise DataError(f"{path}: no examples (the file has no non-blank lines)")
    return records


def check_record(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    has_prompt, has_messages = "prompt" in record or "completion" in record, "messages" in record
    if has_prompt == has_messages:
        raise DataError(f"{where}: expected either \"prompt\" and \"completion\", or \"messages\"")
    if has_prompt:
        for key in ("prompt", "completion"):
            if not isinstance(record.get(key), str):
                raise DataError(f"{where}: \"{key}\" must be a string")
        if not record["completion"]:
            raise DataError(f"{where}: \"completion\" is empty")
    else:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: \"messages\" must be a non-empty list")
        for i, m in enumerate(messages):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise DataError(f"{where}: message {i} must be an object with string \"role\" and \"content\"")
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{where}: \"messages\" has no assistant turn to learn from")
    answer = record.get("answer")
    if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or answer == ""):
        raise DataError(f"{where}: \"answer\" must be a non-empty string or a number")


def text_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_chat(tokenizer, messages: list[dict], generation_prompt: bool, where: str) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: the model's tokenizer has no chat template; use prompt/completion records")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # jinja errors, a missing template: all mean this record cannot be rendered
        raise DataError(f"{where}: the model's chat template cannot render these messages ({e})") from e


def prompt_ids(record: dict[str, Any], tokenizer, where: str) -> list[int]:
    """The token ids greedy generation continues for this (checked) record; see the module docstring."""
    if "messages" in record:
        messages = record["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return text_ids(tokenizer, render_chat(tokenizer, messages[:last], True, where))
    return list(tokenizer(record["prompt"])["input_ids"]) if record["prompt"] else []


def answer_of(record: dict[str, Any]) -> str | None:
    answer = record.get("answer")
    return None if answer is None else str(answer)


_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


def _as_number(text: str) -> float | None:
    text = text.strip().replace(",", "")
    try:
        return float(text) if _NUMBER.fullmatch(text) else None
    except ValueError:
        return None


def normalize_answer(text: str) -> str:
    return " ".join(text.lower().split()).removesuffix(".").strip()


def exact_match(generated: str, answer: str) -> bool:
    """The exact-match rule of the module docstring."""
    target = _as_number(answer)
    if target is not None:
        numbers = _NUMBER.findall(generated)
        return bool(numbers) and _as_number(numbers[-1]) == target
    return normalize_answer(generated) == normalize_answer(answer)
