"""BodyLimitMiddleware: 413 from the declared length, or while counting a chunked body."""

from __future__ import annotations

from collections.abc import Iterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from service.limits import BodyLimitMiddleware


async def echo_size(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(len(await request.body())))


def client() -> TestClient:
    app = Starlette(routes=[Route("/small", echo_size, methods=["POST", "GET"]),
                            Route("/big", echo_size, methods=["POST"])])
    app.add_middleware(BodyLimitMiddleware, limit_for=lambda p: 1000 if p == "/big" else 10)
    return TestClient(app)


def test_bodies_within_the_limit_pass() -> None:
    r = client().post("/small", content=b"x" * 10)
    assert (r.status_code, r.text) == (200, "10")


def test_declared_length_over_the_path_limit_is_413_naming_the_limit() -> None:
    c = client()
    r = c.post("/small", content=b"x" * 11)
    assert r.status_code == 413
    assert r.json()["code"] == "payload_too_large"
    assert "11 bytes is over the limit of 10 bytes (max_body_bytes)" in r.json()["error"]
    assert c.post("/big", content=b"x" * 11).status_code == 200


def test_chunked_body_is_cut_off_once_it_passes_the_limit() -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b"x" * 4

    r = client().post("/small", content=chunks())  # no Content-Length: counted as it arrives
    assert r.status_code == 413
    assert "over the limit of 10 bytes" in r.text


def test_bad_content_length_is_400() -> None:
    r = client().post("/small", content=b"x", headers={"content-length": "lots"})
    assert r.status_code == 400 and "Content-Length" in r.json()["error"]


def test_get_is_not_limited() -> None:
    assert client().get("/small").status_code == 200
