"""The ONNX Runtime peer (whole-model graph, dynamic batching) answers as eeserve's `none`;
`--workers 2` serves from two worker processes."""

from __future__ import annotations

import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from bench.harness import running, start
from bench.peers.onnx import PEER_GRAPH, PID_HEADER, create_onnx_peer_app
from models.build.onnx_export import all_logits
from models.loading import load_text_artifact

TEXTS = ["a great film", "dull and boring", "wonderful acting , not bad at all", "awful"]


@pytest.fixture(scope="module")
def art(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("peer") / "tiny"
    shutil.copytree(tiny_artifact, dst)
    return dst


def test_peer_matches_the_last_exit_and_batches_concurrent_requests(art: Path) -> None:
    ref = all_logits(load_text_artifact(art).model, TEXTS)[:, -1]  # (B, C) last exit
    with TestClient(create_onnx_peer_app(art, max_batch=8, max_delay_ms=20)) as c:
        assert (art / PEER_GRAPH).exists()
        r = c.post("/v1/classify", json={"inputs": TEXTS})
        assert r.status_code == 200, r.text
        got = r.json()["results"]
        assert [x["label_id"] for x in got] == ref.argmax(-1).tolist()
        assert all(x["exit_layer"] == x["num_layers"] == 3 for x in got)
        with ThreadPoolExecutor(4) as pool:  # one text each, collected into shared batches
            outs = list(pool.map(lambda t: c.post("/v1/classify", json={"inputs": t}), TEXTS))
        assert [o.json()["results"][0]["label_id"] for o in outs] == ref.argmax(-1).tolist()
        bad = c.post("/v1/classify", json={"inputs": []})
        assert bad.status_code in (400, 422) and "inputs" in bad.text


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_workers_answer_from_two_processes(art: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "bench.peers.onnx", str(art), "--host", "127.0.0.1",
           "--workers", "2", "--threads", "1", "--max-batch", "8"]
    server = start("peer-onnx-w2", cmd, tmp_path / "peer.log", timeout=120)
    with running(server):

        def ask(text: str) -> int:  # a fresh connection: the worker that accepts it answers
            r = httpx.post(server.url + "/v1/classify", json={"inputs": text}, timeout=30,
                           trust_env=False)
            assert r.status_code == 200, r.text
            assert r.json()["results"][0]["exit_layer"] == 3
            return int(r.headers[PID_HEADER])

        seen: set[int] = set()
        deadline = time.monotonic() + 60  # the second worker may still be loading at first
        with ThreadPoolExecutor(8) as pool:
            while len(seen) < 2 and time.monotonic() < deadline:
                seen.update(pool.map(ask, TEXTS * 4))
        assert len(seen) == 2, f"answers came from {seen} only: {server.log_tail()}"
        assert seen <= set(server.pids()) - {server.proc.pid}  # two worker processes
