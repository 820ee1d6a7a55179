"""Budgets for the reproduction: every knob of one run, frozen, with named presets; the layer bands; LoRA's rank.

`PRESETS["quick"]` is sized for a 2-core CPU shared with other work (the whole pipeline in 25-40 minutes);
`PRESETS["default"]` is the longer run (hours on that CPU, minutes on a GPU). Flags override single fields.

Non-goals: choosing hyper-parameters by search; anything that touches a model.
"""

from dataclasses import dataclass, fields, replace

BAND_WIDTH = 4  # the paper masks a band of 4 consecutive decoder layers
BANDS = ("early", "middle", "late")


@dataclass(frozen=True)
class Budget:
    train_size: int  # training problems per task
    eval_size: int  # held-out problems per task (the n of every score)
    seq_len: int  # training examples are cut to this many tokens
    batch_size: int  # examples per optimizer step, for every method
    fft_steps: int  # full fine-tuning: optimizer steps
    fft_lr: float  # full fine-tuning: AdamW learning rate
    mft_steps: int  # MFT (mask-train --method mft): optimizer steps on the scores
    mft_lr: float  # MFT: AdamW learning rate on the scores
    lora_steps: int  # LoRA: optimizer steps
    lora_lr: float  # LoRA: AdamW learning rate
    max_new_tokens: int  # greedy generation length when scoring
    mask_ratio: float = 0.1  # fraction of each masked matrix removed (the paper's 10%)
    band: str = "late"  # which band of 4 layers the main masks cover: early, middle or late
    ablation_ratios: tuple[float, ...] = (0.05, 0.1, 0.2)  # ratios tried on the ablation task, at `band`
    ablation_bands: tuple[str, ...] = ("early", "middle", "late")  # bands tried on the ablation task, at `mask_ratio`
    seed: int = 0  # data, score init and training order

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and f.name != "seed" and value <= 0:
                raise ValueError(f"{f.name} must be positive, not {value}")
        for ratio in (self.mask_ratio, *self.ablation_ratios):
            if not 0.0 < ratio < 1.0:
                raise ValueError(f"mask ratios must be in (0, 1), not {ratio}")
        for band in (self.band, *self.ablation_bands):
            if band not in BANDS:
                raise ValueError(f"band must be one of {BANDS}, not {band!r}")

    def override(self, **values) -> "Budget":
        """A copy with the given fields replaced (None values are ignored: an unset flag)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


PRESETS: dict[str, Budget] = {
    # 25-40 min on a 2-core CPU: short sequences, tens of steps, 150 held-out problems per task.
    "quick": Budget(train_size=480, eval_size=150, seq_len=64, batch_size=8, fft_steps=60, fft_lr=5e-5,
                    mft_steps=40, mft_lr=1e-2, lora_steps=60, lora_lr=1e-3, max_new_tokens=12),
    # The longer run: ~2 epochs over 4000 problems per method, 500 held-out problems (intervals of about +-4 points).
    "default": Budget(train_size=4000, eval_size=500, seq_len=128, batch_size=16, fft_steps=500, fft_lr=3e-5,
                      mft_steps=500, mft_lr=1e-2, lora_steps=500, lora_lr=5e-4, max_new_tokens=24),
}


def band_layers(band: str, n_layers: int, width: int = BAND_WIDTH) -> tuple[int, int]:
    """The inclusive layer range of a named band of `width` layers: early starts a sixth of the way in, middle is
    centred, late ends a sixth from the top (SmolLM2-135M, 30 layers: 5-8, 13-16, 21-24)."""
    width = min(width, n_layers)
    start = {"early": n_layers // 6, "middle": (n_layers - width) // 2,
             "late": n_layers - n_layers // 6 - width}[band]
    start = max(0, min(start, n_layers - width))
    return start, start + width - 1


def layer_spec(band: str, n_layers: int) -> str:
    """The band as mask-train's --layers value, e.g. "21-24"."""
    first, last = band_layers(band, n_layers)
    return f"{first}-{last}"


def lora_params_per_rank(shapes: dict[str, tuple[int, int]]) -> int:
    """LoRA adds A (r x in) and B (out x r) to each (out, in) matrix: (in + out) parameters per unit of rank."""
    return sum(out_features + in_features for out_features, in_features in shapes.values())


def lora_rank_for(target_bytes: int, shapes: dict[str, tuple[int, int]], bytes_per_param: int = 4) -> int:
    """The rank whose adapter over `shapes` is closest to `target_bytes` (at least 1)."""
    per_rank = lora_params_per_rank(shapes) * bytes_per_param
    if per_rank <= 0:
        raise ValueError("no matrices to adapt")
    return max(1, round(target_bytes / per_rank))
