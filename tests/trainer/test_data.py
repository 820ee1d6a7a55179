"""The MFT data layer: completion-only labels, chat-template turns, collation and the exact-match rule."""

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.tiny import byte_tokenizer
from trainer.data import (
    IGNORE,
    DataError,
    collate,
    collate_prompts,
    encode_record,
    load_examples,
)

TOKENIZER = byte_tokenizer()
EOS = TOKENIZER.eos_token_id
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


def ids(s: str) -> list[int]:
    return TOKENIZER(s, add_special_tokens=False)["input_ids"]


def learned(example) -> list[int]:
    return [label for label in example.labels if label != IGNORE]


@settings(max_examples=200, deadline=None)
@given(prompt=text.filter(bool), completion=text.filter(bool))
def test_prompt_completion_labels_are_exactly_the_completion_and_eos(prompt, completion):
    example = encode_record({"prompt": prompt, "completion": completion}, TOKENIZER, 10_000, "f line 1")
    assert learned(example) == ids(completion) + [EOS]
    assert list(example.input_ids) == ids(prompt) + ids(completion) + [EOS]
    assert list(example.prompt_ids) == ids(prompt)
    assert len(example.labels) == len(example.input_ids)


@settings(max_examples=100, deadline=None)
@given(turns=st.lists(st.tuples(text, text), min_size=1, max_size=4), seq_len=st.integers(4, 400))
def test_chat_labels_cover_assistant_turns_only(turns, seq_len):
    messages = [m for user, answer in turns for m in ({"role": "user", "content": user},
                                                     {"role": "assistant", "content": answer})]
    full = encode_record({"messages": messages}, TOKENIZER, 10_000, "f line 1")
    expected = [i for _, answer in turns for i in ids(answer + "<|im_end|>\n")]
    assert learned(full) == expected
    assert TOKENIZER.decode(full.input_ids) == TOKENIZER.apply_chat_template(messages, tokenize=False)
    assert TOKENIZER.decode(full.prompt_ids) == TOKENIZER.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True)
    try:
        cut = encode_record({"messages": messages}, TOKENIZER, seq_len, "f line 1")
    except DataError:
        assert all(label == IGNORE for label in full.labels[1:seq_len])
    else:
        assert cut.input_ids == full.input_ids[:seq_len] and cut.labels == full.labels[:seq_len]


def test_an_example_cut_to_nothing_learnable_is_an_error():
    assert learned(encode_record({"prompt": "", "completion": "x"}, TOKENIZER, 2, "f line 1")) == ids("x") + [EOS]
    with pytest.raises(DataError, match="f line 1: no completion token falls within --seq-len 1"):
        encode_record({"prompt": "", "completion": "x"}, TOKENIZER, 1, "f line 1")  # position 0 is never predicted


def test_answers_become_strings_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([json.dumps({"prompt": "a", "completion": "b", "answer": 42}), "",
                               json.dumps({"prompt": "c", "completion": "d"}), ""]))
    first, second = load_examples(path, TOKENIZER, 64)
    assert (first.answer, second.answer) == ("42", None)
    assert second.where == f"{path} line 3"


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_a_file_without_examples_is_an_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match="no examples"):
        load_examples(path, TOKENIZER, 64)


def test_collate_pads_right_and_prompts_pad_left():
    a = encode_record({"prompt": "ab", "completion": "c"}, TOKENIZER, 64, "1")
    b = encode_record({"prompt": "abcd", "completion": "ef"}, TOKENIZER, 64, "2")
    batch = collate([a, b], pad_id=EOS)
    assert batch["input_ids"].shape == (2, 7)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0], [1] * 7]
    assert batch["labels"][0, 4:].tolist() == [IGNORE] * 3
    prompts = collate_prompts([a, b], pad_id=EOS)
    assert prompts["attention_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert torch.equal(prompts["input_ids"][0, 2:], torch.tensor(a.prompt_ids))
