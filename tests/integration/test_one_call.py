"""Rows that must reach the last exit (`none`) run the whole-model ONNX graph in one call and
answer as the layer-by-layer path does; a trace or a budget keeps them on the layer path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

TEXTS = ["a great film", "dull and boring", "wonderful acting, awful plot", "awful"]


@pytest.fixture(scope="module")
def client(tiny_artifact: Path) -> Iterator[TestClient]:
    settings = Settings(models=[str(tiny_artifact)], device="cpu", backend="onnx",
                        log_json=False, workers=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def layers_computed(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('eeserve_layers_computed_total{model="tiny-text"}'):
            return float(line.split()[-1])
    return 0.0


def test_the_export_holds_a_whole_graph_that_matches_torch(tiny_artifact: Path) -> None:
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    entry = manifest["onnx"]["fp32"]
    assert "onnx/fp32/whole.onnx" in entry["graphs"]
    assert entry["parity"]["whole_max_abs_diff"] <= entry["parity"]["atol"]
    assert entry["parity"]["whole_final_agreement"] == 1.0


def test_none_answers_in_one_call_as_the_layer_path_does(client: TestClient) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    model = engine.served["tiny-text"].text_model
    assert model.has_whole
    calls = {"whole": 0}
    run_whole = model.run_whole

    def counted(enc):  # type: ignore[no-untyped-def]
        calls["whole"] += 1
        return run_whole(enc)

    model.run_whole = counted
    try:
        before = layers_computed(client)
        fast = client.post("/v1/classify", json={"inputs": TEXTS, "policy": "none"}).json()
        split = engine.cfg.parallel_steps  # cut into as many calls as the step pool runs
        assert calls["whole"] == split
        assert layers_computed(client) - before == 3 * len(TEXTS)  # counted as K layers a row
        slow = client.post("/v1/classify", json={"inputs": TEXTS, "policy": "none",
                                                 "return_trace": True}).json()
        assert calls["whole"] == split  # a trace needs every exit: the layer path
    finally:
        model.run_whole = run_whole
    for a, b in zip(fast["results"], slow["results"], strict=True):
        assert a["exit_layer"] == b["exit_layer"] == 3 and a["label"] == b["label"]
        assert max(abs(x - y) for x, y in zip(a["probabilities"], b["probabilities"],
                                              strict=True)) < 1e-4


def test_a_latency_budget_keeps_rows_on_the_layer_path(client: TestClient) -> None:
    engine = client.app.state.engine  # type: ignore[attr-defined]
    model = engine.served["tiny-text"].text_model
    run_whole = model.run_whole
    model.run_whole = None  # any call would fail the request
    try:
        r = client.post("/v1/classify", json={"inputs": TEXTS[:2], "policy": "none",
                                              "latency_budget_ms": 10_000})
        assert r.status_code == 200, r.text
        r = client.post("/v1/classify", json={"inputs": TEXTS[:2], "policy": "beem"})
        assert r.status_code == 200, r.text  # a policy that may exit early: the layer path
    finally:
        model.run_whole = run_whole
