"""No input reaches a 500: hypothesis throws arbitrary JSON and arbitrary unicode at every
inference route, in-process, with the fake engine and with tiny real models (text + captioner).

Bodies are serialised with `ensure_ascii=True` and `allow_nan=True`, so lone surrogates
(`"\\ud800"`), control characters, NaN / Infinity and huge numbers reach the server as a client
could send them. Every answer must be below 500, and every 4xx must be the uniform JSON error.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.settings import Settings
from tests.integration.fake_engine import FakeEngine

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**20)
           | st.floats() | st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                           max_leaves=24)
texts = st.text(min_size=0, max_size=60)  # any code point, lone surrogates included
deep = st.integers(min_value=30, max_value=3000).map(lambda n: "[" * n + "]" * n)
params = st.dictionaries(st.sampled_from(["threshold", "policy", "x", "latency_budget_ms",
                                          "deadline_ms", "shadow", "binary_data_output"]),
                         json_values, max_size=3)


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


def classify_bodies() -> st.SearchStrategy[bytes]:
    structured = st.fixed_dictionaries(
        {"inputs": texts | st.lists(texts, max_size=4) | json_values},
        optional={"policy": st.sampled_from(["none", "beem", "maxprob"]) | texts,
                  "params": params | json_values, "model": texts | json_values,
                  "latency_budget_ms": json_values, "deadline_ms": json_values,
                  "return_trace": json_values}).map(dumps)
    return structured | json_values.map(dumps) | deep.map(str.encode)


def infer_bodies() -> st.SearchStrategy[bytes]:
    tensor = st.fixed_dictionaries(
        {"name": st.just("TEXT") | texts, "datatype": st.just("BYTES") | texts,
         "shape": st.lists(st.integers(min_value=-2, max_value=10**20), max_size=3)
         | json_values, "data": st.lists(texts, max_size=4) | json_values},
        optional={"parameters": params | json_values})
    structured = st.fixed_dictionaries(
        {"inputs": st.lists(tensor, min_size=1, max_size=2)},
        optional={"parameters": params, "id": texts | json_values,
                  "outputs": json_values}).map(dumps)
    return structured | json_values.map(dumps) | deep.map(str.encode)


def binary_bodies() -> st.SearchStrategy[tuple[bytes, str]]:
    """The binary tensor extension: a JSON header, then length-prefixed elements (or junk)."""
    def body(items: list[bytes], junk: bytes, n: int, declared: int | None) -> tuple[bytes, str]:
        blob = b"".join(struct.pack("<I", len(b)) + b for b in items) + junk
        head = dumps({"inputs": [{"name": "TEXT", "shape": [n], "datatype": "BYTES",
                                  "parameters": {"binary_data_size":
                                                 len(blob) if declared is None else declared}}]})
        return head + blob, str(len(head))
    return st.builds(body, st.lists(st.binary(max_size=20) | texts.map(
        lambda t: t.encode("utf-8", "surrogatepass")), max_size=4), st.binary(max_size=4),
        st.integers(min_value=0, max_value=5), st.none() | st.integers(-1, 100))


def caption_bodies() -> st.SearchStrategy[bytes]:
    images = (texts | st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode())
              | json_values)
    structured = st.fixed_dictionaries(
        {"images": images | st.lists(images, max_size=3)},
        optional={"max_tokens": json_values, "params": params | json_values,
                  "policy": texts, "stream": st.booleans(), "deadline_ms": json_values}).map(dumps)
    return structured | json_values.map(dumps) | deep.map(str.encode)


def assert_not_5xx(r: Any) -> None:
    assert r.status_code < 500, r.text[:300]
    if r.status_code >= 400:
        body = r.json()
        assert body["request_id"] and body["error"], body


JSON = {"content-type": "application/json"}


# ---- the fake engine: the HTTP layer alone ------------------------------------------------------
@pytest.fixture(scope="module")
def fake() -> Iterator[TestClient]:
    app = create_app(Settings(models=[], log_json=False), engine=FakeEngine())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@FUZZ
@given(body=classify_bodies())
def test_fake_classify(fake: TestClient, body: bytes) -> None:
    assert_not_5xx(fake.post("/v1/classify", content=body, headers=JSON))


@FUZZ
@given(body=infer_bodies(), name=st.sampled_from(["fake", "other"]))
def test_fake_infer_json(fake: TestClient, body: bytes, name: str) -> None:
    assert_not_5xx(fake.post(f"/v2/models/{name}/infer", content=body, headers=JSON))


@FUZZ
@given(got=binary_bodies())
def test_fake_infer_binary(fake: TestClient, got: tuple[bytes, str]) -> None:
    body, head = got
    assert_not_5xx(fake.post("/v2/models/fake/infer", content=body, headers={
        "content-type": "application/octet-stream", "inference-header-content-length": head}))


@FUZZ
@given(body=caption_bodies())
def test_fake_caption(fake: TestClient, body: bytes) -> None:
    assert_not_5xx(fake.post("/v1/caption", content=body, headers=JSON))


# ---- tiny real models: the engine too ---------------------------------------------------------
@pytest.fixture(scope="module")
def real(tiny_artifact: Path, tiny_caption_artifact: Path) -> Iterator[TestClient]:
    s = Settings(models=[str(tiny_artifact), str(tiny_caption_artifact)], device="cpu",
                 log_json=False,
                 max_caption_tokens=4)
    with TestClient(create_app(s), raise_server_exceptions=False) as c:
        yield c


@FUZZ
@given(body=classify_bodies())
def test_real_classify(real: TestClient, body: bytes) -> None:
    assert_not_5xx(real.post("/v1/classify", content=body, headers=JSON))


@FUZZ
@given(body=infer_bodies())
def test_real_infer_json(real: TestClient, body: bytes) -> None:
    assert_not_5xx(real.post("/v2/models/tiny-text/infer", content=body, headers=JSON))


@FUZZ
@given(got=binary_bodies())
def test_real_infer_binary(real: TestClient, got: tuple[bytes, str]) -> None:
    body, head = got
    assert_not_5xx(real.post("/v2/models/tiny-text/infer", content=body, headers={
        "content-type": "application/octet-stream", "inference-header-content-length": head}))


@FUZZ
@given(body=caption_bodies())
def test_real_caption(real: TestClient, body: bytes) -> None:
    assert_not_5xx(real.post("/v1/caption", content=body, headers=JSON))


@pytest.mark.parametrize("text", ["a\ud800b", "\udfff", "nul\x00here", "esc\x1b[31m"])
def test_malformed_text_is_a_400_naming_the_field(real: TestClient, text: str) -> None:
    r = real.post("/v1/classify", content=dumps({"inputs": ["fine", text]}), headers=JSON)
    assert r.status_code == 400 and r.json()["field"] == "inputs[1]", r.text
    r = real.post("/v2/models/tiny-text/infer", content=dumps({"inputs": [
        {"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": [text]}]}), headers=JSON)
    assert r.status_code == 400 and r.json()["field"] == "inputs[0].data[0]", r.text


def test_deep_nesting_is_a_400_on_v2(real: TestClient) -> None:
    r = real.post("/v2/models/tiny-text/infer", content=b"[" * 1000 + b"]" * 1000, headers=JSON)
    assert r.status_code == 400 and r.json()["field"] == "body", r.text
    data = "[" * 900 + '"x"' + "]" * 900
    head = '{"inputs":[{"name":"TEXT","shape":[1],"datatype":"BYTES","data":'
    r = real.post("/v2/models/tiny-text/infer", headers=JSON,
                  content=(head + data + "}]}").encode())
    assert r.status_code == 400 and "nested deeper" in r.json()["error"], r.text
