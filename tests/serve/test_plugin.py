"""maskserve reaches vLLM's server only as an endpoint plugin: these pin down that vLLM's own build_app finds and
attaches it when (and only when) VLLM_PLUGINS names it, and that it refuses to run without mask-serve's settings or on
a model that cannot generate, rather than let vLLM serve the base model with `mask` fields ignored."""

import asyncio
from argparse import Namespace
from importlib.metadata import EntryPoints

import pytest
from vllm.entrypoints.launchers.app import build_app

from mask_store.errors import MaskError
from serve import plugin
from serve.cli import build_parser
from serve.config import ARGS_FIELD, MaskServeConfig, config_of
from serve.plugin import MaskServePlugin, allow_plugin


def _config(tmp_path) -> MaskServeConfig:
    return MaskServeConfig(model_dir="unused", base_id="b" * 64, store=str(tmp_path / "store"), api_keys=(),
                           admin_key="sk-admin", experiments_file=None, ab_db=str(tmp_path / "ab.sqlite"),
                           tensor_shapes={}, resolve_ttl_s=0.0)


def _vllm_app(tmp_path, monkeypatch, plugins: str | None):
    if plugins is None:
        monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("VLLM_PLUGINS", plugins)
    args = build_parser().parse_args(["--model", "unused"])
    setattr(args, ARGS_FIELD, _config(tmp_path))
    return build_app(args, ("generate",), None)


def test_vllms_build_app_attaches_the_plugin_when_allowed(tmp_path, monkeypatch):
    app = _vllm_app(tmp_path, monkeypatch, "maskserve")
    assert [type(p) for p in app.state.endpoint_plugins] == [MaskServePlugin]
    paths = {route.path for route in app.routes}
    assert {"/v1/masks", "/v1/masks/load", "/v1/experiments", "/v1/feedback", "/v1/completions"} <= paths
    order = [m.cls.__name__ for m in app.user_middleware]  # outermost first
    assert order.index("AuthMiddleware") < order.index("BodyLimitMiddleware") < order.index("MaskMiddleware")


def test_without_the_allowlist_vllm_leaves_the_plugin_out(tmp_path, monkeypatch):
    """Why mask-serve must set VLLM_PLUGINS: vLLM loads no endpoint plugin unless named."""
    app = _vllm_app(tmp_path, monkeypatch, None)
    assert app.state.endpoint_plugins == []
    assert "/v1/masks" not in {route.path for route in app.routes}


def test_allow_plugin_keeps_every_other_plugin_loading():
    env: dict[str, str] = {}
    allow_plugin(env)
    names = env["VLLM_PLUGINS"].split(",")
    assert names[-1] == "maskserve"
    assert "lora_filesystem_resolver" in names  # a vllm.general_plugins entry point vLLM ships; unset loaded it


@pytest.mark.parametrize("given, expected", [("a,b", "a,b,maskserve"), ("maskserve,a", "maskserve,a"),
                                             ("", "maskserve")])
def test_allow_plugin_appends_to_a_users_allowlist(given, expected):
    env = {"VLLM_PLUGINS": given}
    allow_plugin(env)
    assert env["VLLM_PLUGINS"] == expected


def test_allow_plugin_refuses_when_maskserve_is_not_installed(monkeypatch):
    monkeypatch.setattr(plugin, "entry_points", lambda **_: EntryPoints(()))
    with pytest.raises(MaskError, match="pip install -e"):
        allow_plugin({})


def test_the_plugin_under_plain_vllm_serve_says_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_PLUGINS", "maskserve")
    args = build_parser().parse_args(["--model", "unused"])  # no mask-serve settings on it
    with pytest.raises(MaskError, match="start the server with `mask-serve`"):
        build_app(args, ("generate",), None)
    with pytest.raises(MaskError):
        config_of(Namespace())


class _PoolingEngine:
    async def get_supported_tasks(self):
        return ("embed",)


def test_a_model_that_cannot_generate_is_refused(tmp_path):
    args = Namespace(model="unused", served_model_name=None, **{ARGS_FIELD: _config(tmp_path)})
    with pytest.raises(MaskError, match="generative"):
        asyncio.run(MaskServePlugin().init_state(_PoolingEngine(), Namespace(), args))
