"""The `mask` field, as ASGI middleware in front of vLLM's own OpenAI server.

On POST /v1/completions and /v1/chat/completions it takes `mask` (or a `model` that names a mask, or `ab:NAME`;
the decision is serve/routing.py's, from the body alone), resolves it through the store, makes sure the workers hold
it, and hands vLLM an ordinary request whose
`vllm_xargs` carry the digest and whose `cache_salt` starts with it. vLLM parses, templates, schedules and streams
as it always does. On the way back it marks the response with the mask that served it (`x-mask` header, `mask`
object in the JSON body or in every streamed chunk), and counts it in the metrics and, for experiments, the A/B log.
A base request (no mask, no experiment) gets vLLM's response as it was sent, plus the `x-mask: base` header.

vLLM's other POST routes (responses, messages, invocations, embeddings, pooling, tokenize, ...) do not apply masks,
so a JSON body there that asks for one (`mask`, or a `model` that names a mask or an experiment) is refused with 400
rather than answered by the base model. GET /v1/models gets the masks this base can serve appended to vLLM's list.
User-supplied `vllm_xargs` keys `mask` and `mask_token` (runtime.requests.MASK_XARGS) are dropped here; on vLLM's
other routes, which pass `vllm_xargs` through untouched, workers ignore them without the server's token
(runtime/requests.py).
"""

import json
import re
import time
from dataclasses import dataclass, field

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mask_store.errors import InvalidRef, MaskError, NotFound
from runtime.requests import MASK_XARGS

from . import metrics, routing
from .experiments import PREFIX
from .limits import read_body, replay
from .protocol import clip, error_json, error_response
from .routing import MaskFields, Route
from .state import MaskServeState

INFERENCE_PATHS = ("/v1/completions", "/v1/chat/completions")
OWN_PATHS = ("/v1/masks", "/v1/experiments", "/v1/feedback")  # serve/router.py: their bodies name masks to manage


@dataclass
class Outcome:
    """What the response told us, for metrics and the A/B log."""

    status: int = 0
    response_id: str | None = None
    completion_tokens: int | None = None
    first_token_at: float | None = None
    start: Message | None = None  # captured responses only
    chunks: list[bytes] = field(default_factory=list)


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
        outcome = Outcome()
        respond = _annotate(send, route, outcome) if annotated else _observe(send, outcome)
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

    def _account(self, state: MaskServeState, route: Route, outcome: Outcome, latency: float, started: float) -> None:
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
        outcome = Outcome()
        await self.app(scope, receive, _capture(outcome))
        if outcome.status != 200:
            return await _send_raw(send, outcome)
        listing = json.loads(b"".join(outcome.chunks))
        created = listing["data"][0]["created"] if listing.get("data") else int(time.time())
        listing["data"].extend(await state.service.model_cards(created))
        await JSONResponse(listing)(scope, receive, send)


# --- ASGI plumbing -------------------------------------------------------------------------------------------------


def _with_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
    return {**scope, "headers": headers + [(b"content-length", str(length).encode())]}


def _capture(outcome: Outcome) -> Send:
    async def capture(message: Message) -> None:
        if message["type"] == "http.response.start":
            outcome.status = message["status"]
            outcome.start = message
        else:
            outcome.chunks.append(message.get("body", b""))

    return capture


async def _send_raw(send: Send, outcome: Outcome) -> None:
    await send(outcome.start)
    await send({"type": "http.response.body", "body": b"".join(outcome.chunks), "more_body": False})


def _observe(send: Send, outcome: Outcome) -> Send:
    """A base request's response, passed through as vLLM sent it (no buffering, no body field) with `x-mask: base`
    added; its status, first token and token count (when the response carries a usage object) are noted on the way."""

    async def observed(message: Message) -> None:
        if message["type"] == "http.response.start":
            outcome.status = message["status"]
            MutableHeaders(scope=message)["x-mask"] = "base"
        elif outcome.status < 400:
            body = message.get("body", b"")
            if outcome.first_token_at is None and body.startswith(b"data: "):
                for event in body.split(b"\n\n"):
                    _note_event(event, outcome)
            elif b'"completion_tokens"' in body:
                if found := _COMPLETION_TOKENS.search(body):
                    outcome.completion_tokens = int(found.group(1))
        await send(message)

    return observed


_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


def _annotate(send: Send, route: Route, outcome: Outcome) -> Send:
    """Add the mask to the response: headers always; JSON bodies and every SSE chunk when the request succeeded."""
    extra = route.body_fields()
    fields = json.dumps(extra)[1:-1].encode()  # '"mask": {...}', spliced into every streamed chunk
    state = {"start": None, "stream": False, "buffer": b""}

    async def annotated(message: Message) -> None:
        if message["type"] == "http.response.start":
            outcome.status = message["status"]
            headers = MutableHeaders(scope=message)
            headers["x-mask"] = route.label
            if route.served:
                headers["x-mask-digest"] = route.served.digest
            if route.loaded:
                headers["x-mask-loaded"] = "1"  # this request paid the mask's load (a cold mask)
            if route.experiment:
                headers["x-mask-experiment"] = route.experiment
                headers["x-mask-arm"] = route.arm
            state["stream"] = headers.get("content-type", "").startswith("text/event-stream")
            if outcome.status >= 400 or state["stream"]:
                await send(message)
            else:
                state["start"] = message  # held until the body is rewritten and its length known
            return
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if outcome.status >= 400:
            await send(message)
        elif state["stream"]:
            data = state["buffer"] + body
            *events, state["buffer"] = data.split(b"\n\n")
            rewritten = (_rewrite_event(e, fields, outcome, route.drop_usage_chunk) for e in events)
            out = b"".join(e + b"\n\n" for e in rewritten if e is not None)
            if not more and state["buffer"]:
                out += state["buffer"]
            await send({"type": "http.response.body", "body": out, "more_body": more})
        else:
            state["buffer"] += body
            if more:
                return
            payload = json.loads(state["buffer"])
            outcome.response_id = payload.get("id")
            outcome.completion_tokens = (payload.get("usage") or {}).get("completion_tokens")
            payload.update(extra)
            rewritten = json.dumps(payload).encode()
            start = state["start"]
            MutableHeaders(scope=start)["content-length"] = str(len(rewritten))
            await send(start)
            await send({"type": "http.response.body", "body": rewritten, "more_body": False})

    return annotated


def _rewrite_event(event: bytes, fields: bytes, outcome: Outcome, drop_usage_chunk: bool) -> bytes | None:
    """Splice `fields` into an SSE `data: {...}` chunk as bytes (no re-serialization); the usage chunk is dropped
    when only we asked for it."""
    usage_only = _note_event(event, outcome)
    if usage_only is None:
        return event  # [DONE], comments, keep-alives, anything that is not a JSON chunk
    if usage_only and drop_usage_chunk:
        return None
    return b"data: {" + fields + (b", " if len(event) > 8 else b"") + event[7:]


def _note_event(event: bytes, outcome: Outcome) -> bool | None:
    """Note what an SSE event says (response id, first token's time, completion tokens), parsing chunks only until
    the first token and for the usage chunk. Whether it is a usage chunk with no choices; None if not a JSON chunk."""
    if not event.startswith(b"data: {"):
        return None
    if outcome.first_token_at is not None and b'"completion_tokens"' not in event:
        return False
    try:
        chunk = json.loads(event[6:])
    except ValueError:
        return None
    outcome.response_id = outcome.response_id or chunk.get("id")
    choices = chunk.get("choices") or []
    if outcome.first_token_at is None and any(c.get("text") or (c.get("delta") or {}).get("content")
                                              for c in choices):
        outcome.first_token_at = time.perf_counter()
    usage = chunk.get("usage")
    if usage and usage.get("completion_tokens") is not None:
        outcome.completion_tokens = usage["completion_tokens"]
        return not choices
    return False
