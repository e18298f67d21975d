"""Caption work bounded before it happens, in-process with the real engine (tiny models): the
caption queue limit is checked before decoding, the deadline covers decoding, image decoding
has its own pool (a stalled decode does not hold up a classification), strips are refused."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

import service.engine.core as core
from service.app import create_app
from service.settings import Settings


def b64_png(w: int, h: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (30, 60, 90)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def client(tiny_artifact: Path, tiny_caption_artifact: Path) -> Iterator[TestClient]:
    s = Settings(models=[str(tiny_artifact), str(tiny_caption_artifact)], device="cpu",
                 log_json=False,
                 caption_queue_limit=3, max_caption_tokens=4)
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture()
def decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Counts engine decodes; `delay` seconds of stall per decode when set."""
    seen: dict[str, Any] = {"calls": 0, "delay": 0.0}
    real = core.decode_images

    def spy(*a: Any, **k: Any) -> Any:
        seen["calls"] += 1
        time.sleep(seen["delay"])
        return real(*a, **k)

    monkeypatch.setattr(core, "decode_images", spy)
    yield seen


def test_a_strip_is_refused_before_decoding(client: TestClient,
                                            decodes: dict[str, Any]) -> None:
    r = client.post("/v1/caption", json={"images": [b64_png(1, 200_000)]})
    assert r.status_code == 400 and r.json()["field"] == "images[0]", r.text
    assert "max_image_aspect" in r.json()["error"] and decodes["calls"] == 0


def test_the_caption_queue_limit_is_checked_before_decoding(
        client: TestClient, decodes: dict[str, Any]) -> None:
    r = client.post("/v1/caption", json={"images": [b64_png(8, 8)] * 4})
    assert r.status_code == 429 and "caption_queue_limit" in r.json()["error"], r.text
    assert decodes["calls"] == 0
    r = client.post("/v1/caption", json={"images": [b64_png(8, 8)] * 2})
    assert r.status_code == 200 and decodes["calls"] == 1, r.text


def test_the_deadline_covers_decoding(client: TestClient, decodes: dict[str, Any]) -> None:
    decodes["delay"] = 1.0
    t0 = time.perf_counter()
    r = client.post("/v1/caption", json={"images": [b64_png(8, 8)], "deadline_ms": 200})
    took = time.perf_counter() - t0
    assert r.status_code == 504 and r.json()["field"] == "deadline_ms", r.text
    assert took < 0.9, took
    runner = client.app.state.engine.captions  # type: ignore[attr-defined]
    time.sleep(1.2)  # the stalled decode ends; its queue room is given back
    assert runner.reserved_rows == 0 and runner.pending_rows == 0


def test_a_stalled_decode_does_not_hold_up_classification(
        client: TestClient, decodes: dict[str, Any]) -> None:
    """Eight stalled caption requests (more than asyncio's default pool has threads on two
    cores): three are admitted and wait on the image pool, five are refused; texts are
    tokenised on their own pool meanwhile."""
    decodes["delay"] = 2.0
    stalled = [threading.Thread(target=client.post, args=("/v1/caption",),
                                kwargs={"json": {"images": [b64_png(8, 8)]}}) for _ in range(8)]
    for t in stalled:
        t.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    r = client.post("/v1/classify", json={"inputs": "a fine film", "policy": "none"})
    took = time.perf_counter() - t0
    for t in stalled:
        t.join(15)
    assert r.status_code == 200, r.text
    assert took < 1.5, f"classify waited {took:.2f} s behind the image pool"


def test_a_full_caption_queue_is_shed_before_the_body_is_read(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.protocol import EngineStatus

    engine = client.app.state.engine  # type: ignore[attr-defined]
    monkeypatch.setattr(engine, "status", lambda: EngineStatus(0, 0, 2, caption_queue_depth=3))
    r = client.post("/v1/caption", content=b"not even JSON",
                    headers={"content-type": "application/json"})
    assert r.status_code == 429 and "caption_queue_limit" in r.json()["error"], r.text
    r = client.post("/v1/classify", json={"inputs": "a fine film"})  # texts have room
    assert r.status_code == 200, r.text
