"""What a response says about the mask that served it, as wrappers around the ASGI `send` of vLLM's response.

A masked request's response gets `x-mask` (and digest, cold-load, experiment) headers, and a `mask` object in its
JSON body or, spliced in as bytes, in every streamed chunk (bench/annotation.py measures what that costs). A base
request's response goes out as vLLM sent it, plus `x-mask: base`. On the way, each wrapper notes the status, the
response id, the first token's time and the completion tokens in an `Outcome`, for the metrics and the A/B log.
"""

import json
import re
import time
from dataclasses import dataclass, field

from starlette.datastructures import MutableHeaders
from starlette.types import Message, Send

from .routing import Route


@dataclass
class Outcome:
    """What the response told us, for metrics and the A/B log."""

    status: int = 0
    response_id: str | None = None
    completion_tokens: int | None = None
    first_token_at: float | None = None
    start: Message | None = None  # captured responses only
    chunks: list[bytes] = field(default_factory=list)



def capture(outcome: Outcome) -> Send:
    async def capture(message: Message) -> None:
        if message["type"] == "http.response.start":
            outcome.status = message["status"]
            outcome.start = message
        else:
            outcome.chunks.append(message.get("body", b""))

    return capture


async def send_raw(send: Send, outcome: Outcome) -> None:
    await send(outcome.start)
    await send({"type": "http.response.body", "body": b"".join(outcome.chunks), "more_body": False})


def observe(send: Send, outcome: Outcome) -> Send:
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


def annotate(send: Send, route: Route, outcome: Outcome) -> Send:
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
