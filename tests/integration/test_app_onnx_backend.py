"""The app on the ONNX Runtime backend answers exactly as on torch (every policy)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

TEXTS = ["a great film", "dull and boring", "wonderful acting , not bad at all", "awful",
         "the plot is nothing but boilerplate", "fresh music and a fine cast"]
POLICIES = ["none", "beem", "eenet", "maxprob", "entropy", "patience", "static"]


def _client(art: Path, backend: str) -> TestClient:
    return TestClient(create_app(Settings(models=[str(art)], device="cpu", backend=backend,
                                          log_json=False)), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def clients(tiny_artifact: Path) -> Iterator[dict[str, TestClient]]:
    with _client(tiny_artifact, "onnx") as onnx, _client(tiny_artifact, "torch") as ref:
        yield {"onnx": onnx, "torch": ref}


def _answers(c: TestClient, policy: str, texts: list[str]) -> list[tuple[int, int]]:
    r = c.post("/v1/classify", json={"inputs": texts, "policy": policy})
    assert r.status_code == 200, r.text
    return [(x["label_id"], x["exit_layer"]) for x in r.json()["results"]]


@pytest.mark.parametrize("policy", POLICIES)
def test_same_labels_and_exits_batched_and_alone(clients: dict[str, TestClient],
                                                 policy: str) -> None:
    batched = _answers(clients["onnx"], policy, TEXTS)
    assert batched == _answers(clients["torch"], policy, TEXTS)
    alone = [_answers(clients["onnx"], policy, [t])[0] for t in TEXTS]
    assert alone == batched


def test_models_say_which_backend_serves(clients: dict[str, TestClient]) -> None:
    d = clients["onnx"].get("/v1/models/tiny-text").json()["details"]
    assert d["backend"] == "onnx" and d["precision"] == "fp32"
    assert d["calibrated_on"]["parity_with"] == "onnx"
    assert clients["torch"].get("/v1/models/tiny-text").json()["details"]["backend"] == "torch"


def test_trace_and_budget_work_on_onnx(clients: dict[str, TestClient]) -> None:
    r = clients["onnx"].post("/v1/classify", json={"inputs": TEXTS[:2], "policy": "none",
                                                   "return_trace": True,
                                                   "latency_budget_ms": 10_000})
    assert r.status_code == 200, r.text
    for res in r.json()["results"]:
        assert [t["layer"] for t in res["trace"]] == [1, 2, 3]
