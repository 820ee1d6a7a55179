"""Training and evaluation data for MFT: JSON lines in, token ids with completion-only labels out.

The record schema, the generation prompt and the exact-match rule live in mask_store/tasks.py, shared with
`mask-eval`; this module turns checked records into training examples.

Contract:
- prompt/completion: ids = tokenize(prompt) + tokenize(completion) + [EOS]; the loss covers the completion tokens
  and the EOS (so the model learns to stop); prompt tokens get label -100.
- messages: rendered with the tokenizer's chat template turn by turn; the loss covers the text each assistant turn
  adds (its content and the template's end-of-turn marker), nothing else.
- `Example.prompt_ids` is `tasks.prompt_ids`: what greedy generation continues for accuracy.
- Examples are cut to `seq_len` tokens from the right. An example left with nothing to learn is an error, as is any
  malformed line: a `DataError` naming the file and line number, raised before any training starts.

Non-goals: packing several examples into one row, streaming files larger than memory, tokenizer training.
"""

import os
from dataclasses import dataclass
from typing import Any

import blake3
import torch

from mask_store.tasks import DataError, answer_of, exact_match, prompt_ids, read_records, render_chat, text_ids

__all__ = ["IGNORE", "DataError", "Example", "collate", "collate_prompts", "encode_record", "exact_match",
           "file_hash", "load_examples"]

IGNORE = -100  # label of tokens outside the loss


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


def _extend(pieces: list[tuple[str, bool]], done: str, text: str, learned: bool, where: str) -> str:
    if not text.startswith(done):
        raise DataError(f"{where}: the chat template does not render turn by turn, so turns cannot be labelled")
    pieces.append((text[len(done) :], learned))
    return text


def _pieces_from_messages(tokenizer, messages: list[dict], where: str) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, learned) pieces."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        learned = message["role"] == "assistant"
        if learned:  # the template's lead-in to an answer (e.g. "<|im_start|>assistant\n") is not learned
            done = _extend(pieces, done, render_chat(tokenizer, messages[:i], True, where), False, where)
        done = _extend(pieces, done, render_chat(tokenizer, messages[: i + 1], False, where), learned, where)
    return pieces


def encode_record(record: dict[str, Any], tokenizer, seq_len: int, where: str) -> Example:
    """One checked record to token ids and labels (see the module docstring for the rules)."""
    prompt = prompt_ids(record, tokenizer, where)
    if "messages" in record:
        chunks = [(text_ids(tokenizer, text), learned)
                  for text, learned in _pieces_from_messages(tokenizer, record["messages"], where)]
    else:
        eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        chunks = [(prompt, False), (text_ids(tokenizer, record["completion"]) + eos, True)]
    input_ids = [i for ids, _ in chunks for i in ids][:seq_len]
    labels = [i if learned else IGNORE for ids, learned in chunks for i in ids][:seq_len]
    if all(label == IGNORE for label in labels[1:]):  # position 0 is never predicted
        raise DataError(f"{where}: no completion token falls within --seq-len {seq_len}")
    return Example(where, tuple(input_ids), tuple(labels), tuple(prompt), answer_of(record))


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
