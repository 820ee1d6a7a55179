"""The `mask` field, as ASGI middleware in front of vLLM's own OpenAI server.

On POST /v1/completions and /v1/chat/completions it takes `mask` (or a `model` that names a mask, or `ab:NAME`;
the decision is serve/routing.py's, from the body alone), resolves it through the store, makes sure the workers hold
it, and hands vLLM an ordinary request whose
`vllm_xargs` carry the digest and whose `cache_salt` starts with it. vLLM parses, templates, schedules and streams
as it always does. On the way back serve/annotation.py marks the response with the mask that served it (`x-mask`
header, `mask` object in the JSON body or in every streamed chunk), and this middleware counts it in the metrics
and, for experiments, the A/B log.
A base request (no mask, no experiment) gets vLLM's response as it was sent, plus the `x-mask: base` header.

vLLM's other POST routes (responses, messages, invocations, embeddings, pooling, tokenize, ...) do not apply masks,
so a JSON body there that asks for one (`mask`, or a `model` that names a mask or an experiment) is refused with 400
rather than answered by the base model. GET /v1/models gets the masks this base can serve appended to vLLM's list.
User-supplied `vllm_xargs` keys `mask` and `mask_token` (runtime.requests.MASK_XARGS) are dropped here; on vLLM's
other routes, which pass `vllm_xargs` through untouched, workers ignore them without the server's token
(runtime/requests.py).
"""

import json
import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from mask_store.errors import InvalidRef, MaskError, NotFound
from runtime.requests import MASK_XARGS

from . import annotation, metrics, routing
from .experiments import PREFIX
from .limits import read_body, replay
from .protocol import clip, error_json, error_response
from .routing import MaskFields, Route
from .state import MaskServeState

INFERENCE_PATHS = ("/v1/completions", "/v1/chat/completions")
OWN_PATHS = ("/v1/masks", "/v1/experiments", "/v1/feedback")  # serve/router.py: their bodies name masks to manage


class MaskMiddleware:
    """Added by the endpoint plugin while vLLM builds its app, before the engine exists: the mask service and the
    experiments are read per request from `app.state.maskserve`, which the plugin's `init_state` fills."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"].removeprefix(scope.get("root_path", ""))
            state: MaskServeState = scope["app"].state.maskserve
            if scope["method"] == "POST" and path in INFERENCE_PATHS:
                return await self._inference(state, scope, receive, send)
            if scope["method"] == "POST" and not path.startswith(OWN_PATHS):
                return await self._elsewhere(state, scope, receive, send)
            if scope["method"] == "GET" and path == "/v1/models":
                return await self._models(state, scope, receive, send)
        await self.app(scope, receive, send)

    # --- requests ------------------------------------------------------------------------------------------------

    async def route(self, state: MaskServeState, request: dict) -> Route:
        """routing.route, then its REF resolved through the store."""
        route = routing.route(MaskFields.of(request), state.base_names, state.experiments)
        if route.ref is None:
            return route
        try:
            route.served = await state.service.resolve(route.ref)
        except (NotFound, InvalidRef) as e:
            if not route.model_was_mask:
                raise
            served = ", ".join(sorted(state.base_names))
            model = request.get("model")
            raise NotFound(f"model {clip(model)} is neither the served model ({served}) nor a mask: {e}") from e
        return route

    def rewrite(self, state: MaskServeState, request: dict, route: Route, count_stream_tokens: bool = True) -> dict:
        """vLLM's request: no `mask`, the served model's name, our xargs and salt; with `count_stream_tokens`, a
        stream also asks for the usage chunk (hidden again from a client that did not ask for it)."""
        out = {k: v for k, v in request.items() if k != "mask"}
        if route.model_was_mask:
            out["model"] = state.service.served_name
        xargs = out.get("vllm_xargs")
        if isinstance(xargs, dict):
            out["vllm_xargs"] = xargs = {k: v for k, v in xargs.items() if k not in MASK_XARGS} or None
        if route.served is not None:
            user_xargs = xargs if isinstance(xargs, dict) else {}
            out["vllm_xargs"] = {**user_xargs, **route.served.extra_args(state.service.key)}
            salt = out.get("cache_salt")
            out["cache_salt"] = route.served.cache_salt(state.service.key, salt if isinstance(salt, str) else None)
        options = out.get("stream_options")
        if count_stream_tokens and out.get("stream") is True and (options is None or isinstance(options, dict)):
            if not (options or {}).get("include_usage"):  # exact token counts for metrics and the A/B log
                out["stream_options"] = {**(options or {}), "include_usage": True}
                route.drop_usage_chunk = True
        return out

    async def _inference(self, state: MaskServeState, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        body = await read_body(receive)
        try:
            request = json.loads(body)
        except ValueError:
            return await error_json("request body is not valid JSON", 400)(scope, receive, send)
        except RecursionError:
            return await error_json("request body is JSON nested too deeply", 400)(scope, receive, send)
        if not isinstance(request, dict):
            return await error_json("request body must be a JSON object", 400)(scope, receive, send)
        try:
            route = await self.route(state, request)
            if route.served is not None:
                route.loaded = await state.service.admit(route.served)
        except MaskError as e:
            metrics.REQUESTS.labels(mask="unresolved", status=str(e.status)).inc()  # never a client string
            return await error_response(e)(scope, receive, send)
        annotated = route.served is not None or route.experiment is not None
        rewritten = self.rewrite(state, request, route, count_stream_tokens=annotated)
        new_body = body if rewritten == request else json.dumps(rewritten).encode()
        outcome = annotation.Outcome()
        respond = annotation.annotate(send, route, outcome) if annotated else annotation.observe(send, outcome)
        try:
            await self.app(_with_length(scope, len(new_body)), replay(new_body, receive), respond)
        finally:  # failed and abandoned requests count too (status 500 if no response was started)
            if route.served is not None:
                state.service.release(route.served)
            outcome.status = outcome.status or 500
            self._account(state, route, outcome, time.perf_counter() - started, started)

    async def _elsewhere(self, state: MaskServeState, scope: Scope, receive: Receive, send: Send) -> None:
        """A route that does not apply masks: pass it on unless its JSON body asks for one."""
        body = await read_body(receive)
        try:
            request = json.loads(body) if body.lstrip().startswith(b"{") else None
        except (ValueError, RecursionError):
            request = None  # the route's own parser answers
        try:
            asks = isinstance(request, dict) and await self._asks_for_mask(state, request)
        except MaskError as e:  # the store could not say whether `model` is a mask: never guess "no"
            return await error_response(e)(scope, receive, send)
        if asks:
            path = scope["path"].removeprefix(scope.get("root_path", ""))
            routes = " and ".join(f"POST {p}" for p in INFERENCE_PATHS)
            message = f"{clip(path)} does not apply masks; only {routes} take 'mask' or a mask as 'model'"
            return await error_json(message, 400)(scope, receive, send)
        await self.app(scope, replay(body, receive), send)

    async def _asks_for_mask(self, state: MaskServeState, request: dict) -> bool:
        if request.get("mask") is not None:
            return True
        model = request.get("model")
        if not isinstance(model, str) or model in state.base_names:
            return False
        if model.startswith(PREFIX):
            return True
        try:
            await state.service.resolve(model)
        except (NotFound, InvalidRef):
            return False  # a LoRA adapter or a name vLLM will refuse itself
        return True

    def _account(self, state: MaskServeState, route: Route, outcome: annotation.Outcome, latency: float,
                 started: float) -> None:
        label = route.label
        metrics.REQUESTS.labels(mask=label, status=str(outcome.status)).inc()
        metrics.LATENCY.labels(mask=label).observe(latency)
        ttft = outcome.first_token_at - started if outcome.first_token_at else None
        if ttft is not None:
            metrics.TTFT.labels(mask=label).observe(ttft)
        if outcome.completion_tokens:
            metrics.TOKENS.labels(mask=label).inc(outcome.completion_tokens)
        if route.experiment:
            state.ablog.record(outcome.response_id, route.experiment, route.arm, label, outcome.status, latency, ttft,
                              outcome.completion_tokens)

    # --- /v1/models ----------------------------------------------------------------------------------------------

    async def _models(self, state: MaskServeState, scope: Scope, receive: Receive, send: Send) -> None:
        outcome = annotation.Outcome()
        await self.app(scope, receive, annotation.capture(outcome))
        if outcome.status != 200:
            return await annotation.send_raw(send, outcome)
        listing = json.loads(b"".join(outcome.chunks))
        created = listing["data"][0]["created"] if listing.get("data") else int(time.time())
        listing["data"].extend(await state.service.model_cards(created))
        await JSONResponse(listing)(scope, receive, send)


def _with_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
    return {**scope, "headers": headers + [(b"content-length", str(length).encode())]}
