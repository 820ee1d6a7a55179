"""Where a Hugging Face weight lives inside vLLM's fused, tensor-parallel linear layers.

A mask names Hugging Face tensors (`...self_attn.k_proj.weight`). vLLM fuses q/k/v into `qkv_proj` and gate/up into
`gate_up_proj`, and with tensor parallelism each rank holds a slice: column-parallel layers (qkv, gate_up) split
output rows, row-parallel layers (o, down) split input columns. A `Placement` says which rows and columns of the HF
tensor this rank holds and at which output row of the local fused layer they start, following vLLM's own weight
loaders (vllm/model_executor/layers/linear.py, v0.32: `QKVParallelLinear.weight_loader` takes k/v from shard
`tp_rank // num_kv_head_replicas`; `MergedColumnParallelLinear` and `RowParallelLinear` from shard `tp_rank`).

The plain-transformers layout (`hf_placement`) is the same idea with no fusing and one rank.
"""

from dataclasses import dataclass

import numpy as np

from mask_store.errors import MaskError
from mask_store.projections import WEIGHT, weight_name

VLLM_PROJECTIONS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")  # vLLM's fused layers


class IncompatibleMask(MaskError):
    """A mask whose tensors are not the served model's (names or shapes): it cannot apply, whatever its base id."""

    status = 422



@dataclass(frozen=True)
class ModelShape:
    """The few config numbers the layout depends on."""

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_layers: int

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        heads = config.num_attention_heads
        return cls(
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            num_layers=config.num_hidden_layers,
        )

    def hf_shapes(self) -> dict[str, tuple[int, int]]:
        """Every decoder projection weight a mask may name, with its (out, in) shape."""
        q, kv, hidden, inter = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, \
            self.hidden_size, self.intermediate_size
        per_layer = {"q": (q, hidden), "k": (kv, hidden), "v": (kv, hidden), "o": (hidden, q),
                     "gate": (inter, hidden), "up": (inter, hidden), "down": (hidden, inter)}
        return {weight_name(i, proj): shape for i in range(self.num_layers) for proj, shape in per_layer.items()}


def check_mask_tensors(tensors, expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Refuse a mask (its header's tensor entries: .name, .shape) that names a tensor the model lacks or a wrong shape.

    Run before any worker decodes the mask, and again in the worker: a mask that cannot apply must fail its own
    request with a clear message, never raise inside the engine or apply to the wrong rows.
    """
    for tensor in tensors:
        shape = expected.get(tensor.name)
        if shape is None:
            raise IncompatibleMask(f"{what} names {tensor.name!r}, which is not a masked projection of this model")
        if tuple(tensor.shape) != tuple(shape):
            raise IncompatibleMask(f"{what}: {tensor.name} has shape {list(tensor.shape)} in the mask, "
                                   f"{list(shape)} in the model")


@dataclass(frozen=True)
class Placement:
    """HF tensor rows [row_start, row_stop) x cols [col_start, col_stop) land in `module` at output row `dest_row`."""

    module: str
    row_start: int
    row_stop: int
    col_start: int
    col_stop: int
    dest_row: int

    def select(self, removed: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Of the HF tensor's removed flat positions, those this rank holds, and their (row, col) in the module."""
        rows, cols = np.divmod(removed, shape[1])
        if (self.row_start, self.row_stop, self.col_start, self.col_stop) == (0, shape[0], 0, shape[1]):
            return removed, rows + self.dest_row, cols  # the whole tensor (TP=1): nothing to filter
        held = (rows >= self.row_start) & (rows < self.row_stop) & (cols >= self.col_start) & (cols < self.col_stop)
        return removed[held], rows[held] - self.row_start + self.dest_row, cols[held] - self.col_start


def _split(n: int, parts: int) -> int:
    if n % parts:
        raise ValueError(f"{n} does not split evenly over {parts} ranks")
    return n // parts


def vllm_placement(name: str, shape: ModelShape, tp_rank: int = 0, tp_size: int = 1) -> Placement:
    """The placement of HF weight `name` in vLLM's Llama-family layers on rank `tp_rank` of `tp_size`."""
    m = WEIGHT.fullmatch(name)
    if m is None:
        raise ValueError(f"{name} is not a decoder projection weight")
    prefix, block, proj = m["prefix"], m["block"], m["proj"]
    hidden, inter, hd = shape.hidden_size, shape.intermediate_size, shape.head_dim
    if proj in ("q", "k", "v"):
        heads = _split(shape.num_heads, tp_size)
        if shape.num_kv_heads >= tp_size:
            kv_heads, replicas = _split(shape.num_kv_heads, tp_size), 1
        else:  # fewer kv heads than ranks: each kv head is replicated on tp_size / num_kv_heads ranks
            kv_heads, replicas = 1, _split(tp_size, shape.num_kv_heads)
        q_rows, kv_rows = heads * hd, kv_heads * hd
        if proj == "q":
            start, size, dest = tp_rank * q_rows, q_rows, 0
        else:
            start, size = (tp_rank // replicas) * kv_rows, kv_rows
            dest = q_rows if proj == "k" else q_rows + kv_rows
        return Placement(f"{prefix}self_attn.qkv_proj", start, start + size, 0, hidden, dest)
    if proj in ("gate", "up"):
        rows = _split(inter, tp_size)
        start = tp_rank * rows
        return Placement(f"{prefix}mlp.gate_up_proj", start, start + rows, 0, hidden, 0 if proj == "gate" else rows)
    if proj in ("o", "down"):
        n_in = hidden if proj == "o" else inter
        cols = _split(n_in, tp_size)
        n_out = hidden
        return Placement(f"{prefix}{block}.{proj}_proj", 0, n_out, tp_rank * cols, (tp_rank + 1) * cols, 0)
    raise ValueError(f"{name}: unknown projection {proj!r}")


def hf_placement(name: str, shape: tuple[int, int]) -> Placement:
    """Plain transformers: every projection is its own nn.Linear, whole, on one rank."""
    return Placement(name.removesuffix(".weight"), 0, shape[0], 0, shape[1], 0)
