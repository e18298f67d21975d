"""The ONNX Runtime peer (whole-model graph, dynamic batching) answers as eeserve's `none`."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from models.build.onnx_export import all_logits
from models.loading import load_text_artifact
from tools.peer_onnx import PEER_GRAPH, create_onnx_peer_app

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
