"""A stand-in for vLLM's OpenAI app and engine client, so the mask layer is tested in milliseconds.

The fake completion routes echo the request vLLM would have received (as `received`), non-streamed or as SSE
chunks; the fake engine answers the worker RPCs from the mask files themselves.
"""

import asyncio
import json
from argparse import Namespace
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from vllm.entrypoints.serve.exception_handling.register import init_exception_handler

from runtime.layout import ModelShape
from runtime.slot_files import SlotPlan, read_slot_file
from serve.config import ARGS_FIELD, MaskServeConfig
from serve.plugin import MaskServePlugin
from tests.mask_store.helpers import random_mask
from tests.tiny import make_tiny_model

BASE_NAME = "base-model"


FAKE_MODEL = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, head_dim=8)  # the shapes random_mask's tensors have
FAKE_SHAPE = ModelShape(16, 32, 2, 2, 8, 1)


def fake_plan(base_id: str) -> SlotPlan:
    """What vLLM's fused layers of the FAKE_MODEL look like to a worker (qkv, o, gate_up, down; one rank)."""
    names = ("model.layers.0.self_attn.qkv_proj", "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_up_proj",
             "model.layers.0.mlp.down_proj")
    return SlotPlan(base_id, names, ((48, 16), (16, 16), (64, 16), (16, 32)), 1, FAKE_SHAPE)


def fake_model(folder: Path) -> Path:
    """The FAKE_MODEL's checkpoint in `folder` (made once): what the API side gathers removed weights from."""
    model = folder / "fake-model"
    if not model.exists():
        make_tiny_model(model, **FAKE_MODEL)
    return model


class FakeEngine:
    """Answers the worker RPCs like runtime.worker does, with a bank of `capacity` masks (LRU, pins), reading the slot
    files the API side prepares as a worker does."""

    def __init__(self, base_id: str = "", capacity: int = 100):
        self.plan = fake_plan(base_id)
        self.capacity = capacity
        self.loaded: dict[str, dict] = {}  # least recently used first
        self.calls: list[tuple[str, tuple]] = []

    def _load(self, path: str, digest: str, pin: bool, protect: list[str] = ()) -> dict:
        if digest in self.loaded:
            self.loaded[digest]["pinned"] |= pin
            self.loaded[digest] = self.loaded.pop(digest)
            return {**self.loaded[digest], "loaded": False, "evicted": [], "resident": len(self.loaded)}
        read_slot_file(path, digest, self.plan, 0)
        evicted = []
        for old in list(self.loaded):
            if len(self.loaded) < self.capacity:
                break
            if not self.loaded[old]["pinned"] and old not in protect:
                evicted.append(old)
                del self.loaded[old]
        if len(self.loaded) >= self.capacity:
            return {"error": "mask needs 100 bytes; 100 of 100 are pinned or in use", "kind": "BankFull"}
        self.loaded[digest] = {"digest": digest, "bytes": 100, "pinned": pin, "load_ms": 1.0}
        return {**self.loaded[digest], "loaded": True, "evicted": evicted, "resident": len(self.loaded)}

    async def get_supported_tasks(self) -> tuple[str, ...]:
        return ("generate",)

    async def collective_rpc(self, method: str, args: tuple = ()):
        self.calls.append((method, args))
        if method == "maskserve_setup":
            return [{"layers": len(self.plan.names), "plan": self.plan.report(), "memory_bytes": 1 << 20}]
        if method == "maskserve_load":
            items, protect = args
            spare = [*protect, *(digest for _, digest, _ in items)]
            return [{"loads": [self._load(path, digest, pin, spare) for path, digest, pin in items]}]
        if method == "maskserve_unload":
            if args[0] in (args[1] if len(args) > 1 else ()):
                return [{"error": "mask in use", "status": 409, "kind": "MaskInUse"}]
            return [{"unloaded": self.loaded.pop(args[0], None) is not None}]
        if method == "maskserve_status":
            return [{"base_id": "", "budget_bytes": 1000, "used_bytes": 100 * len(self.loaded),
                     "masks": list(self.loaded.values())}]
        raise AssertionError(method)


def fake_vllm_app() -> FastAPI:
    app = FastAPI()

    async def respond(request: Request, kind: str):
        body = await request.json()
        if body.get("prompt") == "crash":
            raise RuntimeError("the engine failed")
        if body.get("model") != BASE_NAME:
            return _not_found(body.get("model"))
        if body.get("stream"):
            return StreamingResponse(_stream(body, kind), media_type="text/event-stream")
        return {"id": f"{kind}-{len(body.get('prompt', '') or '')}-{body.get('user')}", "object": kind,
                "choices": [{"index": 0, "text": "ok"}], "usage": {"prompt_tokens": 2, "completion_tokens": 3},
                "received": body}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await respond(request, "text_completion")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await respond(request, "chat.completion")

    async def other(request: Request):
        """vLLM's routes that ignore `mask` (responses, messages, invocations): the base model answers."""
        return {"object": "other", "received": await request.json()}

    for path in ("/v1/responses", "/v1/messages", "/invocations", "/v1/embeddings"):
        app.post(path)(other)

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket):
        await websocket.accept()
        await websocket.send_json({"type": "session.created"})
        await websocket.close()

    @app.get("/health")
    async def health():
        return {}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": BASE_NAME, "object": "model", "created": 7, "parent": None}]}

    init_exception_handler(app)
    return app


def _not_found(model):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": f"The model `{model}` does not exist.", "type": "NotFoundError",
                                   "code": 404}}, status_code=404)


async def _stream(body: dict, kind: str):
    usage = (body.get("stream_options") or {}).get("include_usage")
    chunks = [{"id": "stream-1", "object": kind + ".chunk", "choices": [{"index": 0, "text": piece}]}
              for piece in ["Hel", "lo", ""]]
    if usage:  # as OpenAI and vLLM do: a last chunk with no choices and the usage
        chunks.append({"id": "stream-1", "object": kind + ".chunk", "choices": [],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
    for chunk in chunks:
        # Split one event across two sends: the middleware must reassemble it.
        data = f"data: {json.dumps(chunk)}\n\n".encode()
        yield data[:10]
        await asyncio.sleep(0)
        yield data[10:]
    yield b"data: [DONE]\n\n"


ADMIN_KEY = "sk-admin"


def build(store_uri: str, base_id: str, tmp_path, api_keys=(), admin_key=ADMIN_KEY, experiments_file=None,
          capacity=100, max_body_bytes=32 << 20):
    """The fake app with maskserve attached as vLLM 0.32's build_app and init_app_state attach endpoint plugins."""
    app = fake_vllm_app()
    engine = FakeEngine(base_id, capacity)
    config = MaskServeConfig(model_dir=str(fake_model(tmp_path)), base_id=base_id, store=store_uri, api_keys=api_keys,
                             admin_key=admin_key, experiments_file=experiments_file, ab_db=str(tmp_path / "ab.sqlite"),
                             tensor_shapes={n: t.shape for n, t in random_mask(0).tensors.items()}, resolve_ttl_s=0.0,
                             canary=False, max_body_bytes=max_body_bytes)
    args = Namespace(log_error_stack=True, model="unused", served_model_name=[BASE_NAME], **{ARGS_FIELD: config})
    app.state.args = args
    plugin = MaskServePlugin()
    plugin.attach_router(app)
    asyncio.run(plugin.init_state(engine, app.state, args))
    return app, engine


def connect(app: FastAPI, **kwargs) -> TestClient:
    """A client that sends the admin key (which also opens inference), for tests about something else than keys."""
    return TestClient(app, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, **kwargs)
