"""ApiKeyMiddleware: Bearer key required when configured, open paths stay open."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service.auth import OPEN_PATHS, ApiKeyMiddleware


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


def client(key: str | None, open_paths: frozenset[str] = OPEN_PATHS) -> TestClient:
    app = Starlette(routes=[Route("/v1/classify", ok, methods=["POST"]), Route("/healthz", ok)])
    app.add_middleware(ApiKeyMiddleware, api_key=key, open_paths=open_paths)
    return TestClient(app)


def test_no_key_configured_lets_everything_through() -> None:
    assert client(None).post("/v1/classify").status_code == 200


def test_missing_or_wrong_key_is_401_with_the_uniform_body() -> None:
    c = client("s3cret")
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic s3cret"},
                    {"Authorization": "s3cret"}):
        r = c.post("/v1/classify", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
        body = r.json()
        assert body["code"] == "unauthorized" and "Authorization: Bearer" in body["error"]
        assert "s3cret" not in r.text


def test_right_key_passes_whatever_the_scheme_case() -> None:
    c = client("s3cret")
    assert c.post("/v1/classify", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.post("/v1/classify", headers={"Authorization": "bearer s3cret"}).status_code == 200


def test_open_paths_need_no_key_unless_closed() -> None:
    assert client("k").get("/healthz").status_code == 200
    assert client("k", frozenset()).get("/healthz").status_code == 401
