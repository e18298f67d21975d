"""RequestContextMiddleware: request ids, one RequestStats per inference request, safe 500s."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from service.middleware import (
    RequestContextMiddleware,
    endpoint_of,
    new_request_id,
    status_label,
)
from service.stats import NullSink, RequestStats


class ListSink(NullSink):
    def __init__(self) -> None:
        self.requests: list[RequestStats] = []

    def record_request(self, s: RequestStats) -> None:
        self.requests.append(s)


async def classify(request: Request) -> Response:
    labels = request.state.labels
    labels.model, labels.policy, labels.items, labels.queue_seconds = "m", "beem", 2, 0.25
    return PlainTextResponse(request.state.request_id, status_code=int(
        request.query_params.get("status", "200")))


async def boom(request: Request) -> Response:
    raise RuntimeError("secret detail")


@contextmanager
def records(name: str) -> Iterator[list[logging.LogRecord]]:
    """The records logged on `name` (a handler on the logger itself: independent of whatever
    propagation another test's logging config left behind)."""
    got: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    logger, handler = logging.getLogger(name), Keep()
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield got
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def client(sink: ListSink) -> TestClient:
    app = Starlette(routes=[Route("/v1/classify", classify, methods=["POST"]),
                            Route("/healthz", classify, methods=["GET"]),
                            Route("/v1/caption", boom, methods=["POST"])])
    app.add_middleware(RequestContextMiddleware, sink=sink)
    return TestClient(app, raise_server_exceptions=False)


def test_request_id_is_kept_when_plain_else_replaced() -> None:
    c = client(ListSink())
    r = c.post("/v1/classify", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123" == r.text
    r = c.post("/v1/classify", headers={"x-request-id": "bad id\twith spaces"})
    assert r.headers["x-request-id"] == r.text and len(r.text) == 32
    assert new_request_id("x" * 129) != "x" * 129 and new_request_id(None)


def test_one_request_stats_per_inference_request_with_the_route_labels() -> None:
    sink = ListSink()
    c = client(sink)
    c.post("/v1/classify")
    c.post("/v1/classify?status=429")
    c.get("/healthz")
    assert [(s.model, s.policy, s.endpoint, s.status) for s in sink.requests] == [
        ("m", "beem", "classify", "ok"), ("m", "beem", "classify", "overloaded")]
    assert sink.requests[0].queue_seconds == 0.25
    assert sink.requests[0].total_seconds > 0


def test_unhandled_error_is_a_500_quoting_the_request_id() -> None:
    sink = ListSink()
    with records("eeserve.error") as logged:
        r = client(sink).post("/v1/caption", headers={"x-request-id": "rid-1"})
    assert r.status_code == 500
    body = r.json()
    assert body["code"] == "internal" and "rid-1" in body["error"]
    assert "secret detail" not in r.text
    assert len(logged) == 1
    extra = vars(logged[0])
    assert extra["request_id"] == "rid-1" and extra["error"] == "RuntimeError: secret detail"
    assert "secret detail" in extra["trace"]
    assert [(s.endpoint, s.status, s.model) for s in sink.requests] == [
        ("caption", "error", "unknown")]


def test_one_access_log_line_without_the_query_string() -> None:
    with records("eeserve.access") as logged:
        client(ListSink()).post("/v1/classify?token=hidden", headers={"x-request-id": "r2"})
    assert len(logged) == 1
    extra = vars(logged[0])
    assert [extra[k] for k in ("request_id", "path", "status", "model", "items")] == [
        "r2", "/v1/classify", 200, "m", 2]
    assert "hidden" not in str(extra)


@pytest.mark.parametrize(("code", "label"), [
    (200, "ok"), (204, "ok"), (400, "bad_request"), (401, "unauthorized"), (404, "not_found"),
    (413, "bad_request"), (418, "bad_request"), (429, "overloaded"), (499, "cancelled"),
    (500, "error"), (503, "error"), (504, "timeout")])
def test_status_label(code: int, label: str) -> None:
    assert status_label(code) == label


@pytest.mark.parametrize(("path", "endpoint"), [
    ("/v1/classify", "classify"), ("/v1/caption", "caption"), ("/v2/models/m/infer", "infer"),
    ("/v2/models/m/versions/1/infer", "infer"), ("/v2/models/m", None), ("/healthz", None),
    ("/v2/models/a/b/infer", None)])
def test_endpoint_of(path: str, endpoint: str | None) -> None:
    assert endpoint_of(path) == endpoint
