"""Run the app under uvicorn with connection hygiene and a clean end. No torch.

    run_server:     uvicorn with the settings' timeouts (`timeout_headers_s`, `timeout_body_s`,
                    `timeout_keep_alive_s`) and connection cap (`max_connections`), and a server
                    that tells the app when shutdown starts.
    GuardedHTTP:    uvicorn's HTTP protocol (httptools, else h11) plus what uvicorn lacks: a
                    connection that has not sent a whole request head within `timeout_headers_s`
                    (from connecting, or from the first byte of a later request) or a whole body
                    within `timeout_body_s` (from the end of its head) gets a 408 and is closed;
                    a connection beyond `max_connections` gets a 503 and is closed at once. Idle
                    keep-alive connections are closed by uvicorn's own `timeout_keep_alive`.
                    Load shedding's fast path: an inference request the app's `Shedder` refuses
                    is answered 429 from here, as soon as its head is parsed -- no ASGI task, no
                    middleware, a pre-built response written to the socket (held `shed_hold_ms`
                    by a timer); its body is read and dropped, the connection kept alive.
    ShutdownSignal: set when the server starts shutting down; requests still running when the
                    grace period ends are answered 503 with the uniform JSON error by
                    service.middleware (uvicorn would cancel them into a plain-text 500 and log
                    a traceback).
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from service.middleware import ShutdownSignal
from service.settings import Settings
from service.shedding import Shedder, request_id_of


def _raw_error(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message, "code": "timeout" if status == 408 else "not_ready",
                       "field": None, "request_id": None}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class GuardedHTTP(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """See the module docstring. Limits come from the class attributes `run_server` sets."""

    timeout_headers_s: float = 10.0
    timeout_body_s: float = 30.0
    max_connections: int = 1024
    shedder: Shedder | None = None  # the app's (None: refusals only in the ASGI middleware)
    served_state: Any = None  # the app's `state`, for its engine (uvicorn has `app_state`)

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        """uvicorn's hook (httptools protocol) that starts the ASGI task of a parsed request
        head: a request the shedder refuses is answered here instead."""
        sh = self.shedder
        if sh is not None:
            scope = cycle.scope
            refusal = sh.decide(scope["method"], scope["path"],
                                getattr(self.served_state, "engine", None),
                                scope.setdefault("state", {}))  # let in: in flight from now
            if refusal is not None:
                self._shed(cycle, *refusal)
                return
        super()._start_asgi_task(cycle, app)

    def _shed(self, cycle: Any, endpoint: str, head: bytes) -> None:
        assert self.shedder is not None
        rid = request_id_of(cycle.scope["headers"])
        body = self.shedder.body(head, rid)
        close = b"" if cycle.keep_alive else b"connection: close\r\n"
        data = (b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\nx-request-id: " +
                rid.encode() + b"\r\nretry-after: " + self.shedder.retry_after + b"\r\n" +
                close + b"\r\n" + body)
        hold = self.shedder.take_hold()
        if hold > 0:
            self.loop.call_later(hold, self._send_shed, cycle, data, endpoint, True)
        else:  # not inline: finishing starts the next pipelined request, which may be refused
            self.loop.call_soon(self._send_shed, cycle, data, endpoint, False)

    def _send_shed(self, cycle: Any, data: bytes, endpoint: str, held: bool) -> None:
        """Write a refusal and finish its cycle as uvicorn finishes a response (keep-alive,
        pipelined requests); the rest of its body is dropped as it arrives."""
        assert self.shedder is not None
        if held:
            self.shedder.give_back_hold()
        self.shedder.refused(endpoint)
        if self.transport.is_closing():
            return
        cycle.response_started = True
        cycle.response_complete = True
        cycle.message_event.set()
        self.transport.write(data)
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._read_timer: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        if len(self.connections) > self.max_connections:
            self._refuse(503, "Service Unavailable",
                         f"too many open connections (max_connections={self.max_connections})")
            return
        self._arm("headers")

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            self._disarm()
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            if self._phase != "headers":  # part of a new request head is in
                self._arm("headers")
        elif cycle.more_body:
            if self._phase != "body":
                self._arm("body")
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, phase: str) -> None:
        self._disarm()
        self._phase = phase
        after = self.timeout_headers_s if phase == "headers" else self.timeout_body_s
        self._read_timer = self.loop.call_later(after, self._expired, phase)

    def _disarm(self) -> None:
        timer = getattr(self, "_read_timer", None)
        if timer is not None:
            timer.cancel()
        self._read_timer, self._phase = None, None

    def _expired(self, phase: str) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if phase == "headers" and cycle is not None and not cycle.response_complete:
            return  # a request is being served; its head arrived in time
        if phase == "body" and (cycle is None or not cycle.more_body):
            return
        limit = self.timeout_headers_s if phase == "headers" else self.timeout_body_s
        if cycle is not None and not cycle.response_complete and cycle.response_started:
            self.transport.close()  # the app already answered: nothing more to say
            return
        self._refuse(408, "Request Timeout",
                     f"request {'head' if phase == 'headers' else 'body'} not received within "
                     f"{limit:g} s (timeout_{phase}_s)")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self.transport.write(_raw_error(status, reason, message))
        self.transport.close()


class GracefulServer(uvicorn.Server):
    """uvicorn's server, raising `signal` as soon as shutdown begins."""

    def __init__(self, config: uvicorn.Config, signal: ShutdownSignal):
        super().__init__(config)
        self.signal = signal

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.signal.begin()
        await super().shutdown(sockets)


def protocol_for(settings: Settings, app: Any = None) -> type[GuardedHTTP]:
    """A GuardedHTTP subclass carrying these settings' limits (and `app`'s shedder, when it
    has one and uvicorn's httptools protocol offers the hook; else the middleware sheds)."""
    state = getattr(app, "state", None)
    shedder = getattr(state, "shedder", None)
    if not callable(getattr(AutoHTTPProtocol, "_start_asgi_task", None)):
        shedder = None  # h11 protocol, or a uvicorn without the hook
    return type("EeserveHTTP", (GuardedHTTP,), {
        "timeout_headers_s": settings.timeout_headers_s,
        "timeout_body_s": settings.timeout_body_s,
        "max_connections": settings.max_connections,
        "shedder": shedder, "served_state": state})


def server_for(app: Any, settings: Settings, **uvicorn_kw: Any) -> GracefulServer:
    """The configured server (not started); `app.state.shutdown` is its ShutdownSignal."""
    grace: Any = settings.shutdown_grace_s  # uvicorn types it int; a float works the same
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            http=protocol_for(settings, app),
                            timeout_keep_alive=max(1, round(settings.timeout_keep_alive_s)),
                            timeout_graceful_shutdown=grace, access_log=False, **uvicorn_kw)
    return GracefulServer(config, app.state.shutdown)


def run_server(app: Any, settings: Settings, **uvicorn_kw: Any) -> None:
    """Serve `app` until SIGINT / SIGTERM (uvicorn.run, with the guards above)."""
    server_for(app, settings, **uvicorn_kw).run()
