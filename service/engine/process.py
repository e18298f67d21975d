"""An engine process: the in-process engine behind the local wire (service/wire.py).

    python -m service.engine.process --fd FD --name NAME

Started by the front (`service.pool.EnginePool`) with one end of a socketpair as FD. The first
frame is `config` (the Settings, this process's model paths and its shadow role: alone, judge
or follower); the process loads them (`InProcessEngine.start`), reports `state`, then serves
requests until `shutdown` or until the front goes away (end of file: it exits at once, as
nothing of its work could be delivered). Every StatsSink call of the engine is forwarded
(`ForwardingSink`) and flushed before each answer, so the front's /metrics counts exactly what
the engines did. SIGINT and SIGTERM are the front's to handle: this process drains when the
front says so.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import logging.config
import os
import signal
import socket
import threading
from dataclasses import replace
from typing import Any

from service.engine.config import EngineConfig
from service.engine.core import InProcessEngine
from service.engine.handles import PolicyKey
from service.logging_setup import logging_config
from service.protocol import CaptionRequest, ClassifyRequest, EngineError
from service.settings import Settings
from service.stats import (
    AgreementStats,
    AlarmStats,
    CaptionStats,
    IterationStats,
    RequestStats,
    RetuneStats,
    SampleStats,
    ShadowCheckStats,
    ShadowDropStats,
)
from service.wire import error_payload, frame, read

log = logging.getLogger("eeserve.engine.process")
STATE_EVERY_S = 0.25  # status for the front's load shedding between answers
FLUSH_EVERY_S = 0.1  # stats not followed by an answer (shadow checks, gauges)


class ForwardingSink:
    """A StatsSink that buffers every call (from any thread) as (method name, record) for
    the front, which replays them into its own sink (service/pool.py)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[tuple[str, Any]] = []

    def _add(self, name: str, record: Any) -> None:
        with self._lock:
            self._calls.append((name, record))

    def take(self) -> list[tuple[str, Any]]:
        with self._lock:
            calls, self._calls = self._calls, []
        return calls

    def record_iteration(self, s: IterationStats) -> None:
        self._add("record_iteration", s)

    def record_sample(self, s: SampleStats) -> None:
        self._add("record_sample", s)

    def record_request(self, s: RequestStats) -> None:
        self._add("record_request", s)

    def record_caption(self, s: CaptionStats) -> None:
        self._add("record_caption", s)

    def set_queue_depth(self, n: int) -> None:
        self._add("set_queue_depth", n)

    def set_loaded_models(self, n: int) -> None:
        self._add("set_loaded_models", n)

    def set_active_rows(self, n: int) -> None:
        self._add("set_active_rows", n)

    def record_shadow(self, s: ShadowCheckStats) -> None:
        self._add("record_shadow", s)

    def record_shadow_dropped(self, s: ShadowDropStats) -> None:
        self._add("record_shadow_dropped", s)

    def set_agreement(self, s: AgreementStats) -> None:
        self._add("set_agreement", s)

    def record_retune(self, s: RetuneStats) -> None:
        self._add("record_retune", s)

    def set_alarm(self, s: AlarmStats) -> None:
        self._add("set_alarm", s)

    # plain tuples on the wire (the front imports nothing of the engine): (model, (policy name,
    # params), exit, agreed or threshold)
    def forward_observation(self, obs: tuple[str, tuple[str, Any], int, bool]) -> None:
        """A follower's shadow check, for the judge process (service/engine/live.py)."""
        self._add("forward_observation", obs)

    def forward_threshold(self, change: tuple[str, tuple[str, Any], int, float | None]) -> None:
        """The judge's threshold change, for every other process."""
        self._add("forward_threshold", change)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class EngineServer:
    """One engine process's side of the wire."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 engine: InProcessEngine, sink: ForwardingSink):
        self.reader, self.writer, self.engine, self.sink = reader, writer, engine, sink
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.stopping = False

    def send(self, kind: str, ident: int, payload: Any = None) -> None:
        calls = self.sink.take()
        if calls:
            self.writer.write(frame("stats", 0, calls))
        self.writer.write(frame(kind, ident, payload))

    def state(self) -> dict[str, Any]:
        return {"ready": self.engine.ready(), "models": self.engine.models(),
                "status": self.engine.status(), "pid": os.getpid(), "rss_bytes": _rss_bytes()}

    async def run(self) -> None:
        ticker = asyncio.create_task(self._tick())
        try:
            while True:
                kind, ident, payload = await read(self.reader)
                if kind == "shutdown":
                    await self._shutdown(float(payload))
                    return
                if kind == "cancel":
                    task = self.tasks.get(ident)
                    if task is not None:
                        task.cancel()
                    continue
                if kind in ("observe", "set_threshold"):
                    self._shadow(kind, payload)
                    continue
                task = asyncio.create_task(self._serve(kind, ident, payload))
                self.tasks[ident] = task
                task.add_done_callback(functools.partial(self._forget, ident))
        finally:
            ticker.cancel()

    def _shadow(self, kind: str, items: list[tuple[str, tuple[str, Any], int, Any]]) -> None:
        """The judge: other processes' shadow checks; a follower: the judge's thresholds."""
        for model, (name, params), k, value in items:
            key = PolicyKey(name, params)
            served = self.engine.served.get(model)
            if served is None or served.live is None:
                continue
            try:
                policy = served.policy(key)
            except EngineError:
                continue
            if kind == "observe":
                served.live.record(key, policy, k, bool(value))
            else:
                served.live.apply_threshold(policy, k, value)

    def _forget(self, ident: int, _: object) -> None:
        self.tasks.pop(ident, None)

    async def _serve(self, kind: str, ident: int, payload: Any) -> None:
        try:
            if kind == "classify":
                assert isinstance(payload, ClassifyRequest)
                self.send("result", ident, (await self.engine.classify(payload),
                                            self.engine.status()))
            elif kind == "caption":
                assert isinstance(payload, CaptionRequest)
                self.send("result", ident, (await self.engine.caption(payload),
                                            self.engine.status()))
            elif kind == "caption_stream":
                async for ev in self.engine.caption_stream(payload):
                    self.send("event", ident, ev)
                self.send("end", ident, self.engine.status())
            elif kind == "add_model":
                await self.engine.add_model(str(payload))
                self.send("result", ident, (None, self.engine.status()))
                self.send("state", 0, self.state())
            elif kind == "reset_retuning":
                self.send("result", ident, (await self.engine.reset_retuning(str(payload)),
                                            self.engine.status()))
            else:
                raise EngineError(f"unknown message {kind!r}")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 -- every failure goes back as an error frame
            if not isinstance(e, EngineError):
                log.exception("engine request failed", extra={"kind": kind})
            self.send("error", ident, error_payload(e))

    async def _tick(self) -> None:
        """Status and buffered stats while no answer carries them."""
        last_state = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            calls = self.sink.take()
            if calls:
                self.writer.write(frame("stats", 0, calls))
            if loop.time() - last_state >= STATE_EVERY_S:
                self.writer.write(frame("state", 0, self.state()))
                last_state = loop.time()
            await self.writer.drain()

    async def _shutdown(self, grace_s: float) -> None:
        """Drain: the engine finishes what it holds within `grace_s`, answers go out."""
        self.stopping = True
        await self.engine.shutdown(grace_s)
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=2.0)
        self.send("state", 0, self.state())
        self.writer.write(frame("bye", 0))
        await self.writer.drain()


async def serve(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    kind, _, payload = await read(reader)
    if kind != "config":
        raise SystemExit(f"engine process: expected config, got {kind!r}")
    settings, models, role = payload
    assert isinstance(settings, Settings)
    cfg = EngineConfig.from_settings(settings)
    cfg = replace(cfg, models=tuple(models), shadow=replace(cfg.shadow, role=role))
    sink = ForwardingSink()
    engine = InProcessEngine(cfg, sink)
    server = EngineServer(reader, writer, engine, sink)
    await engine.start()
    server.send("state", 0, server.state())
    await writer.drain()
    try:
        await server.run()
    except (asyncio.IncompleteReadError, ConnectionError):
        log.warning("the front went away; engine process exiting")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.engine.process")
    p.add_argument("--fd", type=int, required=True, help="the socket inherited from the front")
    p.add_argument("--name", default="engine", help="this process's name in logs")
    p.add_argument("--json-logs", action="store_true")
    p.add_argument("--log-level", default="info")
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the front drains us (a terminal's ^C
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # reaches the whole process group)
    logging.config.dictConfig(logging_config(args.json_logs, args.log_level))
    asyncio.run(serve(args.fd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
