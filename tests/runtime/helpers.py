"""Masks for runtime tests, made with the random baseline on a tiny model."""

from pathlib import Path

from mask_store.format import save_mask
from trainer.baselines import baseline_mask


def make_mask(model_dir: Path, out: Path, ratio=0.1, layers="0-3", modules="all", seed=0) -> Path:
    save_mask(baseline_mask(model_dir, "random", layers, modules, ratio, seed), out)
    return out
