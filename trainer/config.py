"""MFTConfig: every hyper-parameter of one Mask Fine-Tuning run, frozen, with its derived values.

The CLI checks user input and builds this once (`from_args`); the training loop only reads it. `describe()` is what
goes into the mask's `training` metadata, so a mask records how it was made. What to mask (layers, modules) is not
here: it arrives as the resolved list of weight names.
"""

import argparse
import math
from dataclasses import asdict, dataclass

from .scored_linear import INITS

DTYPES = ("auto", "float32", "bfloat16")


class InvalidSetting(ValueError):
    """A setting out of its range; `field` is the MFTConfig field (mask-train's flag with dashes)."""

    def __init__(self, field: str, rule: str):
        super().__init__(f"{field} {rule}")
        self.field, self.rule = field, rule

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


@dataclass(frozen=True)
class MFTConfig:
    mask_ratio: float = 0.1  # fraction of each masked matrix removed, in (0, 1)
    init: str = "magnitude"  # first scores: "magnitude" (the L1 mask) or "random" (as the official code)
    steps: int | None = None  # optimizer steps; None: derived from `epochs`
    epochs: float | None = None  # passes over the training data when `steps` is None; None with no steps: 1
    lr: float = 1e-2  # AdamW learning rate on the (unit-scale) scores
    warmup: float = 0.1  # fraction of the steps with linear warm-up, then linear decay to 0
    weight_decay: float = 0.0  # AdamW decay on scores (the official code uses 0; decay would shrink |scores|)
    batch_size: int = 8  # examples per training micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step; the loss is averaged over all their tokens
    seq_len: int = 256  # examples are cut to this many tokens
    eval_batch_size: int = 32  # examples per forward pass when evaluating (generation gains from wide batches)
    seed: int = 0  # random init of scores and data order
    dtype: str = "auto"  # weights' dtype: auto = bfloat16 on a bf16-capable GPU, else float32
    eval_accuracy: bool = False  # require exact-match accuracy (every eval record must carry an "answer")
    max_new_tokens: int = 32  # greedy generation length for exact-match accuracy
    autocast: bool = False  # training forward passes under bf16 autocast (weights keep `dtype`); for large models
    gradient_checkpointing: bool = False  # recompute decoder activations in the backward pass: less memory, same result

    def __post_init__(self) -> None:
        """The one check of every setting: mask-train reports an InvalidSetting as the flag's error."""
        def require(ok: bool, field: str, rule: str) -> None:
            if not ok:
                raise InvalidSetting(field, f"{rule}, not {getattr(self, field)!r}")

        require(0.0 < self.mask_ratio < 1.0, "mask_ratio", "must be strictly between 0 and 1")
        require(self.init in INITS, "init", f"must be one of {', '.join(INITS)}")
        require(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")
        if self.steps is not None and self.epochs is not None:
            raise InvalidSetting("steps", "and --epochs: give one, not both")
        for name in ("batch_size", "grad_accum", "seq_len", "eval_batch_size", "max_new_tokens"):
            require(getattr(self, name) >= 1, name, "must be at least 1")
        require(self.steps is None or self.steps >= 1, "steps", "must be at least 1")
        require(self.epochs is None or (math.isfinite(self.epochs) and self.epochs > 0), "epochs", "must be positive")
        require(0.0 <= self.warmup < 1.0, "warmup", "is a fraction in [0, 1)")
        require(math.isfinite(self.lr) and self.lr > 0, "lr", "must be positive")
        require(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must not be negative")

    @property
    def examples_per_step(self) -> int:
        return self.batch_size * self.grad_accum

    def total_steps(self, n_examples: int) -> int:
        """Optimizer steps for a training set of `n_examples`: `steps`, else ceil(epochs * n / examples per step)."""
        if self.steps is not None:
            return self.steps
        epochs = 1.0 if self.epochs is None else self.epochs
        return max(1, math.ceil(epochs * n_examples / self.examples_per_step))

    def warmup_steps(self, n_examples: int) -> int:
        return round(self.warmup * self.total_steps(n_examples))

    def describe(self, n_examples: int) -> dict:
        """Every hyper-parameter, with the resolved step count and epochs, for the mask's metadata."""
        steps = self.total_steps(n_examples)
        return {**asdict(self), "steps": steps, "epochs": round(steps * self.examples_per_step / n_examples, 4)}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "MFTConfig":
        return cls(
            mask_ratio=args.mask_ratio, init=args.init, steps=args.steps, epochs=args.epochs, lr=args.lr,
            warmup=args.warmup, weight_decay=args.weight_decay, batch_size=args.batch_size,
            grad_accum=args.grad_accum, seq_len=args.seq_len, eval_batch_size=args.eval_batch_size, seed=args.seed,
            dtype=args.dtype,
            eval_accuracy=args.eval_accuracy, max_new_tokens=args.max_new_tokens, autocast=args.autocast,
            gradient_checkpointing=args.gradient_checkpointing,
        )
