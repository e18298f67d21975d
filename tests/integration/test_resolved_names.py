"""The routes take the model and policy names from the engine (`EngineClient.resolve`), for the
answer and for the metric labels, on v1 and OIP v2 alike; unknown names become "unknown"."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.app import create_app
from service.protocol import ResolvedNames, Task
from service.settings import Settings
from tests.integration.fake_engine import FakeEngine


class RenamingEngine(FakeEngine):
    """Resolves every request to names a route could not have guessed."""

    def __init__(self, names: ResolvedNames):
        super().__init__()
        self.names = names
        self.asked: list[tuple[Task, str | None, str | None]] = []

    def resolve(self, task: Task, model: str | None, policy: str | None) -> ResolvedNames:
        self.asked.append((task, model, policy))
        return self.names


def _client(engine: FakeEngine) -> TestClient:
    return TestClient(create_app(Settings(log_json=False), engine=engine))


def _requests_metric(c: TestClient, model: str, policy: str, endpoint: str) -> str:
    return (f'eeserve_requests_total{{endpoint="{endpoint}",model="{model}",policy="{policy}",'
            f'status="ok"}} 1.0')


def test_v1_answer_and_labels_use_the_engine_names() -> None:
    eng = RenamingEngine(ResolvedNames("fake", "entropy"))
    with _client(eng) as c:
        r = c.post("/v1/classify", json={"inputs": "a b", "policy": "maxprob"})
        assert r.status_code == 200
        assert (r.json()["model"], r.json()["policy"]) == ("fake", "entropy")
        assert eng.asked == [("text-classifier", None, "maxprob")]
        assert _requests_metric(c, "fake", "entropy", "classify") in c.get("/metrics").text


def test_oip_labels_use_the_engine_names() -> None:
    eng = RenamingEngine(ResolvedNames("fake", "patience"))
    with _client(eng) as c:
        r = c.post("/v2/models/fake/infer", json={
            "inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["a"]}]})
        assert r.status_code == 200 and r.json()["parameters"]["policy"] == "patience"
        assert eng.asked == [("text-classifier", "fake", None)]
        assert _requests_metric(c, "fake", "patience", "infer") in c.get("/metrics").text


def test_names_the_engine_does_not_know_are_unknown_labels() -> None:
    with _client(FakeEngine()) as c:
        r = c.post("/v2/models/fake/infer", json={
            "parameters": {"policy": "made-up"},
            "inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["a"]}]})
        # /v2 checks policy names as /v1 does (issue 19: one definition of the shared limits);
        # the refused request's label must still not carry the made-up name
        assert r.status_code == 400 and r.json()["field"] == "parameters.policy"
        text = c.get("/metrics").text
        assert 'policy="made-up"' not in text
        assert 'endpoint="infer",model="unknown",policy="unknown",status="bad_request"' in text
