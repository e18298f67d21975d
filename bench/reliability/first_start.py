"""How long a first start keeps people waiting: `eeserve serve` with the default models missing.

Measures, from launching the process: the first answer of /healthz, the first /readyz (503)
that carries a build progress line, and the first one whose line shows training steps. Then the
server is stopped (SIGTERM), which ends the background build; the time for that is reported too,
and whether a build's staging folder was left behind. The default model directories point at an
empty temporary folder; the downloads come from EESERVE_DATA_DIR when it already holds them.

    EESERVE_DATA_DIR=.eeserve python -m bench.reliability.first_start --runs 3 \\
        --json docs/figures/first_start.json
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.harness import record, serve
from bench.reliability._common import first_start_env, progress_lines

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""


def one_run(timeout: float) -> dict[str, float | str | None]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        server = serve([], Path(tmp) / "server.log", env=first_start_env(tmp), wait=False)
        marks: dict[str, float | str | None] = {"healthz_s": None, "progress_s": None,
                                                "training_s": None, "line": None}
        try:
            while time.monotonic() - t0 < timeout and marks["training_s"] is None:
                try:
                    if marks["healthz_s"] is None and httpx.get(
                            server.url + "/healthz", timeout=1,
                            trust_env=False).status_code == 200:
                        marks["healthz_s"] = round(time.monotonic() - t0, 2)
                    if marks["healthz_s"] is not None:
                        status, lines = progress_lines(server.url)
                        if status == 503 and any(lines) and marks["progress_s"] is None:
                            marks["progress_s"] = round(time.monotonic() - t0, 2)
                        if any("step" in x for x in lines):
                            marks["training_s"] = round(time.monotonic() - t0, 2)
                            marks["line"] = next(x for x in lines if "step" in x)
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        finally:
            t1 = time.monotonic()
            server.stop(signal.SIGTERM, timeout=60)
            marks["stop_s"] = round(time.monotonic() - t1, 2)
            marks["leftover_staging"] = str(any(Path(tmp).glob(".*.building")))
    return marks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reliability.first_start",
                                description=DESCRIPTION)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", type=Path, help="write the run's record here")
    args = p.parse_args(argv)
    runs = []
    for i in range(args.runs):
        runs.append(one_run(args.timeout))
        print(f"run {i + 1}: {runs[-1]}", flush=True)
    out: dict[str, Any] = {"runs": runs}
    for key in ("healthz_s", "progress_s", "training_s", "stop_s"):
        vals = [float(v) for r in runs if (v := r[key]) is not None]
        out[f"median_{key}"] = round(statistics.median(vals), 2) if vals else None
    print(json.dumps({k: v for k, v in out.items() if k.startswith("median")}, indent=1))
    record("reliability.first_start", args.json, out, runs=args.runs, timeout_s=args.timeout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
