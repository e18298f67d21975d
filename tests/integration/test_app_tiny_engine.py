"""The app in-process with the real engine on a tiny trained model: REST and OIP v2 bodies."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.oip import encode_bytes
from service.settings import Settings

TEXTS = ["a great film", "dull and boring", "wonderful acting", "awful"]


@pytest.fixture(scope="module")
def client(tiny_artifact: Path) -> Iterator[TestClient]:
    app = create_app(Settings(models=[str(tiny_artifact)], device="cpu", log_json=False))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_classify_reports_exits_and_timing(client: TestClient) -> None:
    r = client.post("/v1/classify", json={"inputs": TEXTS, "policy": "none",
                                          "return_trace": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-text" and len(body["results"]) == 4
    for res in body["results"]:
        assert res["exit_layer"] == 3 == res["num_layers"] and len(res["trace"]) == 3
        assert abs(sum(res["probabilities"]) - 1) < 1e-4
    assert body["timing"]["total_ms"] >= body["timing"]["compute_ms"] > 0


def test_policies_of_the_artifact_are_listed(client: TestClient) -> None:
    m = client.get("/v1/models/tiny-text").json()
    assert m["num_exits"] == 3 and m["labels"] == ["negative", "positive"]
    assert set(m["per_layer_ms"]) == {"1", "8"}
    assert m["default_policy"]


def test_bad_policy_parameter_is_a_400_naming_it(client: TestClient) -> None:
    r = client.post("/v1/classify", json={"inputs": "a", "policy": "maxprob",
                                          "params": {"threshold": 2}})
    assert r.status_code == 400 and "threshold" in r.json()["error"]
    r = client.post("/v1/classify", json={"inputs": "a", "policy": "maxprob",
                                          "params": {"bogus": 1}})
    assert r.status_code == 400 and "bogus" in r.json()["error"]


def test_oip_json_infer(client: TestClient) -> None:
    body = {"id": "r1", "inputs": [{"name": "TEXT", "shape": [2], "datatype": "BYTES",
                                    "data": TEXTS[:2]}],
            "parameters": {"policy": "none"}}
    r = client.post("/v2/models/tiny-text/infer", content=json.dumps(body))  # no content-type
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["EXIT_LAYER"]["data"] == [3, 3] and out["PROBS"]["shape"] == [2, 2]
    assert r.json()["id"] == "r1" and r.json()["parameters"]["mean_exit_layer"] == 3


def test_oip_binary_infer_round_trip(client: TestClient) -> None:
    raw = encode_bytes([t.encode() for t in TEXTS])
    header = {"inputs": [{"name": "TEXT", "shape": [4, 1], "datatype": "BYTES",
                          "parameters": {"binary_data_size": len(raw)}}],
              "outputs": [{"name": "PROBS", "parameters": {"binary_data": True}},
                          {"name": "EXIT_LAYER", "parameters": {"binary_data": False}}],
              "parameters": {"policy": "none"}}
    head = json.dumps(header).encode()
    r = client.post("/v2/models/tiny-text/infer", content=head + raw,
                    headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    probs = np.frombuffer(r.content[n:], dtype="<f4").reshape(4, 2)
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    exits = next(o for o in meta["outputs"] if o["name"] == "EXIT_LAYER")
    assert exits["data"] == [3, 3, 3, 3]
    rest = client.post("/v1/classify", json={"inputs": TEXTS, "policy": "none"}).json()
    assert np.allclose(probs, [x["probabilities"] for x in rest["results"]], atol=1e-4)


@pytest.mark.parametrize(("header", "extra", "field"), [
    ({"inputs": [{"name": "TEXT", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, None,
     "inputs[0].datatype"),
    ({"inputs": [{"name": "TEXT", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}, None,
     "inputs[0].data"),
    ({"inputs": [{"name": "IMG", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}, None,
     "inputs"),
    ({"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES",
                  "parameters": {"binary_data_size": 9}}]}, struct.pack("<I", 50) + b"abcde",
     "inputs[0]"),
    ({"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
      "parameters": {"latency_budget_ms": -5}}, None, "parameters.latency_budget_ms"),
    ({"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
      "outputs": [{"name": "NOPE"}]}, None, "outputs"),
])
def test_oip_bad_requests(client: TestClient, header: dict[str, object], extra: bytes | None,
                          field: str) -> None:
    head = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(head))} if extra else {}
    r = client.post("/v2/models/tiny-text/infer", content=head + (extra or b""), headers=headers)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"] and r.json()["field"].startswith(field)


def test_oip_malformed_binary_header_length(client: TestClient) -> None:
    r = client.post("/v2/models/tiny-text/infer", content=b'{"inputs": []}',
                    headers={"Inference-Header-Content-Length": "999"})
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]
    r = client.post("/v2/models/nope/infer", content=b"{}")
    assert r.status_code == 404 and r.json()["error"]


def test_metrics_hold_exit_histogram_and_layer_counters(client: TestClient) -> None:
    client.post("/v1/classify", json={"inputs": TEXTS, "policy": "none"})
    text = client.get("/metrics").text
    assert 'eeserve_exit_layer_bucket{le="2.5",model="tiny-text",policy="none"}' in text
    assert 'eeserve_layers_computed_total{model="tiny-text"}' in text
    assert "eeserve_loaded_models 1.0" in text


def test_shadow_requests_show_up_as_live_agreement(client: TestClient) -> None:
    import time

    body = {"inputs": TEXTS, "policy": "maxprob", "params": {"threshold": 0.0}, "shadow": True}
    r = client.post("/v1/classify", json=body)
    assert r.status_code == 200 and {x["exit_layer"] for x in r.json()["results"]} == {1}
    v2 = {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": TEXTS[:1]}],
          "parameters": {"policy": "maxprob", "threshold": 0.0, "shadow": True}}
    assert client.post("/v2/models/tiny-text/infer", json=v2).status_code == 200
    bad = {**v2, "parameters": {"shadow": "yes"}}
    r = client.post("/v2/models/tiny-text/infer", json=bad)
    assert r.status_code == 400 and r.json()["field"] == "parameters.shadow"
    exits: dict = {}
    deadline = time.monotonic() + 30  # the checks run while the engine is idle (slow on a busy CI)
    while time.monotonic() < deadline:
        live = client.get("/v1/models/tiny-text").json()["details"]["live_agreement"]
        exits = next(iter(live["policies"].values()), {}).get("exits", {})
        if exits.get("1", {}).get("checks") == 5:
            break
        time.sleep(0.05)
    assert exits["1"]["checks"] == 5 and 0 <= exits["1"]["agreement"] <= 1
    # what an operator sees of the drift alarm: nothing up (5 checks are below the support floor)
    assert live["alarms"] == [] and live["on_alarm"] == "none"
    assert next(iter(live["policies"].values()))["alarm"]["firing"] is False
    assert "# TYPE eeserve_drift_alarm gauge" in client.get("/metrics").text
