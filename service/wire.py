"""The local wire between the front process and its engine processes. Torch-free.

Frames on a stream socket (a `socketpair` inherited by the engine process): a 4-byte
big-endian length, then a pickled tuple `(kind, id, payload)`. Both ends are our own code on
one machine, started together from one install, so pickle is safe here and the cheapest
encoding of the seam's plain dataclasses (`service.protocol`). Errors cross as
`(class name, message, field, retry_after_s)` and are rebuilt as the same `EngineError`
subclass, so the HTTP layer answers exactly as with the in-process engine.

Front -> engine: `config` (the Settings and the models this process serves), `classify`,
`caption`, `caption_stream`, `cancel`, `add_model`, `reset_retuning`, `shutdown`.
Engine -> front: `state` (ready, models, status, pid, RSS), `stats` (StatsSink calls, flushed
before every answer so /metrics counts a request as soon as its answer is out), `result`,
`error`, `event` (one streamed caption event), `end` (a stream finished).
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

from service.protocol import (
    BadRequest,
    DeadlineExceeded,
    EngineError,
    InternalError,
    NotReady,
    Overloaded,
    UnknownModel,
)

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024  # a caption request's images at their limits fit many times
Message = tuple[str, int, Any]

_ERRORS: dict[str, type[EngineError]] = {c.__name__: c for c in (
    EngineError, BadRequest, UnknownModel, Overloaded, DeadlineExceeded, NotReady, InternalError)}


def frame(kind: str, ident: int, payload: Any = None) -> bytes:
    """One message as bytes for `writer.write` (one call: frames never interleave)."""
    body = pickle.dumps((kind, ident, payload), protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


async def read(reader: asyncio.StreamReader) -> Message:
    """The next message; `asyncio.IncompleteReadError` when the other end has gone."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    kind, ident, payload = pickle.loads(await reader.readexactly(size))
    return str(kind), int(ident), payload


def error_payload(e: BaseException) -> tuple[str, str, str | None, float | None]:
    """An exception as plain values (an unexpected one becomes an InternalError)."""
    if isinstance(e, EngineError):
        return (type(e).__name__ if type(e).__name__ in _ERRORS else "EngineError", e.message,
                e.field, getattr(e, "retry_after_s", None))
    return ("InternalError", f"{type(e).__name__}: {e}", None, None)


def rebuild_error(payload: tuple[str, str, str | None, float | None]) -> EngineError:
    """The `EngineError` subclass an engine process raised, with its message and field."""
    name, message, field, retry_after = payload
    cls = _ERRORS.get(name, InternalError)
    if cls is Overloaded:
        return Overloaded(message, retry_after if retry_after is not None else 1.0)
    err = cls(message, field)
    return err
