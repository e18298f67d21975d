"""`eeserve serve [DIR ...] [--host --port --device ...]`: serve artifacts with uvicorn.

With no directory (and no `EESERVE_MODELS`), serves the default text model and the demo
captioner. The server answers at once: a missing one is built in a subprocess while it runs
(text model first), /readyz says 503 with the build's stage and time left, and each model serves
as soon as it is built (service/building.py). Flags win over `EESERVE_*` environment variables.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from service.building import BuildJob
from tools.errors import CliError

# measured whole builds on the 2-vCPU reference machine (docs/benchmarks/reliability.md, "First
# start"): the first guess shown before a build's own training pace is known
TEXT_BUILD_S = 1_600  # download + 1,060 training steps (~24 min) + logits, profile, calibration
CAPTION_BUILD_S = 720  # features + stage 1 (<= 480 s) + stage 2 (<= 150 s) + logits, calibration


# the settings `eeserve serve` takes as flags (--max-batch-size for max_batch_size, ...); every
# other setting is an EESERVE_* variable. Types, choices, limits and help come from `Settings`.
FLAGS = ("host", "port", "workers", "device", "dtype", "backend", "precision", "onnx_threads",
         "max_batch_size", "max_queue_delay_ms", "queue_limit", "default_policy",
         "torch_threads")


def _flag_spec(name: str) -> dict[str, Any]:
    """argparse keywords for one `Settings` field: its type or choices, and its help."""
    from service.settings import Settings

    field = Settings.model_fields[name]
    ann = field.annotation
    kinds = [ann] if get_origin(ann) is Literal else [
        a for a in (get_args(ann) or (ann,)) if a is not type(None)]  # X | None -> X
    spec: dict[str, Any] = {"help": f"{field.description or name.replace('_', ' ')} "
                                    f"(default {field.default}; env EESERVE_{name.upper()})"}
    literal = [a for a in kinds if get_origin(a) is Literal]
    if literal:  # named in the help; Settings refuses other values in one line
        count = ["N"] if int in kinds else []  # int | Literal["auto"]: a count or a word
        spec["metavar"] = "{" + ",".join([*count, *map(str, get_args(literal[0]))]) + "}"
    elif kinds and kinds[0] in (int, float):
        spec["type"] = kinds[0]
    return spec


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve model artifacts over HTTP (REST v1 + OIP v2)")
    p.add_argument("models", nargs="*", help="artifact directories (default: the default "
                                             "text model, built if missing)")
    for name in FLAGS:
        p.add_argument(f"--{name.replace('_', '-')}", **_flag_spec(name))
    p.add_argument("--plain-logs", action="store_true", help="human-readable logs, not JSON")
    return p


def settings_from(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from service.settings import Settings

    overrides: dict[str, Any] = {n: getattr(args, n) for n in FLAGS
                                 if getattr(args, n) is not None}
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


def default_models() -> tuple[list[str], list[BuildJob]]:
    """The default text model and demo captioner: the directories already built, and build jobs
    for the missing ones (text model first)."""
    from tools.commands.train import DEFAULT_CAPTION_DIR, DEFAULT_MODEL_DIR

    jobs = [BuildJob("text-default", "text-default", "text-classifier", DEFAULT_MODEL_DIR,
                     TEXT_BUILD_S, {"training": 90.0}),
            BuildJob("caption-default", "caption-default", "captioner", DEFAULT_CAPTION_DIR,
                     CAPTION_BUILD_S, {"training stage 1": 210.0, "training stage 2": 60.0})]
    built = [j for j in jobs if (j.out / "manifest.json").exists()]
    return [str(j.out) for j in built], [j for j in jobs if j not in built]


def run(args: argparse.Namespace) -> int:
    from service.app import create_app
    from service.logging_setup import logging_config
    from service.serving import run_server

    settings = settings_from(args)
    builds: list[BuildJob] = []
    if not settings.models:
        settings.models, builds = default_models()
        for job in builds:
            print(f"[eeserve] {job.name} missing at {job.out}: building it while the server "
                  f"runs (progress at /readyz and on the page at /; log in {job.log_file})",
                  flush=True)
    for m in settings.models:
        if not Path(m).is_dir():
            raise CliError(f"{m}: no such artifact directory")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_server(create_app(settings, builds=builds), settings,
               log_config=logging_config(settings.log_json, settings.log_level))
    return 0
