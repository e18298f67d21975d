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


def _metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_disconnected_client_rows_are_dropped(tiny_artifact: Path, tmp_path: Path) -> None:
    s = start_server([tiny_artifact], tmp_path / "log", None, "--max-batch-size", "1")
    try:
        body = json.dumps({"inputs": TEXTS, "policy": "none"}).encode()
        head = (f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        socks = [socket.create_connection(("127.0.0.1", s.port), timeout=10) for _ in range(4)]
        for sock in socks:  # 4 x 64 texts x 3 layers, one row at a time: well over 0.1 s
            sock.sendall(head + body)
        time.sleep(0.1)
        for sock in socks:
            sock.close()
        for _ in range(100):
            if _metric(s.url, "eeserve_active_rows") == 0:
                break
            time.sleep(0.1)
        computed = _metric(s.url, "eeserve_layers_computed_total")
        time.sleep(1.0)
        assert _metric(s.url, "eeserve_layers_computed_total") == computed  # nothing runs on
        assert computed < 4 * len(TEXTS) * 3  # the full requests would run 768 layer-rows
        log = s.log.read_text()
        assert re.search(r"status=499", log), log[-2000:]
        ok = httpx.post(f"{s.url}/v1/classify", json={"inputs": "still serving"}, timeout=30)
        assert ok.status_code == 200
    finally:
        s.stop()


def test_disconnected_caption_is_cancelled_and_logged_499(tmp_path: Path) -> None:
    from tests.integration.test_caption_api import b64_scene

    out = tmp_path / "tiny-caption"
    build("tiny-caption", BuildOptions(out=out, device="cpu", progress=False))
    s = start_server([out], tmp_path / "log", None, "--max-batch-size", "1")
    try:
        body = json.dumps({"images": [b64_scene(i % 4) for i in range(8)], "policy": "none",
                           "max_tokens": 32}).encode()
        head = (f"POST /v1/caption HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        socks = [socket.create_connection(("127.0.0.1", s.port), timeout=10) for _ in range(4)]
        for sock in socks:  # 4 requests x 8 images x 32 tokens, one request at a time: ~0.7 s
            sock.sendall(head + body)
        time.sleep(0.1)
        for sock in socks:
            sock.close()
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
        assert len(gone) >= 2 and len(gone) + len(answered) == 4, log[-3000:]  # no 200 after
        ok = httpx.post(f"{s.url}/v1/caption", json={"images": [b64_scene(0)]}, timeout=30)
        assert ok.status_code == 200
    finally:
        s.stop()
