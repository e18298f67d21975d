"""Shared route helpers: text limits, request labels, the disconnect watch."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace
from typing import Any

import pytest

from service.errors import ClientGone
from service.middleware import RequestLabels
from service.protocol import BadRequest, ResolvedNames
from service.route_helpers import check_texts, label_request, unless_disconnected
from service.settings import Settings

S = Settings(max_texts_per_request=2, max_chars_per_text=5)


def test_one_text_or_a_list() -> None:
    assert check_texts("abc", S) == ["abc"]
    assert check_texts(["a", "b"], S) == ["a", "b"]


@pytest.mark.parametrize(("inputs", "field", "message"), [
    ([], "inputs", "at least one text"),
    (["a", "b", "c"], "inputs", "3 texts is over the limit of 2 (max_texts_per_request)"),
    (["a", "  "], "inputs[1]", "inputs[1]: text is empty"),
    ("abcdef", "inputs[0]", "6 characters is over the limit of 5 (max_chars_per_text)"),
])
def test_bad_texts_name_the_field_and_the_limit(inputs: Any, field: str, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)) as e:
        check_texts(inputs, S)
    assert e.value.field == field


def test_labels_come_from_the_resolved_names() -> None:
    request: Any = SimpleNamespace(state=SimpleNamespace(labels=RequestLabels()))
    label_request(request, ResolvedNames("m", "beem"), 3)
    assert (request.state.labels.model, request.state.labels.policy,
            request.state.labels.items) == ("m", "beem", 3)
    label_request(request, ResolvedNames(None, None), 1)
    assert (request.state.labels.model, request.state.labels.policy) == ("unknown", "unknown")


class FakeRequest:
    def __init__(self, disconnect_after: float | None):
        self.delay = disconnect_after

    async def receive(self) -> dict[str, str]:
        if self.delay is None:
            await asyncio.Event().wait()  # never disconnects
        await asyncio.sleep(self.delay or 0)
        return {"type": "http.disconnect"}


async def test_work_finishing_first_returns_its_result() -> None:
    async def work() -> int:
        return 7

    assert await unless_disconnected(FakeRequest(None), work()) == 7  # type: ignore[arg-type]


async def test_a_disconnect_cancels_the_work() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def work() -> int:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    with pytest.raises(ClientGone):
        await unless_disconnected(FakeRequest(0.01), work())  # type: ignore[arg-type]
    await asyncio.wait_for(cancelled.wait(), 5)
    assert started.is_set()


@pytest.mark.parametrize("text,kind", [("a\ud800", "lone surrogate"), ("\x00", "control"),
                                       ("x\x1b", "control"), ("\x9f", "control")])
def test_malformed_text_is_refused_naming_the_field(text: str, kind: str) -> None:
    with pytest.raises(BadRequest, match=kind) as e:
        check_texts(["ok", text], S)
    assert e.value.field == "inputs[1]"


def test_whitespace_controls_are_text() -> None:
    assert check_texts(["a\tb\n"], S) == ["a\tb\n"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**60, 1e300, -2.0**60, None,
                                   [1], {"a": 1}, "x\ud800"])
def test_bad_policy_params_are_refused(value: Any) -> None:
    from service.route_helpers import check_param

    with pytest.raises(BadRequest) as e:
        check_param(value, "parameters.threshold")
    assert e.value.field == "parameters.threshold"


def test_json_depth_is_measured_without_recursion() -> None:
    from service.oip import depth

    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    assert depth(deep) == 5000 and depth({"a": [1, {"b": []}]}) == 4 and depth("x") == 0
