"""Masks for runtime tests, made with the random baseline on a tiny model."""

from pathlib import Path

from mask_store.checkpoint import tensor_shapes
from mask_store.format import save_mask
from mask_store.identity import base_id
from mask_store.mask import Mask
from trainer.baselines import random_mask
from trainer.targets import TargetSpec, select_targets


def make_mask(model_dir: Path, out: Path, ratio=0.1, layers="0-3", modules="all", seed=0) -> Path:
    shapes = tensor_shapes(model_dir)
    names = select_targets(TargetSpec.parse(layers, modules), shapes)
    mask = Mask(base_id(model_dir), random_mask({n: shapes[n] for n in names}, ratio, seed), {"method": "random"})
    save_mask(mask, out)
    return out
