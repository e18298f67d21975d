"""API-key check: `Authorization: Bearer <key>` when a key is configured, else 401. Pure ASGI.

The key is compared in constant time and never logged; the health, readiness, metrics and docs
paths stay open unless `open_health_and_metrics` is off (see service.app).
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import send_error

DOCS_ASSETS = "/static-offline-docs"  # Swagger UI / ReDoc files shipped by fastapi-offline
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready",
                        "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/"})
OPEN_PREFIXES = (f"{DOCS_ASSETS}/", "/static/")  # the docs' and the playground's files


class ApiKeyMiddleware:
    """401 unless `Authorization: Bearer <key>` matches (constant-time compare)."""

    def __init__(self, app: ASGIApp, api_key: str | None, open_paths: frozenset[str],
                 open_prefixes: tuple[str, ...] = ()):
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.open_paths = open_paths
        self.open_prefixes = open_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.key is None or scope["path"] in self.open_paths \
                or scope["path"].startswith(self.open_prefixes):
            await self.app(scope, receive, send)
            return
        auth = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            await self.app(scope, receive, send)
            return
        rid = scope.get("state", {}).get("request_id", "")
        msg = "missing or wrong API key; send `Authorization: Bearer <key>`"
        await send_error(send, 401, "unauthorized", msg, rid, {"WWW-Authenticate": "Bearer"})
