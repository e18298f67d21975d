"""Structured logs: one JSON object per line (or key=value text), secrets and bodies dropped by
key, and the `dictConfig` that routes eeserve's and uvicorn's loggers through it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}
_SECRET_KEYS = frozenset({"authorization", "api_key", "password", "token", "body", "text",
                          "texts", "inputs"})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and the record's extras (secrets and
    bodies dropped by key)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        for k, v in vars(record).items():
            if k not in _STD_ATTRS and not k.startswith("_") and k.lower() not in _SECRET_KEYS:
                out[k] = v
        if record.exc_info and "trace" not in out:
            out["trace"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def logging_config(json_logs: bool = True, level: str = "info") -> dict[str, Any]:
    """A `logging.config.dictConfig` dict for eeserve and uvicorn (pass it as uvicorn's
    `log_config`); uvicorn's own access log is replaced by `eeserve.access`."""
    fmt = {"()": f"service.logging_setup.{'JsonFormatter' if json_logs else 'PlainFormatter'}"}
    lvl = level.upper()
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"default": fmt},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "default",
                                "stream": "ext://sys.stderr"}},
        "loggers": {
            "eeserve": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "service": {"handlers": ["stderr"], "level": lvl, "propagate": False},
        },
    }


class PlainFormatter(logging.Formatter):
    """Human-readable lines with the same extras as JsonFormatter, as key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items()
                          if k not in _STD_ATTRS and not k.startswith("_")
                          and k.lower() not in _SECRET_KEYS and k != "trace" and v is not None)
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: " \
               f"{record.getMessage()} {extras}".rstrip()
        trace = getattr(record, "trace", None)
        return f"{line}\n{trace}" if trace else line
