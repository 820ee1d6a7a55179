"""Small masks for store and format tests, made without a model."""

import numpy as np

from mask_store.mask import Mask, TensorMask

BASE_A = "a" * 64
BASE_B = "b" * 64


def random_mask(seed: int = 0, base_id: str = BASE_A, ratio: float = 0.1, **training) -> Mask:
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in (("model.layers.0.mlp.up_proj.weight", (32, 16)), ("model.layers.0.self_attn.q_proj.weight", (16, 16))):
        size = int(np.prod(shape))
        tensors[name] = TensorMask(shape, np.sort(rng.choice(size, int(ratio * size), replace=False)).astype(np.int64))
    return Mask(base_id, tensors, {"method": "random", "seed": seed, **training})
