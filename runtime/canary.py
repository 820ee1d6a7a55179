"""The start-up canary: one probe through the engine under a synthetic mask, compared with the reference path.

A vLLM upgrade that changes the internals maskserve reads (the runner's step state, how linear layers are called,
what compilation captures) must fail loudly at start, never by serving the base model to a request that asked for
a mask. Before accepting traffic, `Engine` and `mask-serve` score a fixed probe under the base and under a mask
that removes a third of the first decoder layer's projection weights, and compare both with the materialized
model in plain transformers (fp32, CPU). The mask must move the engine's log-probabilities the way it moves the
reference's: within the engine dtype's tolerance, and by far more than that tolerance.

In fp32 both must match to 2e-3. A 16-bit engine is off from the fp32 reference by its own rounding, which a mask
that removes a third of layer 0 makes larger (SmolLM2 in bf16 on CPU: 0.22 without the mask, 0.41 with it, against a
mask effect of 8.6; the tiny test Llama: 0.51 and 0.27 against 7.1): there both must match within a tenth of the
mask's effect (at least 0.5). An engine that serves the base for the mask misses by the whole effect.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mask_store.format import save_mask
from mask_store.mask import Mask, TensorMask

from .layout import ModelShape

PROBE_TOKENS = 24
TOLERANCE = {"float32": 2e-3}  # max |engine - reference| log-prob; other dtypes get DEFAULT_TOLERANCE
DEFAULT_TOLERANCE = 0.5
EFFECT_FRACTION = 0.1  # 16-bit: either probe may miss by this share of the mask's effect, if that is more


class CanaryFailed(RuntimeError):
    """The engine does not apply masks as the reference does: refuse to serve."""


@dataclass(frozen=True)
class Probe:
    token_ids: list[int]
    mask_path: Path
    digest: str


def make_probe(config, base_id: str, out_dir: Path) -> Probe:
    """A fixed prompt and a synthetic mask over layer 0 (every projection, a third of the weights removed)."""
    shape = ModelShape.from_config(config)
    rng = np.random.default_rng(0)
    tensors = {}
    for name, dims in shape.hf_shapes().items():
        if name.startswith("model.layers.0."):
            size = dims[0] * dims[1]
            tensors[name] = TensorMask(dims, np.sort(rng.choice(size, size // 3, replace=False)).astype(np.int64))
    mask = Mask(base_id, tensors, {"method": "canary"})
    path = out_dir / "canary.mask"
    digest = save_mask(mask, path)
    vocab = config.vocab_size
    token_ids = [int(t) for t in rng.integers(0, min(vocab, 256), PROBE_TOKENS)]
    return Probe(token_ids, path, digest)


def reference_logprobs(model_dir: Path, probe: Probe) -> tuple[np.ndarray, np.ndarray]:
    """(base, masked) log p(token_i | tokens_<i) of the probe from the materialized model in transformers."""
    import torch

    from mask_store.format import load_mask

    from .reference import load_model, materialize

    model, _ = load_model(model_dir)
    ids = torch.tensor([probe.token_ids])
    out = []
    for masked in (False, True):
        if masked:
            materialize(model, load_mask(probe.mask_path))
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].double()  # (T-1, vocab)
        out.append(torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0].numpy())
    return out[0], out[1]


def check(engine: tuple[np.ndarray, np.ndarray], reference: tuple[np.ndarray, np.ndarray], dtype: str) -> dict:
    """Raise CanaryFailed unless the engine's base and masked log-probs both match the reference's."""
    tol = TOLERANCE.get(dtype, DEFAULT_TOLERANCE)
    base_err = float(np.abs(engine[0] - reference[0]).max())
    mask_err = float(np.abs(engine[1] - reference[1]).max())
    effect = float(np.abs(reference[1] - reference[0]).max())
    if dtype not in TOLERANCE:  # 16-bit rounding grows with the model's sensitivity, which the effect measures
        tol = max(tol, EFFECT_FRACTION * effect)
    report = {"dtype": dtype, "tolerance": tol, "base_error": base_err, "mask_error": mask_err, "mask_effect": effect}
    if effect <= 4 * tol:
        return {**report, "skipped": "the synthetic mask moves this model too little to test at this dtype"}
    if base_err > tol or mask_err > tol:
        raise CanaryFailed(
            f"start-up canary: the engine's log-probs differ from the reference by {mask_err:.4f} under a mask "
            f"and {base_err:.4f} without (tolerance {tol:.3g}); the mask moves them by "
            f"{effect:.3f}. This vLLM build or "
            f"configuration does not apply masks correctly (maskserve reads vLLM {_vllm_version()} internals); "
            f"refusing to serve.")
    return report


def _vllm_version() -> str:
    from .vllm_compat import VLLM_VERSION

    return VLLM_VERSION
