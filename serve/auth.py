"""Keys: whenever a key is configured, every route but a few public ones needs one, on HTTP and websocket alike.

- Inference and vLLM's other routes: any API key (or the admin key) when API keys are set; open otherwise, as in
  vLLM without `--api-key`.
- Admin routes (`/v1/masks*`, `/v1/experiments*`): the admin key when one is set, else an API key. With no key at
  all they are off (403): a bind address says nothing about who connects (behind a reverse proxy every client is
  loopback), and vLLM keeps its own runtime adapter loading off by default for the same reason.

An allowlist, not vLLM's guarded prefixes (`/v1`, `/v2`, `/inference`, `/cohere` in vLLM 0.32's
entrypoints/serve/middleware/authenticate.py): those leave `/invocations`, `/classify`, `/score` and others open.
Failures answer in the OpenAI error schema (websockets: as an HTTP denial response where the server supports it).
"""

import hashlib
import secrets

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from .protocol import error_json

ADMIN_PREFIXES = ("/v1/masks", "/v1/experiments")
PUBLIC_PATHS = ("/health", "/ping", "/version", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
NO_ADMIN_KEY = "admin routes are off: start mask-serve with --admin-key KEY (or --api-key KEY) to use them"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class AuthMiddleware:
    def __init__(self, app: ASGIApp, api_keys: tuple[str, ...], admin_key: str | None):
        self.app = app
        self.api_keys = [_digest(k) for k in api_keys]  # any of them opens inference, like vLLM's repeated --api-key
        self.admin_keys = [_digest(admin_key)] if admin_key else self.api_keys
        self.inference_keys = [*self.api_keys, *([_digest(admin_key)] if admin_key else [])]

    def _bearer(self, scope: Scope) -> bytes | None:
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        return _digest(token) if scheme.lower() == "bearer" and token else None

    def _refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, message) when the request may not pass; None when it may."""
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if path.startswith(ADMIN_PREFIXES):
            keys, message = self.admin_keys, "admin routes need 'Authorization: Bearer ADMIN_KEY'"
            if not keys:
                return 403, NO_ADMIN_KEY
        elif path in PUBLIC_PATHS or not self.api_keys:
            return None
        else:
            keys, message = self.inference_keys, "missing or wrong API key (Authorization: Bearer KEY)"
        token = self._bearer(scope)
        if token is not None and any(secrets.compare_digest(token, key) for key in keys):
            return None
        return 401, message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope.get("method") == "OPTIONS":
            return await self.app(scope, receive, send)  # lifespan; CORS preflights carry no credentials
        refusal = self._refusal(scope)
        if refusal is None:
            return await self.app(scope, receive, send)
        status, message = refusal
        response = error_json(message, status)
        if scope["type"] == "http":
            return await response(scope, receive, send)
        await _deny_websocket(WebSocket(scope, receive, send), response)


async def _deny_websocket(websocket: WebSocket, response: JSONResponse) -> None:
    """An HTTP error instead of the handshake where the server can send one; else a policy-violation close."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.close(code=1008)
