"""Training and evaluation data for MFT: JSON lines in, token ids with completion-only labels out.

Each non-blank line is one JSON object, one of:

    {"prompt": "What is 2 + 3?\\n", "completion": "5"}                 plain text, no template
    {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]}

optionally with "answer" (a string or number) for exact-match accuracy. Other keys are ignored.

Contract:
- prompt/completion: ids = tokenize(prompt) + tokenize(completion) + [EOS]; the loss covers the completion tokens
  and the EOS (so the model learns to stop); prompt tokens get label -100.
- messages: rendered with the tokenizer's chat template turn by turn; the loss covers the text each assistant turn
  adds (its content and the template's end-of-turn marker), nothing else. The generation prompt for accuracy is
  the conversation before the last assistant turn, with the template's generation prompt.
- Examples are cut to `seq_len` tokens from the right. An example left with nothing to learn is an error, as is any
  malformed line: a `DataError` naming the file and line number, raised before any training starts.
- Exact match (`exact_match`): the generated text (cut at the first special token) matches `answer` when the answer
  is a number and the last number in the text equals it (commas ignored; 7, 7.0 and +7 are equal); otherwise when
  both are equal after lower-casing, collapsing whitespace and dropping a trailing period.

Non-goals: packing several examples into one row, streaming files larger than memory, tokenizer training.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import torch

from mask_store.errors import MaskError

IGNORE = -100  # label of tokens outside the loss


class DataError(MaskError):
    """A data file that cannot be used: unreadable, malformed line, or an example with nothing to learn."""


@dataclass(frozen=True)
class Example:
    where: str  # "FILE line N", for error messages
    input_ids: tuple[int, ...]  # (T,) the whole example, cut to seq_len
    labels: tuple[int, ...]  # (T,) input_ids where learned, IGNORE elsewhere (the loss shifts by one)
    prompt_ids: tuple[int, ...]  # what greedy generation continues, for accuracy
    answer: str | None  # the expected answer, for exact match


def file_hash(path: str | os.PathLike) -> str:
    """BLAKE3 of the file's bytes (hex), recorded in the mask so its data is identifiable."""
    h = blake3.blake3()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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
        _check_record(record, where)
        records.append((number, record))
    if not records:
        raise DataError(f"{path}: no examples (the file has no non-blank lines)")
    return records


def _check_record(record: Any, where: str) -> None:
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


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer, messages: list[dict], generation_prompt: bool, where: str) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # jinja errors, a missing template: all mean this record cannot be rendered
        raise DataError(f"{where}: the model's chat template cannot render these messages ({e})") from e


def _extend(pieces: list[tuple[str, bool]], done: str, text: str, learned: bool, where: str) -> str:
    if not text.startswith(done):
        raise DataError(f"{where}: the chat template does not render turn by turn, so turns cannot be labelled")
    pieces.append((text[len(done) :], learned))
    return text


def _pieces_from_messages(tokenizer, messages: list[dict], where: str) -> tuple[list[tuple[str, bool]], str]:
    """The rendered conversation as (text, learned) pieces, and the generation prompt before the last answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: the model's tokenizer has no chat template; use prompt/completion records")
    pieces: list[tuple[str, bool]] = []
    done = prompt = ""
    for i, message in enumerate(messages):
        learned = message["role"] == "assistant"
        if learned:  # the template's lead-in to an answer (e.g. "<|im_start|>assistant\n") is not learned
            prompt = _render(tokenizer, messages[:i], True, where)
            done = _extend(pieces, done, prompt, False, where)
        done = _extend(pieces, done, _render(tokenizer, messages[: i + 1], False, where), learned, where)
    return pieces, prompt


def encode_record(record: dict[str, Any], tokenizer, seq_len: int, where: str) -> Example:
    """One checked record to token ids and labels (see the module docstring for the rules)."""
    if "messages" in record:
        pieces, prompt_text = _pieces_from_messages(tokenizer, record["messages"], where)
        chunks = [(_ids(tokenizer, text), learned) for text, learned in pieces]
        prompt_ids = _ids(tokenizer, prompt_text)
    else:
        prompt_ids = list(tokenizer(record["prompt"])["input_ids"]) if record["prompt"] else []
        eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        chunks = [(prompt_ids, False), (_ids(tokenizer, record["completion"]) + eos, True)]
    input_ids = [i for ids, _ in chunks for i in ids][:seq_len]
    labels = [i if learned else IGNORE for ids, learned in chunks for i in ids][:seq_len]
    if all(label == IGNORE for label in labels[1:]):  # position 0 is never predicted
        raise DataError(f"{where}: no completion token falls within --seq-len {seq_len}")
    answer = record.get("answer")
    return Example(where, tuple(input_ids), tuple(labels), tuple(prompt_ids), None if answer is None else str(answer))


def load_examples(path: str | os.PathLike, tokenizer, seq_len: int) -> list[Example]:
    return [encode_record(r, tokenizer, seq_len, f"{path} line {n}") for n, r in read_records(path)]


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask and labels, each (B, T)."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def collate_prompts(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded generation prompts: input_ids and attention_mask, each (B, P)."""
    width = max(len(e.prompt_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, P)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, P)
    for row, e in enumerate(examples):
        n = len(e.prompt_ids)
        input_ids[row, width - n :] = torch.tensor(e.prompt_ids, dtype=torch.long)
        attention_mask[row, width - n :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


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
