#!/usr/bin/env python
"""Medians of the before/after overload rounds (scripts/overload_rounds.sh) as a Markdown table.

    python scripts/overload_table.py /work/logs/relload/rounds
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any


def server_p99_ms(log: Path, span: list[float]) -> float | None:
    """p99 of the server's own duration_ms of the 200s in `span` (its JSON access log)."""
    if not log.exists():
        return None
    ms = []
    for line in log.read_text().splitlines():
        if '"eeserve.access"' not in line or '"status": 200' not in line:
            continue
        rec = json.loads(line)
        if rec.get("path") == "/v1/classify" and span[0] <= rec["ts"] <= span[1] + 5:
            ms.append(float(rec["duration_ms"]))
    return statistics.quantiles(ms, n=100)[98] if len(ms) >= 100 else None


def row(runs: list[dict[str, Any]]) -> list[str]:
    def med(key: str, scale: float = 1.0, digits: int = 1) -> str:
        vals = [r[key] * scale for r in runs if r.get(key) is not None]
        return f"{statistics.median(vals):,.{digits}f}" if vals else "–"

    def med_status(code: str) -> str:
        vals = [r["statuses"].get(code, 0) / r["duration_s"] for r in runs]
        return f"{statistics.median(vals):,.1f}"

    return [str(len(runs)), med("capacity_rps"), med("offered_rps"), med_status("200"),
            med("good_rps"), med("good_share_of_capacity", 100.0), med_status("429"),
            med_status("504"), med_status("503"), med("ok_p50_ms"), med("ok_p99_ms"),
            med("server_p99_ms"), med("k6_dropped_iterations"), med("server_cores", digits=2),
            med("k6_cores", digits=2)]


def main() -> int:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for f in sorted(Path(sys.argv[1]).glob("*.json")):
        mode, rest = f.stem.split("-", 1)
        checkout, rnd = rest.rsplit("-", 1)
        run = json.loads(f.read_text())
        if "epoch_span" in run:
            run["server_p99_ms"] = server_p99_ms(f.with_name(f"server-{checkout}-{rnd}.log"),
                                                 run["epoch_span"])
        groups[(mode, checkout)].append(run)
    head = ["flood", "code", "rounds", "capacity req/s", "offered req/s", "200/s",
            "good/s (200 within deadline)", "good % of capacity", "429/s", "504/s", "503/s",
            "p50 of 200s ms", "p99 of 200s ms", "server p99 of 200s ms", "k6 dropped",
            "server CPU cores", "k6 CPU cores"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (mode, checkout), runs in sorted(groups.items()):
        print("| " + " | ".join([mode, checkout, *row(runs)]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
