"""`load_format="maskserve"`: vLLM's own model loader, then mask slots installed before anything compiles the model.

vLLM compiles (CPU) or captures (CUDA) the model during start-up, before any `collective_rpc` reaches a worker, so
the masked layers must exist when the model is loaded. This loader, registered through vLLM's public
`register_model_loader`, wraps whichever loader the user chose (`model_loader_extra_config["maskserve"]
["load_format"]`, default "auto"), then, with the slot settings from `additional_config["maskserve"]`:
- allocates one SlotTable for the model (slots, pools, the token->slot buffer: never reallocated);
- wraps the `quant_method` of every fused projection in `MaskedApply` (masked_linear.py);
- registers a forward pre-hook on the model module that fills the token->slot buffer each step, outside the
  compiled region. Until the worker extension binds it to the runner (worker.py), every row is the base model.

The module is imported in each worker process when vLLM resolves `worker_extension_cls` (runtime.worker), which
happens before the model is loaded.
"""

from dataclasses import dataclass, replace

import torch
from vllm.model_executor.model_loader import get_model_loader, register_model_loader
from vllm.model_executor.model_loader.base_loader import BaseModelLoader

from . import vllm_compat
from .masked_linear import MaskedApply
from .slots import Layout, SlotConfig, SlotTable


@dataclass(frozen=True)
class SlotSettings:
    """`additional_config["maskserve"]` (runtime.requests.default_engine_args), hashed into vLLM's compile cache key."""

    max_masks: int  # resident slots
    mask_memory_bytes: int  # over all slots
    graph_version: int  # what the masked layers put into a compiled graph


class StepRouter:
    """Fills the slot table's token->slot buffer before each forward; `route_step` is set by the worker extension."""

    def __init__(self, table: SlotTable):
        self.table = table
        self.route_step = None  # () -> np.ndarray of row slots, or None for an all-base step

    def __call__(self, module, args) -> None:
        rows = self.route_step() if self.route_step is not None else None
        if rows is None:
            self.table.route_base()
        else:
            self.table.route(rows)


@dataclass
class InstalledSlots:
    """What the loader leaves on the model for the worker extension: `model.maskserve`."""

    table: SlotTable
    names: list[str]  # masked layer names, in table order
    router: StepRouter


@register_model_loader("maskserve")
class MaskServeLoader(BaseModelLoader):
    def __init__(self, load_config):
        extra = dict(load_config.model_loader_extra_config or {})
        inner_format = extra.pop("maskserve", {}).get("load_format", "auto")
        self.inner = get_model_loader(replace(load_config, load_format=inner_format, model_loader_extra_config=extra))
        super().__init__(load_config)

    def download_model(self, model_config) -> None:
        self.inner.download_model(model_config)

    def load_weights(self, model, model_config) -> None:
        self.inner.load_weights(model, model_config)

    def load_model(self, vllm_config, model_config, prefix: str = "") -> torch.nn.Module:
        model = self.inner.load_model(vllm_config=vllm_config, model_config=model_config, prefix=prefix)
        layers = vllm_compat.masked_layers(model)
        settings = SlotSettings(**vllm_config.additional_config["maskserve"])
        shapes = [vllm_compat.local_shape(m) for _, m in layers]
        device = torch.device(vllm_config.device_config.device)
        layout = Layout.for_device(device, max(n_in for _, n_in in shapes), model_config.dtype)
        config = SlotConfig.from_budget(settings.max_masks, settings.mask_memory_bytes,
                                        vllm_compat.max_step_tokens(vllm_config), layout)
        table = SlotTable(shapes, config, device)
        for index, (_, module) in enumerate(layers):
            module.quant_method = MaskedApply(module.quant_method, table, index)
        router = StepRouter(table)
        model.register_forward_pre_hook(router)
        model.maskserve = InstalledSlots(table, [n for n, _ in layers], router)
        return model
