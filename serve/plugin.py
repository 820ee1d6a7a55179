"""maskserve as a vLLM endpoint plugin: vLLM's own server, launcher and app, with our routes, middlewares and state.

vLLM 0.32 (`vllm/plugins/endpoint_plugins/interface.py`) loads the `vllm.endpoint_plugins` entry points that
VLLM_PLUGINS names (pyproject.toml registers this class as `maskserve`), calls `attach_router(app)` inside
`build_app`, after vLLM's routers and before its middlewares and SageMaker's bootstrap, and
`init_state(engine_client, state, args)` inside `init_app_state`, once the engine client exists. So `mask-serve` is
vLLM's `run_server` (serve/cli.py): everything else (chat templates, streaming, logprobs, tool parsing, /metrics,
/health, CORS, request ids, shutdown) is vLLM's, unchanged.

The worker side (the masked layers, slots and RPCs) is not here: runtime/loader.py and runtime/worker.py install it
through vLLM's model loader registry and worker extension, which serve/cli.py names on the engine arguments.
"""

import json
import os
import uuid
from argparse import Namespace
from importlib.metadata import entry_points

import numpy as np
from fastapi import FastAPI
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from vllm import SamplingParams

from mask_store.errors import MaskError
from mask_store.store import Store
from mask_store.logs import get_logger

from .ablog import ABLog
from .ablog_writer import ABLogWriter
from .auth import AuthMiddleware
from .config import MaskServeConfig, config_of
from .experiments import Experiments
from .limits import BodyLimitMiddleware
from .masks import MaskService
from .middleware import MaskMiddleware
from .router import http_error, router
from .state import MaskServeState

logger = get_logger("serve")

PLUGIN_NAME = "maskserve"
ENDPOINT_PLUGINS = "vllm.endpoint_plugins"  # vllm.plugins.ENDPOINT_PLUGINS_GROUP


class MaskServePlugin:
    name = PLUGIN_NAME
    # Eligible whatever the model supports, so that it is never skipped in silence: init_state refuses a model that
    # cannot generate, rather than vLLM serving it with `mask` fields ignored.
    required_tasks = None

    def attach_router(self, app: FastAPI) -> None:
        config = config_of(app.state.args)
        app.include_router(router)
        app.add_exception_handler(HTTPException, http_error)
        # Added last is outermost: the key check, then the body limit, then the mask field. vLLM adds CORS, request
        # ids and its scaling check after this, outside ours.
        app.add_middleware(MaskMiddleware)
        app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.max_body_bytes)
        app.add_middleware(AuthMiddleware, api_keys=config.api_keys, admin_key=config.admin_key)

    async def init_state(self, engine_client, state: State, args: Namespace) -> None:
        config = config_of(args)
        if engine_client is None or "generate" not in await engine_client.get_supported_tasks():
            raise MaskError(f"maskserve serves masks on generative models; {args.model} does not generate here")
        experiments, ablog = open_experiments(config)
        base_names = list(args.served_model_name or [args.model])
        service = MaskService(engine_client, Store(config.store), config.model_dir, config.base_id, base_names[0],
                              config.tensor_shapes, config.resolve_ttl_s)
        await service.setup()
        if config.canary:
            dtype = str(engine_client.model_config.dtype).removeprefix("torch.")
            report = await service.run_canary(
                engine_client.model_config.hf_config, dtype,
                lambda ids, served: _prompt_logprobs(engine_client, service.key, ids, served))
            logger.info("start-up canary passed: %s", report)
        state.maskserve = MaskServeState(service, experiments, ABLogWriter(ablog), frozenset(base_names))
        logger.info("masks for %s (base id %s) from store %s; %d experiment(s); admin routes %s", base_names[0],
                    config.base_id[:12], config.store, len(experiments.by_name),
                    "need the admin key" if config.admin_key else "need an API key" if config.api_keys else "off")


def open_experiments(config: MaskServeConfig) -> tuple[Experiments, ABLog]:
    """The experiments file and the A/B log. serve/cli.py opens them once before the engine starts too: a bad path
    fails in a second, not after the minute an engine takes to start."""
    experiments = Experiments()
    ablog = ABLog(config.ab_db)
    if config.experiments_file:
        experiments.load_file(config.experiments_file)
    for experiment in experiments.by_name.values():
        ablog.save_experiment(experiment.name, json.dumps(experiment.describe()))
    return experiments, ablog


async def _prompt_logprobs(engine_client, key: str, token_ids: list[int], served) -> np.ndarray:
    """log p(token_i | tokens_<i) of a prompt through the engine client, under a mask (or the base)."""
    prompt = {"prompt_token_ids": token_ids}
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    if served is not None:
        prompt["cache_salt"] = served.cache_salt(key)
        params.extra_args = served.extra_args(key)
    final = None
    async for output in engine_client.generate(prompt, params, request_id=f"maskserve-canary-{uuid.uuid4().hex}"):
        final = output
    return np.array([lp[t].logprob for t, lp in zip(token_ids[1:], final.prompt_logprobs[1:])])


def allow_plugin(environ=os.environ) -> None:
    """Name this plugin in VLLM_PLUGINS, which vLLM requires of endpoint plugins, without narrowing what else loads.

    VLLM_PLUGINS is one allowlist for every plugin group: unset, vLLM loads every general plugin (and no endpoint
    plugin); set, only those named. So an unset list becomes every installed non-endpoint plugin plus this one, and a
    user's list gets this one appended. Raises when the entry point is missing (maskserve not installed as a
    package), since vLLM would then serve the base model with `mask` fields ignored."""
    if not entry_points(group=ENDPOINT_PLUGINS, name=PLUGIN_NAME):
        raise MaskError(f"maskserve's vLLM endpoint plugin is not installed (no {ENDPOINT_PLUGINS} entry point "
                        f"{PLUGIN_NAME!r}): install the package, e.g. `pip install -e .` in the checkout (make setup)")
    current = environ.get("VLLM_PLUGINS")
    if current is None:
        groups = entry_points()
        names = [e.name for group in groups.groups if group.startswith("vllm.") and group != ENDPOINT_PLUGINS
                 for e in groups.select(group=group)]
    else:
        names = [name for name in current.split(",") if name]
    environ["VLLM_PLUGINS"] = ",".join(dict.fromkeys([*names, PLUGIN_NAME]))
