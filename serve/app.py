"""Build and run the server: vLLM's OpenAI app, engine and uvicorn launcher, plus what masks need.

This follows vLLM 0.32's `entrypoints/launchers/api_server/entry.py` (`run_server_worker` -> `build_and_serve`)
step by step, adding between `init_app_state` and `serve_http`: the worker setup RPC, our router, and the auth and
mask middlewares. Everything else (chat templates, streaming, logprobs, tool parsing, /metrics, /health) is vLLM's.
"""

import json
import logging
import uuid
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from starlette.exceptions import HTTPException
from vllm import SamplingParams

from vllm.entrypoints.launchers.api_server.app_state import init_app_state
from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
from vllm.entrypoints.launchers.app import build_app
from vllm.entrypoints.launchers.launcher import serve_http, setup_server
from vllm.entrypoints.launchers.utils.server_utils import get_uvicorn_log_config
import vllm.envs as envs

from mask_store.store import Store

from .ablog import ABLog
from .ablog_writer import ABLogWriter
from .auth import AuthMiddleware
from .experiments import Experiments
from .limits import DEFAULT_MAX_BODY_BYTES, BodyLimitMiddleware
from .masks import MaskService
from .middleware import MaskMiddleware
from .router import http_error, router

logger = logging.getLogger("maskserve.serve")


@dataclass(frozen=True)
class MaskServeConfig:
    model_dir: str  # the base model folder vLLM serves
    base_id: str  # its base id; masks for any other base are refused
    store: str  # store URI
    api_keys: tuple[str, ...]  # inference needs one of them when any is set
    admin_key: str | None  # admin routes need it when set, else an API key; with neither they are off
    experiments_file: str | None  # YAML or JSON experiments to start with
    ab_db: str  # SQLite file of the A/B log
    tensor_shapes: dict[str, tuple[int, ...]]  # every projection a mask may name, with its shape (layout.py)
    resolve_ttl_s: float  # how long a REF -> version resolution is reused
    canary: bool = True  # probe the engine under a synthetic mask before serving (runtime/canary.py)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger request bodies are refused with 413


def open_experiments(config: MaskServeConfig) -> tuple[Experiments, ABLog]:
    """The experiments file and the A/B log, opened before the engine starts: a bad path fails in a second, not
    after the minute an engine takes to start."""
    experiments = Experiments()
    ablog = ABLog(config.ab_db)
    if config.experiments_file:
        experiments.load_file(config.experiments_file)
    for experiment in experiments.by_name.values():
        ablog.save_experiment(experiment.name, json.dumps(experiment.describe()))
    return experiments, ablog


async def install(app, engine_client, served_names: list[str], config: MaskServeConfig, experiments: Experiments,
                  ablog: ABLog) -> None:
    """Add maskserve to a vLLM app whose state `init_app_state` has filled."""
    service = MaskService(engine_client, Store(config.store), config.model_dir, config.base_id, served_names[0],
                          config.tensor_shapes, config.resolve_ttl_s)
    await service.setup()
    if config.canary:
        dtype = str(engine_client.model_config.dtype).removeprefix("torch.")
        report = await service.run_canary(engine_client.model_config.hf_config, dtype,
                                          lambda ids, served: _prompt_logprobs(engine_client, service.key, ids, served))
        logger.info("start-up canary passed: %s", report)
    writer = ABLogWriter(ablog)  # no SQLite commit on the event loop
    app.state.masks, app.state.experiments, app.state.ablog = service, experiments, writer
    app.include_router(router)
    app.add_exception_handler(HTTPException, http_error)
    # build_app's SageMaker bootstrap already built Starlette's middleware stack; no request has been served, so
    # drop it and let Starlette rebuild it, with ours outermost, on the first request.
    app.middleware_stack = None
    app.add_middleware(MaskMiddleware, service=service, experiments=experiments, ablog=writer,
                       base_names=served_names)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.max_body_bytes)  # after the key check
    app.add_middleware(AuthMiddleware, api_keys=config.api_keys, admin_key=config.admin_key)


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


async def run(args: Namespace, config: MaskServeConfig) -> None:
    experiments, ablog = open_experiments(config)
    listen_address, sock = setup_server(args, reuse_port=False)
    async with build_async_engine_client(args) as engine_client:
        supported_tasks = await engine_client.get_supported_tasks()
        app = build_app(args, supported_tasks, engine_client.model_config)
        await init_app_state(engine_client, app.state, args, supported_tasks)
        await install(app, engine_client, list(args.served_model_name or [args.model]), config, experiments, ablog)
        uvicorn_kwargs = {}
        if (log_config := get_uvicorn_log_config(args)) is not None:
            uvicorn_kwargs["log_config"] = log_config
        shutdown_task = await serve_http(
            app,
            sock=sock,
            enable_ssl_refresh=args.enable_ssl_refresh,
            host=args.host,
            port=args.port,
            log_level=args.uvicorn_log_level,
            access_log=not args.disable_uvicorn_access_log,
            timeout_keep_alive=envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE,
            ssl_keyfile=args.ssl_keyfile,
            ssl_certfile=args.ssl_certfile,
            ssl_ca_certs=args.ssl_ca_certs,
            ssl_cert_reqs=args.ssl_cert_reqs,
            ssl_ciphers=args.ssl_ciphers,
            h11_max_incomplete_event_size=args.h11_max_incomplete_event_size,
            h11_max_header_count=args.h11_max_header_count,
            **uvicorn_kwargs,
        )
    try:
        await shutdown_task
    finally:
        sock.close()


def default_ab_db() -> str:
    from mask_store.paths import cache_dir

    return str(Path(cache_dir()) / "ab.sqlite")
