"""Keys: every route but a few public ones needs the API key when one is set; admin routes need the admin key, or,
with none set, a server bound to loopback. Failures answer in the OpenAI error schema. The admin key also opens
inference routes.

An allowlist, not vLLM's guarded prefixes (`/v1`, `/v2`, `/inference`, `/cohere` in vLLM 0.32's
entrypoints/serve/middleware/authenticate.py): those leave `/invocations`, `/classify`, `/score` and others open.
"""

import hashlib
import secrets

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .protocol import error_body

ADMIN_PREFIXES = ("/v1/masks", "/v1/experiments")
PUBLIC_PATHS = ("/health", "/ping", "/version", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class AuthMiddleware:
    def __init__(self, app: ASGIApp, api_keys: tuple[str, ...], admin_key: str | None, host: str | None):
        self.app = app
        self.api_keys = [_digest(k) for k in api_keys]  # any of them opens inference, like vLLM's repeated --api-key
        self.admin_key = _digest(admin_key) if admin_key else None
        self.admin_open = admin_key is None and host in LOOPBACK

    def _bearer(self, scope: Scope) -> bytes | None:
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        return _digest(token) if scheme.lower() == "bearer" and token else None

    @staticmethod
    def _matches(token: bytes | None, key: bytes | None) -> bool:
        return token is not None and key is not None and secrets.compare_digest(token, key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS":
            return await self.app(scope, receive, send)
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        token = self._bearer(scope)
        if path.startswith(ADMIN_PREFIXES):
            if self.admin_key is None and not self.admin_open:
                return await _deny(scope, receive, send, 403,
                                   "admin routes are disabled: start mask-serve with --admin-key or bind to loopback")
            if self.admin_key is not None and not self._matches(token, self.admin_key):
                return await _deny(scope, receive, send, 401, "admin routes need 'Authorization: Bearer ADMIN_KEY'")
        elif self.api_keys and path not in PUBLIC_PATHS:
            if not any(self._matches(token, key) for key in [*self.api_keys, self.admin_key]):
                return await _deny(scope, receive, send, 401, "missing or wrong API key (Authorization: Bearer KEY)")
        await self.app(scope, receive, send)


async def _deny(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    await JSONResponse(error_body(message, status), status_code=status)(scope, receive, send)
