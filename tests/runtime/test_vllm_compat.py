"""Configurations masks cannot be served under are refused at start, with the setting that fixes them; the canary
refuses an engine whose masked output is not the reference's."""

from types import SimpleNamespace

import numpy as np
import pytest

from runtime import canary, vllm_compat
from runtime.requests import default_engine_args


def _config(mode: str | None):
    return SimpleNamespace(compilation_config=SimpleNamespace(
        cudagraph_mode=None if mode is None else SimpleNamespace(name=mode)))


class V1Runner:
    input_batch = object()


def test_v1_runner_without_full_graphs_is_supported():
    for mode in (None, "NONE", "PIECEWISE"):
        vllm_compat.check_supported(V1Runner(), _config(mode))


def test_model_runner_v2_is_refused_with_the_setting_that_avoids_it():
    V2 = type("GPUModelRunner", (), {"__module__": vllm_compat.V2_RUNNER_MODULE, "input_batch": None})
    for runner in (V2(), object()):
        with pytest.raises(vllm_compat.UnsupportedEngine, match="VLLM_USE_V2_MODEL_RUNNER=0"):
            vllm_compat.check_supported(runner, _config("NONE"))


def test_a_feature_that_forces_model_runner_v2_is_named_instead_of_a_setting_that_would_not_help():
    config = _config("NONE")
    config.watermark_config = object()
    with pytest.raises(vllm_compat.UnsupportedEngine, match=r"watermarking \(watermark_config\)") as refused:
        vllm_compat.check_supported(object(), config)
    assert "VLLM_USE_V2_MODEL_RUNNER=0" not in str(refused.value)


@pytest.mark.parametrize("mode", ["FULL", "FULL_DECODE_ONLY", "FULL_AND_PIECEWISE"])
def test_full_cuda_graphs_are_refused(mode):
    with pytest.raises(vllm_compat.UnsupportedEngine, match="PIECEWISE"):
        vllm_compat.check_supported(V1Runner(), _config(mode))


def test_engine_args_keep_compilation_and_wrap_the_users_loader():
    args = default_engine_args(4, 1 << 20, load_format="safetensors", model_loader_extra_config={"x": 1},
                               additional_config={"other": 2})
    assert "enforce_eager" not in args
    assert args["load_format"] == "maskserve"
    assert args["model_loader_extra_config"] == {"x": 1, "maskserve": {"load_format": "safetensors"}}
    assert args["additional_config"]["other"] == 2  # the compile cache key sees our slot settings
    assert args["additional_config"]["maskserve"]["max_masks"] == 4


def test_canary_passes_when_the_engine_matches_the_reference():
    rng = np.random.default_rng(0)
    base, masked = rng.normal(size=20), rng.normal(size=20)
    report = canary.check((base + 1e-5, masked - 1e-5), (base, masked), "float32")
    assert report["mask_error"] < 1e-4


def test_canary_refuses_an_engine_that_serves_the_base_for_a_mask():
    rng = np.random.default_rng(0)
    base, masked = rng.normal(size=20), rng.normal(size=20)
    with pytest.raises(canary.CanaryFailed, match="refusing to serve"):
        canary.check((base, base), (base, masked), "float32")
    with pytest.raises(canary.CanaryFailed):
        canary.check((base, masked + 1.0), (base, masked), "bfloat16")


def test_canary_allows_16_bit_rounding_in_proportion_to_the_mask():
    """What SmolLM2 in bf16 measured on an AVX512-BF16 CPU (base off by 0.22, masked by 0.41, the mask moving the
    probe by 8.6): the old flat 0.25 refused to start every bf16 engine, `make demo` included."""
    base, masked = np.zeros(23), np.zeros(23)
    masked[3] = 8.6
    engine_base, engine_masked = base.copy(), masked.copy()
    engine_base[5], engine_masked[3] = 0.22, 8.6 - 0.41
    report = canary.check((engine_base, engine_masked), (base, masked), "bfloat16")
    assert report["tolerance"] == pytest.approx(0.86) and "skipped" not in report
    with pytest.raises(canary.CanaryFailed):  # serving the base for the mask misses by the whole effect
        canary.check((engine_base, engine_base), (base, masked), "bfloat16")


def test_canary_probe_mask_covers_the_first_layer(tiny_model, tmp_path):
    from transformers import AutoConfig

    from mask_store.format import load_mask
    from mask_store.identity import base_id

    probe = canary.make_probe(AutoConfig.from_pretrained(tiny_model), base_id(tiny_model), tmp_path)
    mask = load_mask(probe.mask_path)
    assert len(mask.tensors) == 7 and all(".layers.0." in n for n in mask.tensors)
    assert abs(mask.removed_count / mask.masked_count - 1 / 3) < 0.01
    base, masked = canary.reference_logprobs(tiny_model, probe)
    assert np.abs(base - masked).max() > 0.5  # strong enough to tell the two apart at any dtype's tolerance


def test_worker_errors_keep_their_status_across_the_rpc_boundary():
    from mask_store.errors import MaskError
    from runtime.requests import first_result

    with pytest.raises(MaskError) as raised:
        first_result([{"layers": 1}, {"error": "too large", "status": 422, "kind": "SomeWorkerOnlyError"}])
    assert raised.value.status == 422 and str(raised.value) == "too large"


def test_worker_errors_come_back_as_their_own_class():
    from mask_store.errors import BaseMismatch
    from runtime.requests import first_result

    with pytest.raises(BaseMismatch, match="another base"):
        first_result([{"error": "trained on another base", "status": 422, "kind": "BaseMismatch"}])
