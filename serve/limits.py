"""A bound on request bodies, for every HTTP route: a body past `max_body_bytes` is refused with 413 (OpenAI error
schema) before any route or vLLM reads it. vLLM's own server takes bodies of any size.

A declared Content-Length past the bound is refused without reading; otherwise the body is read up to the bound
(chunked uploads too) and handed on whole. Websocket messages are not bodies and are not bounded here.
"""

import math
import re

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .protocol import error_json

DEFAULT_MAX_BODY_BYTES = 32 << 20  # base64 images and long prompts fit; a memory bomb does not
_LENGTH = re.compile(r"[0-9]{1,19}")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if _LENGTH.fullmatch(declared) and int(declared) > self.max_body_bytes:
            return await self._too_large(scope, receive, send)
        body = await read_body(receive, self.max_body_bytes)
        if body is None:
            return await self._too_large(scope, receive, send)
        await self.app(scope, replay(body, receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = f"request body is larger than {self.max_body_bytes} bytes (the server's --max-body-bytes)"
        await error_json(message, 413)(scope, receive, send)


async def read_body(receive: Receive, limit: float = math.inf) -> bytes | None:
    """The whole body, or None as soon as it passes `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands `body` over once, then the client's own messages (so a disconnect is still seen)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
