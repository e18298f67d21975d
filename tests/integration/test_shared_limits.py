"""The same limits on /v1 and /v2 for every parameter they share (one definition in
service/schemas.py), and booleans never taken for numbers, over a fake engine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.integration.fake_engine import FakeEngine

SHARED: list[tuple[str, Any, int]] = [  # (parameter, value, status on both routes)
    ("deadline_ms", 1, 400), ("deadline_ms", 49.9, 400), ("deadline_ms", 0, 400),
    ("deadline_ms", -5, 400), ("deadline_ms", True, 400), ("deadline_ms", "100", 400),
    ("deadline_ms", 3_600_001, 400), ("deadline_ms", 50, 200), ("deadline_ms", 3_600_000, 200),
    ("latency_budget_ms", 0, 400), ("latency_budget_ms", -1, 400),
    ("latency_budget_ms", True, 400), ("latency_budget_ms", 3_600_001, 400),
    ("latency_budget_ms", 0.5, 200), ("policy", "bogus", 400), ("policy", 3, 400),
    ("policy", "maxprob", 200), ("shadow", 1, 400), ("shadow", "true", 400),
    ("shadow", True, 200), ("return_trace", 1, 400),
]


ENGINE = FakeEngine()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    s = Settings(log_json=False, max_texts_per_request=4, max_chars_per_text=50)
    with TestClient(create_app(s, engine=ENGINE), raise_server_exceptions=False) as c:
        yield c


def _v1(client: TestClient, texts: list[str], **extra: Any) -> Any:
    return client.post("/v1/classify", json={"inputs": texts, **extra})


def _v2(client: TestClient, texts: list[str], shape: list[Any] | None = None,
        **params: Any) -> Any:
    tensor = {"name": "TEXT", "shape": shape or [len(texts)], "datatype": "BYTES",
              "data": texts}
    return client.post("/v2/models/fake/infer",
                       content=json.dumps({"inputs": [tensor], "parameters": params}))


@pytest.mark.parametrize(("name", "value", "status"), SHARED)
def test_a_shared_parameter_has_one_limit_on_both_routes(client: TestClient, name: str,
                                                         value: Any, status: int) -> None:
    v1, v2 = _v1(client, ["fine"], **{name: value}), _v2(client, ["fine"], **{name: value})
    assert (v1.status_code, v2.status_code) == (status, status), (v1.text, v2.text)
    if status == 400:
        assert v1.json()["field"] == name and name in v1.json()["error"]
        assert v2.json()["field"] == f"parameters.{name}" and name in v2.json()["error"]


@pytest.mark.parametrize(("value", "status"), [
    (0.9, 200), (2**53, 200), ("beem", 200), (False, 200), (2**60, 400), (1e300, 400),
    (-(2**53) - 2, 400), ("x\x00", 400), ("\u0085", 200), (None, 400), ([1], 400)])
def test_a_policy_parameter_has_one_rule_on_both_routes(client: TestClient, value: Any,
                                                        status: int) -> None:
    v1 = client.post("/v1/classify", json={"inputs": ["fine"], "params": {"threshold": value}})
    v2 = _v2(client, ["fine"], threshold=value)
    assert (v1.status_code, v2.status_code) == (status, status), (v1.text, v2.text)
    if status == 400:
        assert v1.json()["field"].startswith("params")
        assert v2.json()["field"] == "parameters.threshold"


def test_deadline_1_ms_is_a_400_not_an_instant_504(client: TestClient) -> None:
    r = _v2(client, ["fine"], deadline_ms=1)
    assert r.status_code == 400 and "greater than or equal to 50" in r.json()["error"]


@pytest.mark.parametrize("texts", [["x" * 51], ["a"] * 5, [" "]])
def test_text_count_and_length_limits_match(client: TestClient, texts: list[str]) -> None:
    v1, v2 = _v1(client, texts), _v2(client, texts)
    assert v1.status_code == v2.status_code == 400, (v1.text, v2.text)


@pytest.mark.parametrize(("shape", "field"), [([True], "inputs[0].shape[0]"),
                                               ([1.0], "inputs[0].shape[0]"),
                                               ([1, False], "inputs[0].shape[1]"),
                                               (["1"], "inputs[0].shape[0]")])
def test_shape_of_booleans_or_floats_is_a_400_naming_it(client: TestClient, shape: list[Any],
                                                        field: str) -> None:
    r = _v2(client, ["fine"], shape=shape)
    assert r.status_code == 400 and r.json()["field"] == field, r.text
    assert r.json()["error"].startswith(f"{field}: ")


def test_oip_flags_must_be_booleans(client: TestClient) -> None:
    r = _v2(client, ["fine"], binary_data_output="yes")
    assert r.status_code == 400 and r.json()["field"] == "parameters.binary_data_output"
    body = {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["fine"]}],
            "outputs": [{"name": "LABEL", "parameters": {"binary_data": 1}}]}
    r = client.post("/v2/models/fake/infer", json=body)
    assert r.status_code == 400 and r.json()["field"] == "outputs[0].parameters.binary_data"
    raw = b"\x04\x00\x00\x00fine"
    head = json.dumps({"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": True}}]}).encode()
    r = client.post("/v2/models/fake/infer", content=head + raw,
                    headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and "binary_data_size" in r.json()["field"], r.text


def test_policy_parameters_pass_through_on_both_routes(client: TestClient) -> None:
    v1 = _v1(client, ["fine"], policy="maxprob", params={"threshold": 0.5}, deadline_ms=80)
    first = ENGINE.requests[-1]
    v2 = _v2(client, ["fine"], policy="maxprob", threshold=0.5, deadline_ms=80)
    assert v1.status_code == v2.status_code == 200, (v1.text, v2.text)
    second = ENGINE.requests[-1]
    assert first.params == second.params == {"threshold": 0.5}
    assert first.policy == second.policy == "maxprob"
    assert first.deadline_ms == second.deadline_ms == 80


@pytest.mark.parametrize("length", ["+5", "1_0", " 5", "-1", "0x5"])
def test_header_length_is_plain_digits(client: TestClient, length: str) -> None:
    r = client.post("/v2/models/fake/infer", content=b'{"inputs": []}' + b"x" * 20,
                    headers={"Inference-Header-Content-Length": length})
    assert r.status_code == 400 and r.json()["field"] == "Inference-Header-Content-Length"
