"""Load shedding's fast path on a real uvicorn (service/serving.py `GuardedHTTP._shed`): a
request the app's Shedder refuses is answered 429 from the HTTP protocol -- the app and its
middleware never see it -- held `shed_hold_ms`, with Retry-After and the request id, counted in
the metrics; the connection stays usable (the refused body is dropped, a pipelined request is
answered in order)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.protocol import EngineStatus
from service.serving import GracefulServer, server_for
from service.settings import Settings
from service.shedding import LoadShedMiddleware, Shedder
from tests.e2e.server import free_port
from tests.integration.fake_engine import FakeEngine

pytestmark = pytest.mark.timeout(60)


class QueueEngine(FakeEngine):
    """A fake engine whose queue is full while `full` is set."""

    full = True

    def status(self) -> EngineStatus:
        return EngineStatus(queue_depth=8 if self.full else 0, active_rows=0, loaded_models=1)


@dataclass
class Live:
    url: str
    port: int
    engine: QueueEngine
    server: GracefulServer
    middleware_refusals: list[str]
    shedder: Shedder


@contextmanager
def _serving(monkeypatch: pytest.MonkeyPatch, **settings: Any) -> Iterator[Live]:
    refusals: list[str] = []
    original = LoadShedMiddleware._refuse

    async def counted(self: LoadShedMiddleware, *a: object) -> None:
        refusals.append(str(a[2]))
        await original(self, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(LoadShedMiddleware, "_refuse", counted)
    port = free_port()
    config = Settings(host="127.0.0.1", port=port, queue_limit=8, log_json=False, **settings)
    engine = QueueEngine()
    app = create_app(config, engine=engine)
    server = server_for(app, config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    end = time.monotonic() + 20
    while not server.started and time.monotonic() < end:
        time.sleep(0.02)
    assert server.started
    try:
        yield Live(f"http://127.0.0.1:{port}", port, engine, server, refusals, app.state.shedder)
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def live(monkeypatch: pytest.MonkeyPatch) -> Iterator[Live]:
    with _serving(monkeypatch, shed_hold_ms=200) as s:
        yield s


def _post(body: bytes, rid: str = "rid-1") -> bytes:
    return (b"POST /v1/classify HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"x-request-id: " + rid.encode() + b"\r\ncontent-length: " +
            str(len(body)).encode() + b"\r\n\r\n" + body)


class Reader:
    """HTTP/1.1 responses read off one socket in order (bytes past one are kept)."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buf = sock, b""

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
        n = int(headers["content-length"])
        while len(self.buf) < n:
            self.buf += self.sock.recv(65536)
        body, self.buf = self.buf[:n], self.buf[n:]
        return int(lines[0].split()[1]), headers, body


def _overloaded(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("eeserve_requests_total{") and 'status="overloaded"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_refused_in_the_protocol_held_and_the_connection_goes_on(live: Live) -> None:
    body = json.dumps({"inputs": ["a fine film"]}).encode()
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        r = Reader(sock)
        t0 = time.monotonic()
        sock.sendall(_post(body))
        status, headers, got = r.response()
        took = time.monotonic() - t0
        assert status == 429 and took >= 0.19, (status, took)
        assert headers["retry-after"] == "1" and headers["x-request-id"] == "rid-1"
        answer = json.loads(got)
        assert answer["code"] == "overloaded" and answer["request_id"] == "rid-1"
        assert "queue_limit" in answer["error"]
        # the same connection: a refusal whose body comes late, then a pipelined request
        live.engine.full = False
        sock.sendall(_post(body, "rid-2")[:-5])
        time.sleep(0.05)
        sock.sendall(_post(body, "rid-2")[-5:] + b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        status2, headers2, got2 = r.response()
        assert status2 == 200 and json.loads(got2)["results"], got2
        status3, _, _ = r.response()
        assert status3 == 200
    assert live.middleware_refusals == []  # the protocol answered; the app never saw it
    assert live.engine.requests and len(live.engine.requests) == 1  # only the admitted one
    assert _overloaded(live.url) == 1


def test_a_refused_body_is_dropped_and_the_next_request_is_served(live: Live) -> None:
    body = json.dumps({"inputs": ["x" * 100] * 4}).encode()
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        r = Reader(sock)
        head, rest = _post(body).split(b"\r\n\r\n", 1)
        sock.sendall(head + b"\r\n\r\n")  # the head alone: refused before its body comes
        status, _, _ = r.response()
        assert status == 429
        live.engine.full = False
        sock.sendall(rest)  # the refused request's body, to be dropped
        sock.sendall(_post(json.dumps({"inputs": ["ok"]}).encode(), "rid-3"))
        status2, headers2, got2 = r.response()
        assert status2 == 200 and headers2["x-request-id"] == "rid-3", got2
    assert [r.texts for r in live.engine.requests] == [["ok"]]


def test_pipelined_refusals_answer_in_order_without_a_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps({"inputs": ["a"]}).encode()
    with _serving(monkeypatch, shed_hold_ms=0) as live, \
            socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        r = Reader(sock)
        sock.sendall(b"".join(_post(body, f"p{i}") for i in range(300)))  # one write
        ids = []
        for _ in range(300):
            status, headers, _ = r.response()
            assert status == 429
            ids.append(headers["x-request-id"])
        assert ids == [f"p{i}" for i in range(300)]
        assert live.middleware_refusals == [] and live.engine.requests == []


def test_a_request_let_in_counts_in_flight_before_the_app_runs_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    body = json.dumps({"inputs": ["a"]}).encode()
    with _serving(monkeypatch, shed_hold_ms=0, max_inflight_requests=1) as live:
        live.engine.full = False
        live.engine.delay_s = 0.5
        with socket.create_connection(("127.0.0.1", live.port), timeout=10) as a, \
                socket.create_connection(("127.0.0.1", live.port), timeout=10) as b:
            a.sendall(_post(body, "first"))
            time.sleep(0.1)
            assert live.shedder.inflight == 1
            b.sendall(_post(body, "second"))
            status_b, _, got_b = Reader(b).response()
            assert status_b == 429 and "max_inflight_requests" in json.loads(got_b)["error"]
            status_a, _, _ = Reader(a).response()
            assert status_a == 200
        assert live.middleware_refusals == []  # refused by the protocol
        assert live.shedder.inflight == 0
