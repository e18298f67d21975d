"""The HTTP layer over a fake engine: routes, validation, errors, auth, metrics, lifespan."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.app import create_app
from service.protocol import DeadlineExceeded, InternalError, Overloaded
from service.settings import Settings
from tests.integration.fake_engine import FakeEngine

ROOT = Path(__file__).parents[2]


def _client(engine: FakeEngine | None = None, **settings: object) -> TestClient:
    s = Settings(log_json=False, **settings)  # type: ignore[arg-type]
    return TestClient(create_app(s, engine=engine or FakeEngine()), raise_server_exceptions=False)


@pytest.fixture()
def client() -> Iterator[TestClient]:
    with _client(max_texts_per_request=4, max_chars_per_text=50) as c:
        yield c


def test_http_layer_imports_no_torch() -> None:
    code = "import sys, service.app, service.routes_v1, service.routes_v2, service.schemas; " \
           "assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_lifespan_starts_and_stops_the_engine() -> None:
    eng = FakeEngine()
    with _client(eng) as c:
        assert eng.started and c.get("/readyz").status_code == 200
    assert eng.stopped


def test_readyz_is_503_until_models_load() -> None:
    with _client(FakeEngine(ready=False)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.json()["models"][0]["error"] == "still loading"
        assert c.get("/healthz").status_code == 200
        assert c.get("/v2/health/ready").status_code == 503
        assert c.post("/v1/classify", json={"inputs": "x"}).status_code == 503


def test_classify_one_text_and_a_list(client: TestClient) -> None:
    r = client.post("/v1/classify", json={"inputs": "abc de"})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "fake" and body["policy"] == "beem"
    assert body["results"][0]["label"] == "even" and body["results"][0]["exit_layer"] == 2
    assert r.headers["x-request-id"] == body["request_id"]
    r = client.post("/v1/classify", json={"inputs": ["a", "bb", "c c c"], "policy": "maxprob",
                                          "params": {"threshold": 0.9}})
    assert [x["label_id"] for x in r.json()["results"]] == [1, 0, 1]
    assert r.json()["policy"] == "maxprob"


def test_request_id_is_echoed(client: TestClient) -> None:
    r = client.post("/v1/classify", json={"inputs": "a"}, headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123" == r.json()["request_id"]


@pytest.mark.parametrize(("body", "status", "field", "words"), [
    ({"inputs": []}, 400, "inputs", "at least one"),
    ({"inputs": [1]}, 400, "inputs[0]", "string"),
    ({"inputs": "   "}, 400, "inputs[0]", "empty"),
    ({"inputs": "x" * 51}, 400, "inputs[0]", "limit of 50"),
    ({"inputs": ["a"] * 5}, 400, "inputs", "limit of 4"),
    ({"inputs": "a", "model": "nope"}, 404, "model", "unknown model"),
    ({"inputs": "a", "policy": "zzz"}, 400, "policy", "beem"),
    ({"inputs": "a", "policy": "eenet"}, 400, "policy", "calibrated"),
    ({"inputs": "a", "latency_budget_ms": -1}, 400, "latency_budget_ms", "greater than 0"),
    ({"inputs": "a", "latency_budget_ms": "fast"}, 400, "latency_budget_ms", "number"),
    ({"inputs": "a", "colour": "red"}, 400, "colour", "unknown field"),
    ({"text": "a"}, 400, "inputs", "required"),
])
def test_bad_requests_name_the_field(client: TestClient, body: dict[str, object], status: int,
                                     field: str, words: str) -> None:
    r = client.post("/v1/classify", json=body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["field"] == field and words in err["error"]
    assert client.post("/v1/classify", json={"inputs": "still serving"}).status_code == 200


def test_nan_budget_is_rejected(client: TestClient) -> None:
    r = client.post("/v1/classify", content=b'{"inputs": "a", "latency_budget_ms": NaN}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] in ("latency_budget_ms", "body")


def test_malformed_json_is_400(client: TestClient) -> None:
    r = client.post("/v1/classify", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]


def test_body_over_the_limit_is_413() -> None:
    with _client(max_body_bytes=2048) as c:
        r = c.post("/v1/classify", json={"inputs": "a" * 4000})
        assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]


@pytest.mark.parametrize(("error", "status", "header"), [
    (Overloaded("queue full (queue_limit)", 2.0), 429, "2"),
    (DeadlineExceeded("too slow", "deadline_ms"), 504, None),
    (InternalError("internal error; quote request id x"), 500, None),
])
def test_engine_errors_map_to_statuses(error: Exception, status: int, header: str | None) -> None:
    with _client(FakeEngine(error=error)) as c:  # type: ignore[arg-type]
        r = c.post("/v1/classify", json={"inputs": "a"})
        assert r.status_code == status and r.json()["error"]
        assert r.headers.get("retry-after") == header
        assert c.get("/healthz").status_code == 200


def test_api_key_guards_inference_but_not_health() -> None:
    with _client(api_key=SecretStr("s3cret")) as c:
        assert c.post("/v1/classify", json={"inputs": "a"}).status_code == 401
        bad = {"authorization": "Bearer wrong"}
        assert c.post("/v1/classify", json={"inputs": "a"}, headers=bad).status_code == 401
        ok = {"authorization": "Bearer s3cret"}
        assert c.post("/v1/classify", json={"inputs": "a"}, headers=ok).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/metrics").status_code == 200


def test_metrics_count_requests_by_status(client: TestClient) -> None:
    client.post("/v1/classify", json={"inputs": "a"})
    client.post("/v1/classify", json={"inputs": []})
    text = client.get("/metrics").text
    ok = 'eeserve_requests_total{endpoint="classify",model="fake",policy="beem",status="ok"} 1.0'
    assert ok in text
    assert 'status="bad_request"} 1.0' in text
    assert "eeserve_request_duration_seconds_bucket" in text


def test_models_routes(client: TestClient) -> None:
    models = client.get("/v1/models").json()["models"]
    assert models[0]["name"] == "fake" and models[0]["policies"]["beem"]
    assert client.get("/v1/models/fake").json()["num_exits"] == 4
    r = client.get("/v1/models/nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]


def test_openapi_documents_limits_and_examples(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    inputs = doc["components"]["schemas"]["ClassifyBody"]["properties"]["inputs"]
    assert inputs["anyOf"][1]["maxItems"] == 4
    assert "/v2/models/{name}/infer" in doc["paths"]
    assert client.get("/docs").status_code == 200


def test_full_queue_is_shed_before_the_body_is_read() -> None:
    class Busy(FakeEngine):
        def status(self):  # type: ignore[no-untyped-def]
            from service.protocol import EngineStatus

            return EngineStatus(queue_depth=8, active_rows=16, loaded_models=1)

    eng = Busy()
    with _client(eng, queue_limit=8) as c:
        r = c.post("/v1/classify", json={"inputs": "a"})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "queue_limit" in r.json()["error"]
        assert eng.requests == []  # the engine never saw it
        assert c.get("/healthz").status_code == 200
        text = c.get("/metrics").text
        assert 'status="overloaded"} 1.0' in text


def test_retuning_reset_is_an_admin_route_behind_the_key() -> None:
    with _client(api_key=SecretStr("s3cret")) as c:
        assert c.post("/v1/models/fake/retuning/reset").status_code == 401
        ok = {"authorization": "Bearer s3cret"}
        r = c.post("/v1/models/fake/retuning/reset", headers=ok)
        assert r.status_code == 200 and r.json() == {"model": "fake", "exits_reset": 0}
        missing = c.post("/v1/models/nope/retuning/reset", headers=ok)
        assert missing.status_code == 404 and missing.json()["field"] == "name"


def test_classify_accepts_the_shadow_flag(client: TestClient) -> None:
    assert client.post("/v1/classify", json={"inputs": "a", "shadow": True}).status_code == 200
    bad = client.post("/v1/classify", json={"inputs": "a", "shadow": "yes"})
    assert bad.status_code in (400, 422) and "shadow" in bad.text


def test_gil_switch_interval_is_applied_when_set() -> None:
    before = sys.getswitchinterval()
    try:
        with _client(gil_switch_interval_ms=1.0):
            assert sys.getswitchinterval() == pytest.approx(0.001)
    finally:
        sys.setswitchinterval(before)
