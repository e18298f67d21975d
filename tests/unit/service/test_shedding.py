"""service/shedding.py: the cheapest refusal, before the app spends anything on a request."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from service.protocol import EngineStatus
from service.shedding import LoadShedMiddleware, Shedder
from service.stats import RequestStats


class _Engine:
    def __init__(self, queue_depth: int = 0, text_queue_depth: int | None = None):
        self.queue_depth = queue_depth
        self.text_queue_depth = text_queue_depth

    def status(self) -> EngineStatus:
        return EngineStatus(queue_depth=self.queue_depth, active_rows=0, loaded_models=1,
                            text_queue_depth=self.text_queue_depth)


class _Sink:
    def __init__(self) -> None:
        self.requests: list[RequestStats] = []

    def record_request(self, s: RequestStats) -> None:
        self.requests.append(s)


class _SlowApp:
    """Answers 200 once `release` is set; records the scopes it saw."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append(scope)
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _scope(engine: _Engine, path: str = "/v1/classify", method: str = "POST",
           rid: bytes | None = None) -> Scope:
    headers = [(b"x-request-id", rid)] if rid else []
    return {"type": "http", "method": method, "path": path, "headers": headers,
            "app": SimpleNamespace(state=SimpleNamespace(engine=engine))}


async def _call(mw: LoadShedMiddleware, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(m: Message) -> None:
        sent.append(m)

    await mw(scope, receive, send)
    return sent


def _status(sent: list[Message]) -> int:
    return int(sent[0]["status"])


def _json(sent: list[Message]) -> Any:
    return json.loads(sent[1]["body"])


async def test_over_max_inflight_is_a_429_that_never_reaches_the_app() -> None:
    app, sink, eng = _SlowApp(), _Sink(), _Engine()
    mw = LoadShedMiddleware(app, Shedder(queue_limit=100, max_inflight=2, sink=sink))  # type: ignore[arg-type]
    running = [asyncio.ensure_future(_call(mw, _scope(eng))) for _ in range(2)]
    await asyncio.sleep(0.01)
    assert mw.inflight == 2 and len(app.seen) == 2
    refused = await _call(mw, _scope(eng, rid=b"abc-1"))
    assert _status(refused) == 429 and len(app.seen) == 2
    headers = dict(refused[0]["headers"])
    assert headers[b"retry-after"] == b"1" and headers[b"x-request-id"] == b"abc-1"
    body = _json(refused)
    assert body["code"] == "overloaded" and body["request_id"] == "abc-1"
    assert "max_inflight_requests" in body["error"]
    assert [(s.endpoint, s.status) for s in sink.requests] == [("classify", "overloaded")]
    app.release.set()
    assert [_status(await r) for r in running] == [200, 200]
    assert mw.inflight == 0
    assert _status(await _call(mw, _scope(eng))) == 200  # room again


async def test_a_full_engine_queue_is_a_429_naming_queue_limit() -> None:
    app = _SlowApp()
    app.release.set()
    mw = LoadShedMiddleware(app, Shedder(queue_limit=8, max_inflight=None))
    refused = await _call(mw, _scope(_Engine(queue_depth=8), path="/v2/models/m/infer"))
    assert _status(refused) == 429 and "queue_limit" in _json(refused)["error"]
    assert len(_json(refused)["request_id"]) == 32  # a fresh id when none was given
    assert _status(await _call(mw, _scope(_Engine(queue_depth=7)))) == 200


async def test_queued_caption_rows_do_not_count_against_the_text_queue_limit() -> None:
    app = _SlowApp()
    app.release.set()
    mw = LoadShedMiddleware(app, Shedder(queue_limit=8, max_inflight=None))
    captions_queued = _Engine(queue_depth=7 + 30, text_queue_depth=7)  # 30 caption rows
    assert _status(await _call(mw, _scope(captions_queued))) == 200
    full = _Engine(queue_depth=8 + 30, text_queue_depth=8)
    assert _status(await _call(mw, _scope(full))) == 429


async def test_other_routes_pass_and_admitted_requests_are_stamped() -> None:
    app = _SlowApp()
    app.release.set()
    mw = LoadShedMiddleware(app, Shedder(queue_limit=1, max_inflight=1))
    full = _Engine(queue_depth=5)
    assert _status(await _call(mw, _scope(full, path="/readyz", method="GET"))) == 200
    assert _status(await _call(mw, _scope(full, path="/v1/models/x/retuning/reset"))) == 200
    await _call(mw, _scope(_Engine()))
    assert isinstance(app.seen[-1]["state"]["received_at"], float)


async def test_a_refusal_is_held_so_a_client_ignoring_retry_after_cannot_flood() -> None:
    app = _SlowApp()
    # queue_limit 0: every request is refused
    mw = LoadShedMiddleware(app, Shedder(queue_limit=0, hold_s=0.2, max_held=2))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    held = [asyncio.ensure_future(_call(mw, _scope(_Engine()))) for _ in range(2)]
    await asyncio.sleep(0.05)
    assert mw.held == 2
    at_once = await _call(mw, _scope(_Engine()))  # over max_held: answered without a hold
    assert _status(at_once) == 429 and loop.time() - t0 < 0.15
    assert [_status(await h) for h in held] == [429, 429]
    assert loop.time() - t0 >= 0.2 and mw.held == 0 and app.seen == []
