"""Connection hygiene on a real uvicorn (service/serving.py): connections that send nothing,
half a head or half a body are answered 408 and closed within the timeout; idle keep-alive
connections are closed; one connection over the cap gets a 503; requests still running when the
shutdown grace period ends get the JSON 503 with their request id, and no traceback is logged."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import Server, start_server

pytestmark = pytest.mark.timeout(180)
LIMITS = {"EESERVE_TIMEOUT_HEADERS_S": "1", "EESERVE_TIMEOUT_BODY_S": "1",
          "EESERVE_TIMEOUT_KEEP_ALIVE_S": "1", "EESERVE_MAX_CONNECTIONS": "4"}


@pytest.fixture(scope="module")
def guarded(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server([tiny_artifact], tmp_path_factory.mktemp("conn") / "log", LIMITS)
    yield s
    s.stop()


def closed_after(server: Server, sent: bytes, within: float = 5.0) -> tuple[float, bytes]:
    """Send `sent`, then read until the server closes: (seconds until closed, bytes read)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=within) as sock:
        if sent:
            sock.sendall(sent)
        got = b""
        while True:
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                raise AssertionError(f"still open after {within} s; read {got!r}") from None
            if not chunk:
                return time.monotonic() - t0, got
            got += chunk


HEAD = b"POST /v1/classify HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"


@pytest.mark.parametrize("sent", [b"", HEAD, HEAD + b"content-length: 100\r\n\r\n{\"inp"],
                         ids=["nothing", "half-head", "half-body"])
def test_a_stalled_request_is_answered_408_and_closed(guarded: Server, sent: bytes) -> None:
    took, got = closed_after(guarded, sent)
    assert 0.8 < took < 3.0, took
    assert got.startswith(b"HTTP/1.1 408"), got
    body = json.loads(got.split(b"\r\n\r\n", 1)[1])
    assert body["code"] == "timeout" and "timeout_" in body["error"]


def test_an_idle_keep_alive_connection_is_closed(guarded: Server) -> None:
    req = (b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
    took, got = closed_after(guarded, req)
    assert got.startswith(b"HTTP/1.1 200") and took < 3.5, (took, got)


def test_one_connection_over_the_cap_gets_503(guarded: Server) -> None:
    socks = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(4)]
    try:
        time.sleep(0.2)
        took, got = closed_after(guarded, b"")
        assert got.startswith(b"HTTP/1.1 503") and took < 0.5, (took, got)
        assert b"max_connections" in got
    finally:
        for s in socks:
            s.close()
    time.sleep(0.2)
    assert httpx.get(f"{guarded.url}/healthz", timeout=5).status_code == 200


def test_requests_running_at_the_end_of_the_grace_get_json_503(tiny_artifact: Path,
                                                               tmp_path: Path) -> None:
    """A request still reading its body when the 1 s grace ends is answered 503 JSON."""
    env = {"EESERVE_SHUTDOWN_GRACE_S": "1", "EESERVE_TIMEOUT_BODY_S": "60"}
    s = start_server([tiny_artifact], tmp_path / "log", env)
    try:
        sock = socket.create_connection(("127.0.0.1", s.port), timeout=20)
        sock.sendall(HEAD + b"x-request-id: stuck-1\r\ncontent-length: 100\r\n\r\n{\"inp")
        time.sleep(0.5)
        s.proc.send_signal(signal.SIGTERM)
        got = b""
        while chunk := sock.recv(4096):
            got += chunk
        sock.close()
    finally:
        s.stop()
    head, body = got.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503"), got
    err = json.loads(body)
    assert err["request_id"] == "stuck-1" and "shutdown_grace_s" in err["error"], err
    log = s.log.read_text()
    assert "Traceback" not in log, log[-3000:]
