"""The weights a mask may cover: the decoder projections of a Hugging Face Llama-family model, named once.

`model.layers.{i}.self_attn.{q,k,v,o}_proj.weight` and `model.layers.{i}.mlp.{gate,up,down}_proj.weight` (also
Mistral, Qwen2, SmolLM). The trainer picks its targets from these, the runtime maps them onto vLLM's fused layers
and checks a mask against them; embeddings, norms and the LM head are never masked. vLLM's own fused names
(`qkv_proj`, `gate_up_proj`) belong to the runtime (runtime/layout.py).
"""

import re

ATTN = ("q", "k", "v", "o")  # short names, as --modules takes them
MLP = ("gate", "up", "down")
BLOCK = {**{p: "self_attn" for p in ATTN}, **{p: "mlp" for p in MLP}}  # the submodule holding each projection
HF_PROJECTIONS = tuple(f"{p}_proj" for p in ATTN + MLP)  # module names in transformers

# A projection weight: `prefix` ends with `layers.{layer}.`, then the block and the short projection name.
WEIGHT = re.compile(
    r"(?P<prefix>(?:.*\.)?layers\.(?P<layer>\d+)\.)(?P<block>self_attn|mlp)\.(?P<proj>\w+)_proj\.weight", re.ASCII)


def weight_name(layer: int, proj: str, prefix: str = "model.") -> str:
    """The Hugging Face tensor name of short projection `proj` in decoder layer `layer`."""
    return f"{prefix}layers.{layer}.{BLOCK[proj]}.{proj}_proj.weight"
