"""API schemas: strict request bodies, the hot-path result dict, and limits in the OpenAPI."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from service.protocol import (
    CaptionResult,
    ClassifyResult,
    ExitTrace,
    ModelInfo,
    TokenInfo,
)
from service.schemas import (
    MIN_DEADLINE_MS,
    CaptionBody,
    CaptionResultOut,
    ClassifyBody,
    ClassifyResultOut,
    InferRequestBody,
    ModelInfoOut,
    apply_limits,
    infer_body_schema,
    result_dict,
)
from service.settings import Settings


def _error(body: dict[str, Any], model: type[ClassifyBody] | type[CaptionBody] = ClassifyBody
           ) -> dict[str, Any]:
    with pytest.raises(ValidationError) as e:
        model.model_validate(body)
    return dict(e.value.errors()[0])


def test_classify_body_accepts_one_text_or_a_list() -> None:
    assert ClassifyBody.model_validate({"inputs": "a"}).inputs == "a"
    body = ClassifyBody.model_validate({"inputs": ["a", "b"], "policy": "maxprob",
                                        "params": {"threshold": 0.9}, "latency_budget_ms": 5})
    assert body.inputs == ["a", "b"] and body.params == {"threshold": 0.9}


@pytest.mark.parametrize(("body", "loc", "kind"), [
    ({"inputs": "a", "latency_budget_ms": "5"}, "latency_budget_ms", None),  # strict: no coercion
    ({"inputs": "a", "polcy": "beem"}, "polcy", "extra_forbidden"),
    ({"inputs": "a", "policy": "bogus"}, "policy", "literal_error"),
    ({"inputs": "a", "deadline_ms": MIN_DEADLINE_MS - 1}, "deadline_ms", "greater_than_equal"),
    ({"inputs": "a", "latency_budget_ms": float("inf")}, "latency_budget_ms", None),
    ({"inputs": "a", "latency_budget_ms": 0}, "latency_budget_ms", "greater_than"),
    ({"inputs": "a", "params": {"t": [1]}}, "params", None),
])
def test_bad_classify_bodies_name_the_field(body: dict[str, Any], loc: str,
                                            kind: str | None) -> None:
    err = _error(body)
    assert err["loc"][0] == loc
    if kind is not None:
        assert err["type"] == kind


def test_caption_body_limits() -> None:
    assert _error({"images": "x", "max_tokens": 0}, CaptionBody)["loc"] == ("max_tokens",)
    assert _error({"images": "x", "stream": "yes"}, CaptionBody)["loc"] == ("stream",)


def _result(trace: bool) -> ClassifyResult:
    return ClassifyResult(
        label="pos", label_id=1, probabilities=[0.2, 0.8], exit_layer=2, num_layers=3,
        confidence=0.8, budget_forced=False, truncated=True, queue_ms=1.0, compute_ms=2.0,
        total_ms=3.0, trace=[ExitTrace(1, 0, 0.6, 0.1), ExitTrace(2, 1, 0.8, 0.9)] if trace
        else None)


@pytest.mark.parametrize("trace", [False, True])
def test_result_dict_equals_the_pydantic_model(trace: bool) -> None:
    r = _result(trace)
    assert result_dict(r) == ClassifyResultOut.of(r).model_dump()
    assert ClassifyResultOut.model_validate(result_dict(r)) == ClassifyResultOut.of(r)


def test_caption_and_model_info_outputs_copy_every_field() -> None:
    tokens = [TokenInfo("a", 5, 1), TokenInfo(" red", 9, 3)]
    r = CaptionResult(caption="a red", tokens=tokens,
                      mean_exit_layer=2.0, num_layers=3, time_to_first_token_ms=4.0,
                      per_token_ms=1.5, queue_ms=0.5, total_ms=7.0)
    out = CaptionResultOut.of(r)
    assert out.caption == r.caption and [t.exit_layer for t in out.tokens] == [1, 3]
    m = ModelInfo(name="m", kind="text-classifier", ready=True, num_exits=3, labels=["n", "p"],
                  default_policy="beem", policies={"beem": {"alpha": 1}},
                  per_layer_ms={"1": [1.0]}, details={"x": 1})
    assert ModelInfoOut.of(m).model_dump() == {
        "name": "m", "kind": "text-classifier", "ready": True, "error": None, "num_exits": 3,
        "labels": ["n", "p"], "default_policy": "beem", "policies": {"beem": {"alpha": 1}},
        "per_layer_ms": {"1": [1.0]}, "device": "cpu", "details": {"x": 1}}


def test_infer_body_needs_an_input_and_knows_datatypes() -> None:
    with pytest.raises(ValidationError):
        InferRequestBody.model_validate({"inputs": []})
    with pytest.raises(ValidationError):
        InferRequestBody.model_validate(
            {"inputs": [{"name": "TEXT", "shape": [1], "datatype": "STRING", "data": ["a"]}]})
    assert "$ref" in str(infer_body_schema()) and "#/$defs" not in str(infer_body_schema())


def test_apply_limits_writes_the_settings_into_the_openapi() -> None:
    s = Settings(max_chars_per_text=10, max_texts_per_request=3, max_images_per_request=2,
                 max_image_bytes=300, max_caption_tokens=7)
    doc = apply_limits({"components": {"schemas": {
        "ClassifyBody": ClassifyBody.model_json_schema(),
        "CaptionBody": CaptionBody.model_json_schema()}}}, s)
    comps = doc["components"]["schemas"]
    text, texts = comps["ClassifyBody"]["properties"]["inputs"]["anyOf"]
    assert (text["maxLength"], texts["maxItems"], texts["items"]["maxLength"]) == (10, 3, 10)
    image, images = comps["CaptionBody"]["properties"]["images"]["anyOf"]
    assert (image["maxLength"], images["maxItems"]) == (300 * 4 // 3 + 4, 2)
    assert comps["CaptionBody"]["properties"]["max_tokens"]["anyOf"][0]["maximum"] == 7
    assert "InferInputTensor" in comps  # the OIP body's nested models are registered
