#!/usr/bin/env python
"""How long a first start keeps people waiting: `eeserve serve` with the default models missing.

Measures, from launching the process: the first answer of /healthz, the first /readyz (503)
that carries a build progress line, and the first one whose line shows training steps. Then the
server is stopped (SIGTERM), which ends the background build; the time for that is reported too.
The default model directories point at an empty temporary folder; the downloads come from
EESERVE_DATA_DIR when it already holds them.

    EESERVE_DATA_DIR=.eeserve python scripts/first_start.py --runs 3 \
        --json docs/figures/first_start.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.e2e.server import free_port  # noqa: E402


def one_run(timeout: float) -> dict[str, float | str | None]:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT),
               "EESERVE_DEFAULT_MODEL_DIR": f"{tmp}/text-default",
               "EESERVE_CAPTION_MODEL_DIR": f"{tmp}/caption-default"}
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "service", "serve", "--port", str(port),
                                 "--device", "cpu", "--plain-logs"], cwd=ROOT, env=env,
                                stdout=open(f"{tmp}/server.log", "w"), stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        marks: dict[str, float | str | None] = {"healthz_s": None, "progress_s": None,
                                                "training_s": None, "line": None}
        try:
            while time.monotonic() - t0 < timeout and marks["training_s"] is None:
                try:
                    if marks["healthz_s"] is None and \
                            httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        marks["healthz_s"] = round(time.monotonic() - t0, 2)
                    if marks["healthz_s"] is not None:
                        r = httpx.get(url + "/readyz", timeout=2)
                        lines = [m.get("progress") or "" for m in r.json()["models"]]
                        if r.status_code == 503 and any(lines) and marks["progress_s"] is None:
                            marks["progress_s"] = round(time.monotonic() - t0, 2)
                        if any("step" in x for x in lines):
                            marks["training_s"] = round(time.monotonic() - t0, 2)
                            marks["line"] = next(x for x in lines if "step" in x)
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        finally:
            t1 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            marks["stop_s"] = round(time.monotonic() - t1, 2)
            marks["leftover_staging"] = str(any(Path(tmp).glob(".*.building")))
    return marks


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    runs = []
    for i in range(args.runs):
        runs.append(one_run(args.timeout))
        print(f"run {i + 1}: {runs[-1]}", flush=True)
    out: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                           "platform": platform.platform(), "runs": runs}
    for key in ("healthz_s", "progress_s", "training_s", "stop_s"):
        vals = [float(r[key]) for r in runs if r[key] is not None]  # type: ignore[arg-type]
        out[f"median_{key}"] = round(statistics.median(vals), 2) if vals else None
    print(json.dumps({k: v for k, v in out.items() if k.startswith("median")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
