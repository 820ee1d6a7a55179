"""Resident mask slots: fixed buffers, allocated once, that masks are written into in place.

Like vLLM's LoRA (`lora_a_stacked`: max_loras slots per layer), a model serving masks holds `max_masks` slots. Each
slot owns a pool of `slot_entries` removed weights shared by every layer (a mask that leaves most layers alone uses
only what it needs), and each layer keeps, per slot, CSR row offsets into its segment of that pool. The step's
token->slot mapping is one more persistent buffer. Nothing is ever reallocated after construction: a compiled
graph or a captured CUDA graph holds these tensors and sees every later write.

    slot s, layer l:  D_{s,l} = CSR(crow[l][s], cols[s, seg[l][s]:], vals[s, seg[l][s]:])   (out_l, in_l)

What a removed weight costs depends on who walks the pools (`Layout`): on CPU 8 bytes (int32 column + fp32 value,
what MKL's sparse product reads); on CUDA 4 bytes for a 16-bit model (int16 column where the layer's inputs fit,
value in the model's dtype, read by the Triton kernel). Plus 4 bytes per output row per slot per layer for the row
offsets.
"""

from dataclasses import dataclass

import numpy as np
import torch

from mask_store.errors import MaskError

from . import correction



@dataclass(frozen=True)
class Layout:
    """The dtypes of a slot pool: a column index and a value per removed weight."""

    index_dtype: torch.dtype
    value_dtype: torch.dtype

    @property
    def entry_bytes(self) -> int:
        return self.index_dtype.itemsize + self.value_dtype.itemsize

    @classmethod
    def for_device(cls, device: torch.device, max_in: int, model_dtype: torch.dtype) -> "Layout":
        if device.type == "cpu":
            return cls(torch.int32, torch.float32)  # MKL's sparse product
        index = torch.int16 if max_in <= torch.iinfo(torch.int16).max + 1 else torch.int32
        value = model_dtype if model_dtype.itemsize == 2 else torch.float32  # exact: the model's own values
        return cls(index, value)


CPU_LAYOUT = Layout(torch.int32, torch.float32)


class MaskTooLarge(MaskError):
    """A mask with more removed weights than one slot holds."""

    status = 422


@dataclass(frozen=True)
class SlotConfig:
    max_masks: int  # resident slots, like vLLM's max_loras
    slot_entries: int  # removed weights one slot holds, over all layers
    max_tokens: int  # rows one forward pass can carry (vLLM: max_num_batched_tokens)
    layout: Layout = CPU_LAYOUT

    @classmethod
    def from_budget(cls, max_masks: int, mask_memory_bytes: int, max_tokens: int,
                    layout: Layout = CPU_LAYOUT) -> "SlotConfig":
        """Split a byte budget evenly over `max_masks` slots."""
        return cls(max_masks, max(1, mask_memory_bytes // max_masks // layout.entry_bytes), max_tokens, layout)


class SlotTable:
    def __init__(self, layer_shapes: list[tuple[int, int]], config: SlotConfig, device: torch.device):
        s, p = config.max_masks, config.slot_entries
        self.config = config
        self.shapes = layer_shapes  # (out, in) of each masked layer on this rank
        self.token_slots = torch.full((config.max_tokens,), -1, dtype=torch.int32, device=device)  # (N,)
        self.cols = torch.zeros((s, p), dtype=config.layout.index_dtype, device=device)  # (S, P)
        self.vals = torch.zeros((s, p), dtype=config.layout.value_dtype, device=device)  # (S, P)
        self.crow = [torch.zeros((s, out + 1), dtype=torch.int32, device=device) for out, _ in layer_shapes]
        self.seg = [torch.zeros((s,), dtype=torch.int64, device=device) for _ in layer_shapes]
        self.layer_ids = [correction.new_layer_id(s) for _ in layer_shapes]
        self._host_slots = np.full(config.max_tokens, -1, dtype=np.int32)
        self._all_base = True  # the buffer holds -1 everywhere: a base-only step needs no copy

    @property
    def num_slots(self) -> int:
        return self.config.max_masks

    @property
    def entry_bytes(self) -> int:
        return self.config.layout.entry_bytes

    @property
    def slot_bytes(self) -> int:
        """Of one slot's pool."""
        return self.config.slot_entries * self.entry_bytes

    def correct(self, y: torch.Tensor, x: torch.Tensor, layer: int) -> None:
        """y (T, out) -= per row, x (T, in) @ D^T of the row's slot for layer `layer`: the op every masked layer runs."""
        torch.ops.maskserve.masked_correction(y, x, self.token_slots, self.crow[layer], self.seg[layer], self.cols,
                                              self.vals, self.layer_ids[layer])

    def check_fits(self, deltas: dict[int, torch.Tensor], what: str) -> int:
        """The entries a mask (layer index -> CSR D) needs; MaskTooLarge if one slot cannot hold them."""
        total = sum(int(d.values().numel()) for d in deltas.values())
        if total > self.config.slot_entries:
            raise MaskTooLarge(f"{what} removes {total:,} weights; a slot holds {self.config.slot_entries:,} "
                               f"(raise the mask memory or lower the number of slots)")
        return total

    def write(self, slot: int, deltas: dict[int, torch.Tensor], what: str) -> int:
        """Write one mask (layer index -> CSR D, on CPU) into `slot`, in place; returns the entries it uses."""
        total = self.check_fits(deltas, what)
        self.clear(slot)
        offset = 0
        for layer in sorted(deltas):
            d = deltas[layer]
            n = int(d.values().numel())
            self.cols[slot, offset:offset + n] = d.col_indices().to(self.cols.dtype)
            self.vals[slot, offset:offset + n] = d.values().to(self.vals.dtype)
            self.crow[layer][slot] = d.crow_indices().to(torch.int32)
            self.seg[layer][slot] = offset
            if self.config.layout == CPU_LAYOUT:  # the CPU kernel's prebuilt views
                view = correction.csr_view(self.crow[layer], self.seg[layer], self.cols, self.vals, slot,
                                           self.shapes[layer])
                correction.set_view(self.layer_ids[layer], slot, view if n else None)
            offset += n
        return total

    def clear(self, slot: int) -> None:
        for layer, crow in enumerate(self.crow):
            crow[slot].zero_()
            correction.set_view(self.layer_ids[layer], slot, None)

    def route(self, row_slots: np.ndarray) -> None:
        """Set the slot of each row of the next forward pass (-1: base); rows past the end are base."""
        if len(row_slots) > len(self._host_slots):
            raise ValueError(f"{len(row_slots)} rows in one forward pass; the slot table holds {len(self._host_slots)}")
        host = self._host_slots
        host[:] = -1
        host[: len(row_slots)] = row_slots
        self.token_slots.copy_(torch.from_numpy(host))
        self._all_base = False

    def route_base(self) -> None:
        if not self._all_base:
            self.token_slots.fill_(-1)
            self._all_base = True
