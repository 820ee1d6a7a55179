"""The plain-transformers reference: a mask applied by zeroing weights, the oracle every fast path is checked against.

`materialize` writes W * M into a model's weights; `token_logprobs` scores texts with it. `export_materialized`
saves the result as a standalone checkpoint for users who want one (`mask-export REF --model DIR --out DIR`).
`HFMaskedModel` runs the same per-request correction as the vLLM worker (slots, MaskBank, the correction op) on an
unfused transformers model, so the batching maths is tested without an engine.
"""

import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mask_store.errors import BaseMismatch, MaskError
from mask_store.format import load_mask, read_mask_file
from mask_store.identity import base_id
from mask_store.mask import Mask
from mask_store.projections import HF_PROJECTIONS

from .bank import LoadedMask, MaskBank
from .deltas import CheckpointReader, build_deltas
from .layout import hf_placement
from .masked_linear import swap_linears
from .slot_files import checked_mask
from .slots import SlotConfig, SlotTable


def load_model(model_dir: str | Path, dtype: torch.dtype = torch.float32):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    model.eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(model_dir)


@torch.no_grad()
def materialize(model: torch.nn.Module, mask: Mask) -> None:
    """Zero the removed weights in place: the model becomes the masked model."""
    params = dict(model.named_parameters())
    for name, tensor in mask.tensors.items():
        params[name].view(-1)[torch.from_numpy(tensor.removed)] = 0


@torch.no_grad()
def token_logprobs(model: torch.nn.Module, tokenizer, texts: list[str]) -> list[np.ndarray]:
    """log p(token_i | tokens_<i) for i >= 1 of each text, fp64 numpy, one forward per text."""
    out = []
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        logits = model(ids).logits[0, :-1].double()  # (T-1, vocab)
        logp = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
        out.append(logp.numpy())
    return out


def export_materialized(model_dir: str | Path, mask_path: str | Path, out_dir: str | Path) -> None:
    """Write model_dir with the mask applied to out_dir (safetensors, config, tokenizer); all or nothing."""
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MaskError(f"{out_dir} exists and is not an empty folder; export into a new one")
    mask = load_mask(mask_path)
    served = base_id(model_dir)
    if mask.base_id != served:
        raise BaseMismatch(f"mask {mask_path}", mask.base_id, served)
    model, tokenizer = load_model(model_dir)
    materialize(model, mask)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        out_dir.rmdir()  # empty, checked above
    tmp.rename(out_dir)


class HFMaskedModel:
    """A transformers model serving several masks at once, row by row, through the same bank as vLLM's worker."""

    def __init__(self, model_dir: str | Path, max_masks: int = 4, budget_bytes: int = 1 << 28, max_tokens: int = 4096):
        self.model, self.tokenizer = load_model(model_dir)
        names = [n for n, _ in self.model.named_modules() if n.rsplit(".", 1)[-1] in HF_PROJECTIONS]
        config = SlotConfig.from_budget(max_masks, budget_bytes, max_tokens)
        layers = swap_linears(self.model, names, lambda shapes: SlotTable(shapes, config, torch.device("cpu")))
        self.table = next(iter(layers.values())).table
        reader = CheckpointReader(model_dir)
        shapes = {n: (m.base.out_features, m.base.in_features) for n, m in layers.items()}
        expected = {f"{n}.weight": shape for n, shape in shapes.items()}
        served = base_id(model_dir)

        def read(path: str, digest: str) -> dict[str, torch.Tensor]:  # what a slot file holds, built in place
            return build_deltas(checked_mask(path, digest, served, expected), reader, hf_placement, shapes)

        self.bank = MaskBank(served, self.table, {n: i for i, n in enumerate(names)}, read)

    def load(self, path: str | Path, pin: bool = False, protect=(), digest: str | None = None) -> LoadedMask:
        """Load the mask file at `path`; `digest`: the mask it must hold (default: whichever it holds)."""
        return self.bank.load(path, digest or read_mask_file(path).digest, pin, protect)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, row_digests: list[str | None]) -> torch.Tensor:
        """input_ids (B, T), one mask digest (or None) per row -> logits (B, T, vocab)."""
        b, t = input_ids.shape
        slots = np.array([-1 if d is None else self.bank.slot_of(d) for d in row_digests], dtype=np.int32)
        self.table.route(np.repeat(slots, t))  # (B*T,) rows in the model's flattened order
        try:
            return self.model(input_ids).logits
        finally:
            self.table.route_base()
