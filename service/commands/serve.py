"""`eeserve serve [DIR ...] [--host --port --device ...]`: serve artifacts with uvicorn.

With no directory (and no `EESERVE_MODELS`), serves the default text model and the demo
captioner, building each first when it is missing. Flags win over `EESERVE_*` environment
variables.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from service.cli import CliError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve model artifacts over HTTP (REST v1 + OIP v2)")
    p.add_argument("models", nargs="*", help="artifact directories (default: the default "
                                             "text model, built if missing)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--device", help="cpu, cuda or auto")
    p.add_argument("--dtype", help="float32, float16 or bfloat16")
    p.add_argument("--backend", choices=["torch", "onnx", "auto"],
                   help="layer runtime of text models (default auto: onnx on a CPU when the "
                        "artifact's graphs passed parity, else torch)")
    p.add_argument("--precision", choices=["fp32", "int8"], help="onnx precision")
    p.add_argument("--onnx-threads", type=int, help="ONNX Runtime intra-op threads")
    p.add_argument("--max-batch-size", type=int, help="rows in flight across the engine")
    p.add_argument("--max-queue-delay-ms", type=float, help="batching window when idle")
    p.add_argument("--queue-limit", type=int, help="queued texts before 429")
    p.add_argument("--default-policy", help="policy when a request names none")
    p.add_argument("--torch-threads", type=int, help="torch intra-op threads")
    p.add_argument("--plain-logs", action="store_true", help="human-readable logs, not JSON")
    return p


def settings_from(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from service.settings import Settings

    overrides: dict[str, Any] = {}
    for name in ("host", "port", "device", "dtype", "max_batch_size", "max_queue_delay_ms",
                 "queue_limit", "default_policy", "torch_threads", "backend", "precision",
                 "onnx_threads"):
        v = getattr(args, name)
        if v is not None:
            overrides[name] = v
    if args.models:
        overrides["models"] = list(args.models)
    if args.plain_logs:
        overrides["log_json"] = False
    try:
        return Settings(**overrides)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise CliError(f"--{field.replace('_', '-')}: {err['msg']}") from None


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.logging_setup import logging_config

    settings = settings_from(args)
    if not settings.models:
        from service.commands.train import build_default, build_default_captioner

        settings.models = [str(build_default(device=settings.device)),
                           str(build_default_captioner(device=settings.device))]
    for m in settings.models:
        if not Path(m).is_dir():
            raise CliError(f"{m}: no such artifact directory")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_config=logging_config(settings.log_json, settings.log_level),
                timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
                access_log=False, timeout_keep_alive=75)  # > clients' pool expiry (httpx 5 s)
    return 0
