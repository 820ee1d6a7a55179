"""mask-serve's engine defaults come from runtime.requests.default_engine_args, their one home; the user's flags win."""

import pytest

from runtime import requests
from runtime.requests import DEFAULT_MASK_MEMORY, DEFAULT_MAX_MASKS
from serve.cli import apply_engine_defaults, build_parser


@pytest.fixture(autouse=True)
def _runner_choice(monkeypatch):
    """apply_engine_defaults sets this for the process; keep it to the test."""
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")


@pytest.fixture(scope="module")
def parser():
    return build_parser()


def test_mask_serve_takes_the_runtime_defaults(parser):
    args = parser.parse_args(["--model", "m"])
    apply_engine_defaults(args)
    defaults = requests.default_engine_args()
    assert args.enable_prefix_caching is defaults["enable_prefix_caching"] is True
    assert args.kv_cache_memory_bytes == defaults.get("kv_cache_memory_bytes")
    assert args.additional_config["maskserve"] == {"max_masks": DEFAULT_MAX_MASKS,
                                                   "mask_memory_bytes": DEFAULT_MASK_MEMORY, "graph_version": 1}
    assert args.worker_extension_cls == defaults["worker_extension_cls"]


def test_a_changed_runtime_default_reaches_mask_serve(parser, monkeypatch):
    real = requests.default_engine_args
    monkeypatch.setattr(requests, "default_engine_args",
                        lambda *a, **kw: {**real(*a, **kw), "enable_prefix_caching": False})
    args = parser.parse_args(["--model", "m"])
    apply_engine_defaults(args)
    assert args.enable_prefix_caching is False


def test_every_runtime_default_reaches_mask_serve(parser, monkeypatch):
    """Not a fixed list of keys: a default runtime adds later (here a made-up value for a real vLLM flag, and one
    inside compilation_config) is applied too."""
    real = requests.default_engine_args
    monkeypatch.setattr(requests, "default_engine_args", lambda *a, **kw: {
        **real(*a, **kw), "max_num_seqs": 7, "compilation_config": {"cudagraph_mode": "NONE"}})
    args = parser.parse_args(["--model", "m"])
    apply_engine_defaults(args)
    assert args.max_num_seqs == 7 and args.compilation_config.cudagraph_mode == "NONE"
    for key, value in requests.default_engine_args().items():
        if key != "compilation_config":
            assert getattr(args, key) == value, key


def test_the_users_flags_win(parser):
    args = parser.parse_args(["--model", "m", "--no-enable-prefix-caching", "--kv-cache-memory-bytes", "5",
                              "--mask-memory-bytes", "2GiB", "--max-masks", "3"])
    apply_engine_defaults(args)
    assert args.enable_prefix_caching is False and args.kv_cache_memory_bytes == 5
    assert args.additional_config["maskserve"]["mask_memory_bytes"] == 2 << 30
    assert args.additional_config["maskserve"]["max_masks"] == 3
