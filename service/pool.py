"""`EnginePool`: the `EngineClient` of `--workers N`, N engine processes behind one front.

The front process (this one: uvicorn, middleware, validation, metrics) runs no model. It
starts N text engine processes (`python -m service.engine.process`, each an `InProcessEngine`
with every text model) and, when caption models are served, one caption engine process of its
own, so a caption flood never shares a GIL or an event loop with classification. Each engine
process talks to the front over a socketpair (service/wire.py). Torch-free.

What a user sees is one server:
- requests go to the text engine with the fewest texts outstanding (ties: in turn);
- /metrics: every engine's StatsSink calls are relayed into the front's one registry, so
  counters and histograms are exact sums; the queue-depth and active-row gauges are the sums
  over processes; per-process resident memory and the restart count are their own metrics;
- shadow checks: every process checks its sampled share of its traffic; text-1.. send their
  checks to text-0 (the judge), whose windows, drift alarm and agreement gauges therefore
  cover all traffic; with `adapt` its threshold changes are applied in every process;
- `ready()` only when every engine process is up and ready; `models()` merges the processes'
  views (a model is ready only where every process holding it serves it);
- `queue_limit` is global: it bounds the texts waiting in all engine processes together, as
  the front counts them (texts sent and not answered, less the rows each process last said it
  was computing), so a request past it is refused 429 here before it is sent; `status()` is
  that count, which the 429 gate ahead of the app reads; each process keeps the same limit as
  a backstop; `max_inflight_requests` counts the front's requests, as with one process;
- an engine process that dies is replaced (backoff 0.5 s doubling to 30 s); the requests it
  held are answered 503 at once; the others keep serving;
- `shutdown(grace)` drains every process (each finishes what it holds within the grace).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from policies.names import known_policy
from service.protocol import (
    CaptionEvent,
    CaptionRequest,
    CaptionResult,
    ClassifyRequest,
    ClassifyResult,
    EngineError,
    EngineStatus,
    ModelInfo,
    NotReady,
    Overloaded,
    ResolvedNames,
    Task,
    UnknownModel,
)
from service.settings import Settings
from service.wire import frame, read, rebuild_error

log = logging.getLogger("eeserve.pool")
GAUGES = ("set_queue_depth", "set_active_rows", "set_loaded_models")
RELAYED = {"forward_observation": "observe", "forward_threshold": "set_threshold"}
BACKOFF_S = (0.5, 30.0)  # first and largest wait before replacing a dead engine process
_END = object()  # a caption stream's end, in its event queue


def available_cores() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 (or v1) CPU quota."""
    cores = len(os.sched_getaffinity(0))
    quota = _cgroup_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else max(1, cores)


def _cgroup_quota() -> float | None:
    try:  # cgroup v2: "max 100000" or "200000 100000"
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return q / p if q > 0 and p > 0 else None
    except (OSError, ValueError):
        return None


def resolve_workers(workers: int | str) -> int:
    """`--workers`: a count, or `auto` (one engine process per available core)."""
    return available_cores() if workers == "auto" else int(workers)


def model_kind(path: str) -> str:
    """An artifact's kind from its manifest (read as JSON here: the front loads no model);
    `unknown` when it cannot be read (the engine process then reports why)."""
    try:
        return str(json.loads((Path(path) / "manifest.json").read_text()).get("kind", "unknown"))
    except (OSError, ValueError):
        return "unknown"


@dataclass
class EngineProc:
    """One engine process as the front sees it."""

    name: str
    role: str  # "text" or "caption"
    proc: subprocess.Popen[bytes]
    writer: asyncio.StreamWriter
    reader: asyncio.StreamReader
    state: dict[str, Any] = field(default_factory=dict)
    pending: dict[int, Any] = field(default_factory=dict)  # id -> Future | Queue
    outstanding: int = 0  # texts or images sent and not yet answered
    dispatched: int = 0  # requests sent to it, ever
    alive: bool = True
    listener: asyncio.Task[None] | None = None
    gauges: dict[str, int] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.alive and bool(self.state.get("ready"))

    def status(self) -> EngineStatus:
        s = self.state.get("status")
        return s if isinstance(s, EngineStatus) else EngineStatus(0, 0, 0)


@dataclass
class Group:
    """The engine processes of one role, the model paths they all serve, and their count."""

    role: str
    size: int
    models: list[str]
    procs: list[EngineProc | None] = field(default_factory=list)
    restarts: int = 0


class EnginePool:
    """N text engine processes (+ one caption engine process) behind one EngineClient."""

    def __init__(self, settings: Settings, sink: Any, workers: int):
        self.settings = settings
        self.sink = sink
        self.workers = max(1, workers)
        text = [p for p in settings.models if model_kind(p) != "captioner"]
        captions = [p for p in settings.models if model_kind(p) == "captioner"]
        self.groups = {"text": Group("text", self.workers, text),
                       "caption": Group("caption", 1, captions)}
        self._ids = itertools.count(1)
        self._turn = itertools.count()
        self._closing = False
        self._respawns: set[asyncio.Task[None]] = set()
        self._infos: list[ModelInfo] | None = None  # merged models(), until a state changes

    # ---- processes ------------------------------------------------------------------------
    def _engine_settings(self, group: Group) -> Settings:
        return self.settings.model_copy(update={"workers": 1})

    async def _spawn(self, group: Group, index: int) -> EngineProc:
        ours, theirs = socket.socketpair()
        name = f"{group.role}-{index}"
        cmd = [sys.executable, "-m", "service.engine.process", "--fd", str(theirs.fileno()),
               "--name", name, "--log-level", self.settings.log_level,
               *(["--json-logs"] if self.settings.log_json else [])]
        proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), start_new_session=True)
        theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours)
        ep = EngineProc(name, group.role, proc, writer, reader)
        role = "alone" if group.size == 1 else ("judge" if index == 0 else "follower")
        writer.write(frame("config", 0, (self._engine_settings(group), list(group.models),
                                         role)))
        await writer.drain()
        ep.listener = asyncio.create_task(self._listen(group, index, ep))
        log.info("engine process started", extra={"engine": name, "pid": proc.pid,
                                                  "models": group.models})
        return ep

    async def _start_group(self, group: Group) -> None:
        group.procs = [await self._spawn(group, i) for i in range(group.size)]
        await self._until_started(group)

    async def _until_started(self, group: Group) -> None:
        """Until every process of `group` has reported its first state (or died)."""
        while any(p is not None and p.alive and not p.state for p in group.procs):
            await asyncio.sleep(0.02)

    def _procs(self, role: str | None = None) -> list[EngineProc]:
        groups = [self.groups[role]] if role else list(self.groups.values())
        return [p for g in groups for p in g.procs if p is not None]

    async def _listen(self, group: Group, index: int, ep: EngineProc) -> None:
        try:
            while True:
                kind, ident, payload = await read(ep.reader)
                if kind == "bye":
                    break
                self._on_message(ep, kind, ident, payload)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError):
            pass
        finally:
            self._on_exit(group, index, ep)

    def _on_message(self, ep: EngineProc, kind: str, ident: int, payload: Any) -> None:
        if kind == "stats":
            self._relay(ep, payload)
        elif kind == "state":
            ep.state = payload
            self._infos = None
            self._publish_process_metrics()
        elif kind in ("result", "error", "end"):
            target = ep.pending.pop(ident, None)
            if kind == "result":
                value, status = payload
                ep.state["status"] = status
            elif kind == "end":
                ep.state["status"] = payload
            if isinstance(target, asyncio.Future) and not target.done():
                if kind == "error":
                    target.set_exception(rebuild_error(payload))
                else:
                    target.set_result(value)
            elif isinstance(target, asyncio.Queue):
                target.put_nowait(rebuild_error(payload) if kind == "error" else _END)
        elif kind == "event":
            target = ep.pending.get(ident)
            if isinstance(target, asyncio.Queue):
                target.put_nowait(payload)

    def _relay(self, ep: EngineProc, calls: list[tuple[str, Any]]) -> None:
        """An engine's StatsSink calls into the front's sink (gauges: the sum over
        processes)."""
        for name, record in calls:
            if name in RELAYED:
                self._relay_shadow(ep, RELAYED[name], record)
                continue
            if name in GAUGES:
                ep.gauges[name] = int(record)
                total = sum(p.gauges.get(name, 0) for p in self._procs() if p.alive)
                method = getattr(self.sink, name, None)
                if method is not None and name != "set_loaded_models":
                    method(total)
                continue
            method = getattr(self.sink, name, None)
            if method is not None:
                method(record)

    def _relay_shadow(self, sender: EngineProc, kind: str, item: Any) -> None:
        """A follower's shadow check to the judge (`observe`), the judge's threshold change to
        the followers (`set_threshold`): one window of all traffic, one decision."""
        group = self.groups[sender.role]
        judge = group.procs[0] if group.procs else None
        targets = [judge] if kind == "observe" else group.procs[1:]
        for p in targets:
            if p is not None and p is not sender and p.alive:
                with contextlib.suppress(Exception):
                    p.writer.write(frame(kind, 0, [item]))

    def _publish_process_metrics(self) -> None:
        set_rss = getattr(self.sink, "set_engine_process", None)
        if set_rss is not None:
            for p in self._procs():
                set_rss(p.name, p.alive, int(p.state.get("rss_bytes", 0)))
        loaded = getattr(self.sink, "set_loaded_models", None)
        if loaded is not None:
            loaded(sum(1 for m in self.models() if m.ready))

    def _on_exit(self, group: Group, index: int, ep: EngineProc) -> None:
        ep.alive = False
        self._infos = None
        code = ep.proc.poll()
        why = NotReady(f"engine process {ep.name} exited while serving this request; retry",
                       None)
        for target in ep.pending.values():
            if isinstance(target, asyncio.Future) and not target.done():
                target.set_exception(why)
            elif isinstance(target, asyncio.Queue):
                target.put_nowait(why)
        ep.pending.clear()
        with contextlib.suppress(Exception):
            ep.writer.close()
        for name in GAUGES:
            ep.gauges.pop(name, None)
        if self._closing:
            return
        log.error("engine process exited; replacing it",
                  extra={"engine": ep.name, "pid": ep.proc.pid, "returncode": code})
        group.restarts += 1
        restart = getattr(self.sink, "record_engine_restart", None)
        if restart is not None:
            restart(group.role)
        task = asyncio.create_task(self._replace(group, index, ep))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _replace(self, group: Group, index: int, dead: EngineProc) -> None:
        await asyncio.to_thread(_reap, dead.proc)
        wait = BACKOFF_S[0]
        while not self._closing:
            try:
                ep = await self._spawn(group, index)
                group.procs[index] = ep
                return
            except OSError as e:
                log.error("engine process did not start", extra={"engine": dead.name,
                                                                 "error": str(e)})
                await asyncio.sleep(wait)
                wait = min(wait * 2, BACKOFF_S[1])

    # ---- EngineClient: lifecycle ----------------------------------------------------------
    async def start(self) -> None:
        for group in self.groups.values():
            if group.models:
                await self._start_group(group)
        log.info("engine processes up", extra={"text": len(self._procs("text")),
                                               "caption": len(self._procs("caption"))})

    async def add_model(self, path: str) -> None:
        """Serve one more artifact (built while serving) in every process of its role."""
        group = self.groups["caption" if model_kind(path) == "captioner" else "text"]
        group.models.append(path)
        if not group.procs:
            await self._start_group(group)
            return
        await asyncio.gather(*(self._call(p, "add_model", path) for p in group.procs
                               if p is not None and p.alive), return_exceptions=True)

    async def shutdown(self, grace_s: float = 10.0) -> None:
        self._closing = True
        for task in list(self._respawns):
            task.cancel()
        procs = self._procs()
        for p in procs:
            if p.alive:
                with contextlib.suppress(Exception):
                    p.writer.write(frame("shutdown", 0, grace_s))
        end = grace_s + 10.0
        for p in procs:
            try:
                await asyncio.wait_for(asyncio.to_thread(p.proc.wait), end)
            except TimeoutError:
                p.proc.kill()
                await asyncio.to_thread(p.proc.wait)
            if p.listener is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(p.listener, 1.0)

    def ready(self) -> bool:
        procs = self._procs()
        return bool(procs) and all(p.ready for p in procs) and \
            all(len(g.procs) == g.size for g in self.groups.values() if g.procs)

    def models(self) -> list[ModelInfo]:
        if self._infos is None:
            self._infos = self._merge_models()
        return self._infos

    def _merge_models(self) -> list[ModelInfo]:
        out: list[ModelInfo] = []
        for group in self.groups.values():
            views = [(p, {m.name: m for m in p.state.get("models", [])}) for p in group.procs
                     if p is not None]
            first = next((v for p, v in views if v), None)
            if first is None:
                continue
            for name, info in first.items():
                ready = info.ready and all(p.alive and v.get(name) is not None and
                                           v[name].ready for p, v in views)
                out.append(replace(info, ready=ready,
                                   details={**info.details, "engine_processes": len(views)}))
        return out

    def status(self) -> EngineStatus:
        st = [p.status() for p in self._procs() if p.alive]
        texts = self._waiting("text")
        return EngineStatus(
            queue_depth=texts + self._waiting("caption"),
            active_rows=sum(s.active_rows for s in st),
            loaded_models=sum(1 for m in self.models() if m.ready),
            caption_queue_depth=sum(s.caption_queue_depth for s in st),
            text_queue_depth=texts)

    def _waiting(self, role: str) -> int:
        """Rows sent to `role`'s processes and not being computed there, as the front knows."""
        return sum(max(0, p.outstanding - p.status().active_rows) for p in self._procs(role)
                   if p.alive)

    def resolve(self, task: Task, model: str | None, policy: str | None) -> ResolvedNames:
        for m in self.models():
            if m.kind == task and m.error is None and (model is None or m.name == model):
                return ResolvedNames(m.name, known_policy(policy or m.default_policy))
        return ResolvedNames(None, known_policy(policy))

    # ---- EngineClient: requests -----------------------------------------------------------
    def _pick(self, role: str, what: str) -> EngineProc:
        procs = [p for p in self._procs(role) if p.ready]
        if not procs:
            if not self._procs(role) and role == "caption":
                raise UnknownModel("no captioner model is loaded", "model")
            if not self._procs(role):
                raise UnknownModel("no text-classifier model is loaded", "model")
            raise NotReady(f"no {what} engine process is ready (starting or being replaced)")
        turn = next(self._turn)
        return min(procs, key=lambda p: (p.outstanding, (procs.index(p) - turn) % len(procs)))

    async def _call(self, ep: EngineProc, kind: str, payload: Any, weight: int = 0) -> Any:
        ident = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ep.pending[ident] = fut
        ep.outstanding += weight
        try:
            ep.writer.write(frame(kind, ident, payload))
            return await fut
        except asyncio.CancelledError:
            if ep.alive and ident in ep.pending:
                ep.pending.pop(ident, None)
                with contextlib.suppress(Exception):
                    ep.writer.write(frame("cancel", ident))
            raise
        finally:
            ep.outstanding -= weight

    async def classify(self, req: ClassifyRequest) -> list[ClassifyResult]:
        ep = self._pick("text", "text")
        waiting, limit = self._waiting("text"), self.settings.queue_limit
        if req.texts and waiting + len(req.texts) > limit:
            raise Overloaded(f"queue full: {waiting} texts waiting in the engine processes "
                             f"(queue_limit {limit})", 1.0)
        ep.dispatched += 1
        result: list[ClassifyResult] = await self._call(ep, "classify", req, len(req.texts))
        return result

    async def caption(self, req: CaptionRequest) -> list[CaptionResult]:
        ep = self._pick("caption", "caption")
        ep.dispatched += 1
        result: list[CaptionResult] = await self._call(ep, "caption", req, len(req.images))
        return result

    async def caption_stream(self, req: CaptionRequest) -> AsyncIterator[CaptionEvent]:
        ep = self._pick("caption", "caption")
        ep.dispatched += 1
        ident = next(self._ids)
        events: asyncio.Queue[Any] = asyncio.Queue()
        ep.pending[ident] = events
        ep.outstanding += len(req.images)
        finished = False
        try:
            ep.writer.write(frame("caption_stream", ident, req))
            while True:
                item = await events.get()
                if item is _END:
                    finished = True
                    return
                if isinstance(item, EngineError):
                    finished = True
                    raise item
                yield item
        finally:
            ep.outstanding -= len(req.images)
            if not finished and ep.alive and ep.pending.pop(ident, None) is not None:
                with contextlib.suppress(Exception):
                    ep.writer.write(frame("cancel", ident))

    async def reset_retuning(self, model: str) -> int:
        procs = [p for p in self._procs() if p.alive]
        if not any(m.name == model for m in self.models()):
            raise UnknownModel(f"unknown model {model!r}; loaded: "
                               f"{sorted(m.name for m in self.models())}", "name")
        got = await asyncio.gather(*(self._call(p, "reset_retuning", model) for p in procs
                                     if any(m.name == model for m in
                                            p.state.get("models", []))))
        return max((int(n) for n in got), default=0)

    def pids(self) -> dict[str, int]:
        """Engine process name -> pid (tests, the bench harness)."""
        return {p.name: p.proc.pid for p in self._procs() if p.alive}


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
