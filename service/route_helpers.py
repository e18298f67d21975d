"""What every route module shares: the engine of a request, input checks, error docs, the
disconnect watch and the request's metric labels. No torch.

Routes (service/routes_v1.py, routes_v2.py, routes_caption.py) import from here, never from each
other.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from fastapi import Request
from pydantic import BaseModel, TypeAdapter, ValidationError

from service.errors import ClientGone, describe_errors
from service.progressive import require_model
from service.protocol import BadRequest, EngineClient, ModelInfo, ResolvedNames, Task
from service.schemas import ErrorBody, ParamValue
from service.settings import Settings

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorBody, "description": d} for s, d in [
        (400, "bad input; the message names the field and the limit"),
        (401, "missing or wrong API key"), (404, "unknown model"),
        (413, "body over max_body_bytes"), (429, "queue full; retry after Retry-After seconds"),
        (500, "internal error (quote the request id)"), (503, "not ready or shutting down"),
        (504, "deadline passed")]}
"""OpenAPI `responses` of the error statuses (routes pick the ones they can answer)."""


def body_of(model: type[BaseModel]) -> dict[str, Any]:
    """A route's `openapi_extra` for a JSON body of `model` that the route parses itself
    (`parse_body`); the schema is registered under components by `schemas.apply_limits`."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def parse_body(model: type[M], raw: bytes) -> M:
    """The raw request body parsed and validated in one pass (pydantic's JSON parser), or a
    400 naming the most specific offending field. JSON that pydantic's parser refuses but
    Python's reads (a lone surrogate escape, `"\\ud800"`) is validated from Python's reading,
    so the text checks can name the field and the character."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        errors = list(e.errors())
    if any(err.get("type") == "json_invalid" for err in errors):
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            pass
        else:
            return validated(model, data)
    field, message = describe_errors(errors)
    raise BadRequest(message, field)


def validated(model: type[M], data: Any, prefix: tuple[str, ...] = ()) -> M:
    """Parsed `data` as `model`, or a 400 naming the most specific offending field (under
    `prefix`)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        field, message = describe_errors(list(e.errors()), prefix)
        raise BadRequest(message, field) from None


@dataclass(frozen=True)
class Admitted(Generic[T]):
    """What an inference route knows once its request passed the prologue (`admit`)."""

    engine: EngineClient
    settings: Settings
    names: ResolvedNames  # the engine's names for the model and policy the request runs under
    policy: str | None  # the policy asked for, else the server's default (None: the model's)
    params: dict[str, Any]  # policy parameters, each checked (`check_param`)
    items: list[T]  # the request's inputs, within the limits


def admit(request: Request, task: Task, model: str | None, policy: str | None,
          params: Mapping[str, Any], params_field: str,
          inputs: Callable[[Settings], list[T]]) -> Admitted[T]:
    """The prologue of /v1/classify, /v2 infer and /v1/caption, in one place and this order:
    the model can answer now (503 naming why), the inputs are within the limits (`inputs`
    raises a 400 naming the field), the policy is the one asked for or the default, the engine
    resolves the model's and the policy's names once (they label the access log and the
    metrics), and each policy parameter is checked (400 naming `params_field`.KEY). The
    policy's own checks of its parameters run in the engine, once."""
    engine, settings = engine_of(request), settings_of(request)
    require_model(engine, model, task)
    items = inputs(settings)
    asked = policy or settings.default_policy
    names = engine.resolve(task, model, asked)
    label_request(request, names, len(items))
    checked = {k: check_param(v, f"{params_field}.{k}") for k, v in params.items()}
    return Admitted(engine, settings, names, asked, checked, items)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (its engine rows are then
    dropped at the next layer step)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # this request was cancelled (shutdown): so is its work
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task not in done:
        task.cancel()
        raise ClientGone("client disconnected")
    return task.result()


def engine_of(request: Request) -> EngineClient:
    """The engine the app's lifespan started."""
    engine: EngineClient = request.app.state.engine
    return engine


def models_of(request: Request) -> list[ModelInfo]:
    """The engine's models, each served one with the state of its artifact directory on disk
    (`details["artifact"]`, service/artifact_watch.py) once the lifespan watches them."""
    infos = engine_of(request).models()
    watch = getattr(request.app.state, "artifacts", None)
    return watch.annotate(infos) if watch is not None else infos


def server_ready(request: Request) -> bool:
    """Readiness of the server (/readyz, /v2/health/ready) under `ready_when`: every model
    serves (`all`), or at least one does (`any`)."""
    engine = engine_of(request)
    if settings_of(request).ready_when == "any":
        return any(m.ready for m in engine.models())
    return engine.ready()


def received_at(request: Request) -> float | None:
    """`time.perf_counter()` when the outermost middleware let the request in (None without
    it): a request's deadline counts from then, time spent waiting for the event loop included."""
    value = getattr(request.state, "received_at", None)
    return float(value) if value is not None else None


def settings_of(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


def label_request(request: Request, names: ResolvedNames, items: int) -> None:
    """Give the request's access-log line and metrics the engine's names for its model and
    policy ("unknown" when the engine does not know them) and its number of items."""
    labels = request.state.labels
    labels.items = items
    labels.model = names.model or "unknown"
    labels.policy = names.policy or "unknown"


def check_texts(inputs: str | list[str], settings: Settings) -> list[str]:
    """The texts of a request, within the configured limits (BadRequest naming the field)."""
    texts = [inputs] if isinstance(inputs, str) else list(inputs)
    if not texts:
        raise BadRequest("inputs: give at least one text", "inputs")
    if len(texts) > settings.max_texts_per_request:
        raise BadRequest(f"inputs: {len(texts)} texts is over the limit of "
                         f"{settings.max_texts_per_request} (max_texts_per_request)", "inputs")
    return [check_text(t, f"inputs[{i}]", settings) for i, t in enumerate(texts)]


def check_text(text: str, field: str, settings: Settings) -> str:
    """One text: non-empty, within `max_chars_per_text`, and plain text: no lone surrogates
    (not encodable as UTF-8) and no control characters other than whitespace (BadRequest
    naming `field`)."""
    if len(text) > settings.max_chars_per_text:
        raise BadRequest(f"{field}: {len(text)} characters is over the limit of "
                         f"{settings.max_chars_per_text} (max_chars_per_text)", field)
    check_plain(text, field)
    if not text.strip():
        raise BadRequest(f"{field}: text is empty", field)
    return text


# lone surrogates and control characters other than whitespace (tab, newlines, FF, VT, NEL)
_NOT_TEXT = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff]")



_PARAM: TypeAdapter[Any] = TypeAdapter(ParamValue)


def check_param(value: Any, field: str) -> Any:
    """A policy parameter of /v2's `parameters`, by /v1's `params` rule (`schemas.ParamValue`:
    a boolean, a string or a finite number within ±2^53); BadRequest naming `field`."""
    try:
        value = _PARAM.validate_python(value, strict=True)
    except ValidationError:
        raise BadRequest(f"{field}: must be a boolean, a string, or a finite number within "
                         "±2^53", field) from None
    if isinstance(value, str):
        check_plain(value, field)
    return value


def check_plain(text: str, field: str) -> None:
    """BadRequest naming `field` when `text` holds a lone surrogate or a control character."""
    bad = _NOT_TEXT.search(text)
    if bad is not None:
        ch = bad.group()
        kind = "a lone surrogate" if "\ud800" <= ch <= "\udfff" else "a control character"
        raise BadRequest(f"{field}: U+{ord(ch):04X} at position {bad.start()} is {kind}, not "
                         f"text", field)
