"""A client that disconnects has its work cancelled: its rows leave the engine (classify and
caption alike), and the request is logged 499."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import httpx

from models.build.recipes import BuildOptions, build
from tests.e2e.server import start_server

TEXTS = ["a great film", "dull and boring", "wonderful acting", "awful"] * 16  # 64 texts
CLIENTS = 24  # requests sent at once; the server runs them one row at a time
ROOMY = {"EESERVE_QUEUE_LIMIT": "4096", "EESERVE_CAPTION_QUEUE_LIMIT": "1024",
         "EESERVE_MAX_INFLIGHT_REQUESTS": "256"}  # every request is queued, none shed


def _send_then_hang_up(url: str, port: int, path: str, payload: dict[str, object]) -> None:
    """Send CLIENTS raw requests, wait until the engine has computed something, close them all.

    Waiting on the engine (not on a clock) keeps the test honest on fast and slow machines: the
    work queued is many times what runs before the hang-up, whatever the speed."""
    body = json.dumps(payload).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(CLIENTS)]
    for sock in socks:
        sock.sendall(head + body)
    end = time.monotonic() + 30
    while _metric(url, "eeserve_layers_computed_total") == 0 and time.monotonic() < end:
        time.sleep(0.005)
    for sock in socks:
        sock.close()


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_disconnected_client_rows_are_dropped(tiny_artifact: Path, tmp_path: Path) -> None:
    s = start_server([tiny_artifact], tmp_path / "log", ROOMY, "--max-batch-size", "1")
    try:
        _send_then_hang_up(s.url, s.port, "/v1/classify", {"inputs": TEXTS, "policy": "none"})
        for _ in range(100):
            if _metric(s.url, "eeserve_active_rows") == 0:
                break
            time.sleep(0.1)
        computed = _metric(s.url, "eeserve_layers_computed_total")
        time.sleep(1.0)
        assert _metric(s.url, "eeserve_layers_computed_total") == computed  # nothing runs on
        full = CLIENTS * len(TEXTS) * 3  # layer-rows of every request run to the end
        assert computed < full / 2, (computed, full)
        log = s.log.read_text()
        assert len(re.findall(r"path=/v1/classify status=499", log)) >= CLIENTS // 2, log[-3000:]
        ok = httpx.post(f"{s.url}/v1/classify", json={"inputs": "still serving"}, timeout=30)
        assert ok.status_code == 200
    finally:
        s.stop()


def test_disconnected_caption_is_cancelled_and_logged_499(tmp_path: Path) -> None:
    from tests.integration.test_caption_api import b64_scene

    out = tmp_path / "tiny-caption"
    build("tiny-caption", BuildOptions(out=out, device="cpu", progress=False))
    s = start_server([out], tmp_path / "log", ROOMY, "--max-batch-size", "1")
    try:
        images = [b64_scene(i % 4) for i in range(8)]
        _send_then_hang_up(s.url, s.port, "/v1/caption",
                           {"images": images, "policy": "none", "max_tokens": 32})
        for _ in range(100):
            if _metric(s.url, "eeserve_active_rows") == 0:
                break
            time.sleep(0.1)
        assert _metric(s.url, "eeserve_active_rows") == 0  # true at rest
        assert _metric(s.url, "eeserve_queue_depth") == 0
        tokens = _metric(s.url, "eeserve_layers_computed_total")
        time.sleep(1.0)
        assert _metric(s.url, "eeserve_layers_computed_total") == tokens  # nothing runs on
        log = s.log.read_text()
        gone = re.findall(r"path=/v1/caption status=499", log)
        answered = re.findall(r"path=/v1/caption status=200", log)
        assert len(gone) >= CLIENTS // 2, log[-3000:]
        assert len(gone) + len(answered) == CLIENTS, log[-3000:]  # each logged once
        ok = httpx.post(f"{s.url}/v1/caption", json={"images": [b64_scene(0)]}, timeout=30)
        assert ok.status_code == 200
    finally:
        s.stop()
