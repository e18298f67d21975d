"""`POST /v1/caption` in-process with the real engine on a tiny captioner: JSON, SSE, limits."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models.build.caption_data import generated_scenes
from models.build.recipes import BuildOptions, build
from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    out = tmp_path_factory.mktemp("cap") / "tiny-caption"
    build("tiny-caption", BuildOptions(out=out, device="cpu", progress=False))
    settings = Settings(models=[str(out)], device="cpu", log_json=False,
                        max_images_per_request=3, max_image_bytes=20_000,
                        max_image_pixels=100_000, max_caption_tokens=8)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def b64_scene(i: int = 0) -> str:
    buf = io.BytesIO()
    generated_scenes(4, 1, 1, image_size=32).train.image(i).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def bomb_png(w: int, h: int) -> str:
    """A tiny PNG whose header claims w×h pixels (never decoded by the API)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + \
        chunk(b"IEND", b"")
    return base64.b64encode(raw).decode()


def test_caption_json(client: TestClient) -> None:
    r = client.post("/v1/caption", json={"images": [b64_scene(0), b64_scene(1)],
                                         "policy": "none", "max_tokens": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-caption" and body["policy"] == "none"
    assert len(body["results"]) == 2
    for res in body["results"]:
        assert res["num_layers"] == 3 and res["mean_exit_layer"] == 3.0
        assert 0 < len(res["tokens"]) <= 5 or res["caption"] == ""
        assert all(t["exit_layer"] == 3 for t in res["tokens"])
    m = client.get("/v1/models/tiny-caption").json()
    assert m["kind"] == "captioner" and m["num_exits"] == 3


def test_caption_early_exit_per_token(client: TestClient) -> None:
    r = client.post("/v1/caption", json={"images": b64_scene(2), "policy": "maxprob",
                                         "params": {"threshold": 0.0}})
    assert r.status_code == 200, r.text
    res = r.json()["results"][0]
    assert res["mean_exit_layer"] == 1.0 and len(res["tokens"]) <= 8


def test_caption_stream_sends_tokens_then_result_then_done(client: TestClient) -> None:
    with client.stream("POST", "/v1/caption", json={"images": [b64_scene(0)], "stream": True,
                                                    "policy": "none", "max_tokens": 4}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = [(blk.split("\n")[0][7:], json.loads(blk.split("\n")[1][6:]))
              for blk in text.strip().split("\n\n")]
    names = [n for n, _ in events]
    assert names[-2:] == ["result", "done"] and set(names[:-2]) <= {"token"}
    result = events[-2][1]
    assert [d["text"] for n, d in events if n == "token"] == [t["text"] for t in result["tokens"]]
    assert events[-1][1]["model"] == "tiny-caption"


@pytest.mark.parametrize(("body", "field"), [
    ({"images": [b64_scene()] * 4}, "images"),
    ({"images": []}, "images"),
    ({"images": "not base64!"}, "images[0]"),
    ({"images": base64.b64encode(b"hello").decode()}, "images[0]"),
    ({"images": base64.b64encode(b"x" * 21_000).decode()}, "images[0]"),
    ({"images": bomb_png(50_000, 50_000)}, "images[0]"),
    ({"images": bomb_png(400, 400)}, "images[0]"),
    ({"images": b64_scene(), "max_tokens": 9}, "max_tokens"),
    ({"images": b64_scene(), "policy": "maxprob", "params": {"threshold": 3}}, "params"),
    ({"images": b64_scene(), "model": "nope"}, "model"),
])
def test_limits_and_bad_input_name_the_field(client: TestClient, body: dict[str, object],
                                             field: str) -> None:
    r = client.post("/v1/caption", json=body)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["field"] == field, r.json()


def test_stream_errors_before_the_first_token_are_plain_http_errors(client: TestClient) -> None:
    r = client.post("/v1/caption", json={"images": b64_scene(), "stream": True,
                                         "policy": "maxprob", "params": {"bogus": 1}})
    assert r.status_code == 400 and "bogus" in r.json()["error"]


def test_decompression_bomb_is_never_decoded(monkeypatch: pytest.MonkeyPatch,
                                             client: TestClient) -> None:
    calls = []
    monkeypatch.setattr(Image.Image, "load", lambda self: calls.append(1))
    r = client.post("/v1/caption", json={"images": bomb_png(30_000, 30_000)})
    assert r.status_code == 400 and "pixels" in r.json()["error"] and not calls
