"""`eeserve bench URL`: closed/open-loop load test with latency percentiles, goodput, accuracy
and exit-layer histograms, one run per (policy, load level)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tools.errors import CliError

DEFAULT_REQUESTS = 100  # keep in step with tools.loadtest.bench_cli


def _levels(kind: type) -> Any:
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
        if not values or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(f"levels must be > 0: {text!r}")
        return values
    return parse


def parse_param(text: str) -> tuple[str, bool | int | float | str]:
    """`key=value` with the value read as bool, int, float or else string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    value: bool | int | float | str = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                continue
    return key.strip(), value


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="load-test a running server (loopback only by default)",
                       description=__doc__)
    p.add_argument("url", help="server base URL, e.g. http://127.0.0.1:8000")
    load = p.add_argument_group("load (each level is one run; several flags add levels)")
    load.add_argument("--concurrency", "-c", type=_levels(int), action="extend",
                      help="closed loop: clients, comma list allowed (default 1 when no --rate)")
    load.add_argument("--rate", "-r", type=_levels(float), action="extend",
                      help="open loop: Poisson arrivals per second, comma list allowed")
    load.add_argument("--requests", "-n", type=int, help="requests per run "
                      f"(default {DEFAULT_REQUESTS} when no --duration)")
    load.add_argument("--duration", "-d", type=float, help="seconds per run")
    load.add_argument("--warmup", type=int, default=0, help="unmeasured requests before each run")
    load.add_argument("--max-connections", type=int, default=256,
                      help="connection pool of open-loop runs (default 256)")
    load.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    req = p.add_argument_group("requests")
    req.add_argument("--task", choices=("classify", "caption"), default="classify")
    req.add_argument("--policy", "-p", action="append",
                     help="exit policy; repeat to compare policies (default: the server's)")
    req.add_argument("--param", type=parse_param, action="append", default=[],
                     metavar="KEY=VALUE", help="policy parameter override (repeatable)")
    req.add_argument("--model", help="model name (default: the server's first)")
    req.add_argument("--batch", type=int, default=1, help="inputs per request (default 1)")
    req.add_argument("--latency-budget-ms", type=float, help="per-request compute budget sent "
                     "to the server; also the default SLO for goodput")
    req.add_argument("--slo-ms", type=float, help="latency bound for goodput "
                     "(default: --latency-budget-ms)")
    req.add_argument("--deadline-ms", type=float, help="server-side deadline per request")
    req.add_argument("--max-tokens", type=int, help="caption: tokens per caption")
    data = p.add_argument_group("inputs")
    data.add_argument("--data", help="CSV/TSV/JSONL file with text,label columns")
    data.add_argument("--dataset", choices=("movie-reviews", "tiny"), default="movie-reviews",
                      help="built-in inputs when no --data (default movie-reviews, falling back "
                           "to the generated tiny set if it cannot be fetched)")
    data.add_argument("--split", choices=("test", "val", "train"), default="test")
    data.add_argument("--seed", type=int, default=0, help="input order and Poisson arrivals")
    out = p.add_argument_group("output")
    out.add_argument("--json", help="write the plan and every run's summary as JSON")
    out.add_argument("--plot", help="write latency vs load (PNG), one line per policy")
    out.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback URL (only load servers you own)")
    return p


def _check(args: argparse.Namespace) -> None:
    positive = [("--requests", args.requests), ("--duration", args.duration),
                ("--batch", args.batch), ("--timeout", args.timeout),
                ("--max-connections", args.max_connections),
                ("--latency-budget-ms", args.latency_budget_ms), ("--slo-ms", args.slo_ms),
                ("--deadline-ms", args.deadline_ms), ("--max-tokens", args.max_tokens)]
    for flag, value in positive:
        if value is not None and not value > 0:
            raise CliError(f"{flag} must be > 0, got {value}")
    if args.warmup < 0:
        raise CliError(f"--warmup must be >= 0, got {args.warmup}")


def run(args: argparse.Namespace) -> int:
    from tools.loadtest.bench_cli import execute

    _check(args)
    return execute(args, sys.stdout, sys.stderr)
