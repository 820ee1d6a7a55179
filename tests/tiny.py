"""A tiny random Llama and a byte-level tokenizer, built offline in seconds, for tests that need a real model."""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """256 byte tokens plus <s>, </s>, <|im_start|>, <|im_end|>: any text encodes, no training data needed."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<s>", "</s>", "<|im_start|>", "<|im_end|>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(**overrides) -> LlamaConfig:
    values = dict(
        vocab_size=260, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=512, rms_norm_eps=1e-5,
        tie_word_embeddings=False, bos_token_id=256, eos_token_id=257, pad_token_id=257,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def make_tiny_model(out: Path, seed: int = 0, max_shard_size: str | None = None, **overrides) -> Path:
    """Random weights with std 0.2 so that masking 10% of a matrix visibly moves the logits."""
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    config.initializer_range = 0.2
    model = LlamaForCausalLM(config).float()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kwargs)
    byte_tokenizer().save_pretrained(out)
    return out
