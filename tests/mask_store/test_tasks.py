"""The task schema shared by mask-train --eval and mask-eval: the generation prompt and the exact-match rule."""

import pytest

from mask_store.tasks import DataError, exact_match, prompt_ids
from tests.tiny import byte_tokenizer

TOKENIZER = byte_tokenizer()


def test_chat_prompt_is_the_conversation_before_the_last_answer():
    messages = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
                {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    got = TOKENIZER.decode(prompt_ids({"messages": messages}, TOKENIZER, "f line 1"))
    assert got == TOKENIZER.apply_chat_template(messages[:3], tokenize=False, add_generation_prompt=True)
    assert got.endswith("2+2?<|im_end|>\n<|im_start|>assistant\n")


def test_text_prompts_tokenize_as_a_client_prompt_does():
    assert prompt_ids({"prompt": "ab", "completion": "c"}, TOKENIZER, "f") == TOKENIZER("ab")["input_ids"]
    assert prompt_ids({"prompt": "", "completion": "c"}, TOKENIZER, "f") == []


def test_chat_records_need_a_chat_template():
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(DataError, match="f line 2: the model's tokenizer has no chat template"):
        prompt_ids({"messages": [{"role": "assistant", "content": "x"}]}, tokenizer, "f line 2")


@pytest.mark.parametrize(
    "generated, answer, correct",
    [
        ("42", "42", True),
        ("The answer is 42.", "42", True),
        ("5 - 3 - 6 = -4", "-4", True),
        ("2 + 2 = 4, or 5", "4", False),  # the last number counts
        ("1,234", "1234", True),
        ("7.0", "7", True),
        ("+7", "7", True),
        ("no number here", "7", False),
        ("", "7", False),
        ("  Paris. ", "paris", True),
        ("The capital is Paris", "Paris", False),
        ("New   York", "new york", True),
    ],
)
def test_exact_match_rule(generated, answer, correct):
    assert exact_match(generated, answer) is correct
