"""JSON and plain log formatters drop secrets and bodies; the dictConfig names real classes."""

from __future__ import annotations

import importlib
import json
import logging
import sys

from service.logging_setup import JsonFormatter, PlainFormatter, logging_config


def _record(exc: bool = False, **extra: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("eeserve.test", logging.WARNING, __file__, 1, "hello %s", ("you",),
                            exc_info)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


SECRETS = {"authorization": "Bearer k", "api_key": "k", "password": "p", "token": "t",
           "body": "{...}", "text": "a review", "texts": ["x"], "inputs": ["y"]}


def test_json_lines_carry_extras_but_no_secrets() -> None:
    out = json.loads(JsonFormatter().format(_record(request_id="r1", status=200, **SECRETS)))
    assert out["msg"] == "hello you" and out["level"] == "warning"
    assert out["logger"] == "eeserve.test" and isinstance(out["ts"], float)
    assert (out["request_id"], out["status"]) == ("r1", 200)
    assert not set(SECRETS) & set(out)


def test_json_lines_carry_the_traceback() -> None:
    out = json.loads(JsonFormatter().format(_record(exc=True)))
    assert "ValueError: bad" in out["trace"]


def test_plain_lines_are_key_value_with_the_trace_below() -> None:
    line = PlainFormatter().format(_record(request_id="r1", skipped=None, trace="Trace!",
                                           **SECRETS))
    first, _, rest = line.partition("\n")
    assert "WARNING eeserve.test: hello you request_id=r1" in first
    assert "skipped" not in first and rest == "Trace!"
    assert not any(f"{k}=" in line for k in SECRETS)


def test_logging_config_points_at_the_formatters_and_silences_uvicorn_access() -> None:
    for json_logs, cls in ((True, JsonFormatter), (False, PlainFormatter)):
        cfg = logging_config(json_logs, "debug")
        module, _, name = cfg["formatters"]["default"]["()"].rpartition(".")
        assert getattr(importlib.import_module(module), name) is cls
        assert cfg["loggers"]["eeserve"]["level"] == "DEBUG"
        assert cfg["loggers"]["uvicorn.access"]["handlers"] == []
