"""`python -m bench.peers.onnx --runtime torch`: the full-depth torch baseline on a tiny
artifact behind a real uvicorn.

`tiny_artifact` is the session fixture of tests/conftest.py.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn

from bench.peers.onnx import create_peer_app, main
from tools.loadtest.driver import Bound
from tools.loadtest.records import LoadSpec
from tools.loadtest.runner import BenchPlan, run_bench_sync
from tools.loadtest.workloads import ClassifyWorkload, RequestOptions, TextPool

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


@pytest.fixture(scope="module")
def peer(tiny_artifact: Path) -> Iterator[tuple[str, object]]:
    app = create_peer_app(tiny_artifact, threads=1)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "peer did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    srv.should_exit = True
    thread.join(timeout=20)
    sock.close()


def test_answers_like_eeserve_at_full_depth(peer, tiny_artifact):
    url, app = peer
    texts = ["the film was great and moving", "dull boring plot", "a " * 200]
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").status_code == 200
        r = c.post("/v1/classify", json={"inputs": texts, "policy": "beem"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["policy"] == "none" and body["model"] == "tiny-text"
    assert {"queue_ms", "compute_ms", "total_ms"} <= set(body["timing"])
    results = body["results"]
    assert [x["exit_layer"] for x in results] == [3, 3, 3]
    assert all(x["num_layers"] == 3 and not x["budget_forced"] for x in results)
    assert [x["truncated"] for x in results] == [False, False, True]
    model = app.state.peer.model
    last = model.all_exit_logits(model.encode(texts))[:, -1]  # the stepwise path, last exit
    want = torch.softmax(last.float(), -1)
    got = torch.tensor([x["probabilities"] for x in results])
    assert torch.allclose(got, want, atol=1e-4)
    assert [x["label_id"] for x in results] == want.argmax(-1).tolist()
    assert results[0]["label"] in ("negative", "positive")


def test_rejects_bad_requests_with_error_bodies(peer):
    url, _ = peer
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as c:
        for body in ({"inputs": []}, {"inputs": "x" * 3000}, {"inputs": 3}, {"text": "a"}):
            r = c.post("/v1/classify", json=body)
            assert r.status_code == 400, body
            assert r.json()["code"] == "bad_request" and r.json()["error"]


def test_one_request_at_a_time_and_bench_sees_full_depth(peer):
    url, app = peer
    state = {"now": 0, "max": 0}
    real = app.state.peer.classify

    def tracked(texts):
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        time.sleep(0.005)
        try:
            return real(texts)
        finally:
            state["now"] -= 1

    app.state.peer.classify = tracked
    try:
        pool = TextPool(["great fun", "dull bland", "moving and charming", "awful"],
                        [1, 0, 1, 0], ["negative", "positive"], "t")
        plan = BenchPlan(url=url, policies=[None], loads=[LoadSpec("closed", 6)],
                         bound=Bound(requests=30))
        (r,) = run_bench_sync(plan, lambda p: ClassifyWorkload(pool, 2, RequestOptions())).runs
    finally:
        app.state.peer.classify = real
    assert state["max"] == 1
    assert r.ok == 30 and r.samples == 60 and r.exit_histogram == {3: 60}
    assert r.mean_exit_layer == 3.0 and r.accuracy is not None
    assert r.server_queue_ms_p50 is not None and r.server_queue_ms_p50 > 1.0  # waited the lock


def test_peer_command_refuses_missing_artifact(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--runtime", "torch"]) == 2
    assert "not an artifact directory" in capsys.readouterr().err


def test_peer_app_not_ready_before_load(tiny_artifact):
    from fastapi.testclient import TestClient

    app = create_peer_app(tiny_artifact)
    client = TestClient(app)  # no lifespan: the model never loads
    assert client.get("/readyz").status_code == 503
    r = client.post("/v1/classify", json={"inputs": "x"})
    assert r.status_code == 503 and r.json()["code"] == "not_ready"
