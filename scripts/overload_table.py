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


def row(runs: list[dict[str, Any]]) -> list[str]:
    def med(key: str, scale: float = 1.0) -> str:
        vals = [r[key] * scale for r in runs if r.get(key) is not None]
        return f"{statistics.median(vals):,.1f}" if vals else "–"

    def med_status(code: str) -> str:
        vals = [r["statuses"].get(code, 0) / r["duration_s"] for r in runs]
        return f"{statistics.median(vals):,.1f}"

    return [str(len(runs)), med("capacity_rps"), med("offered_rps"), med_status("200"),
            med("good_rps"), med("good_share_of_capacity", 100.0), med_status("429"),
            med_status("504"), med("ok_p50_ms"), med("ok_p99_ms"),
            med("k6_dropped_iterations")]


def main() -> int:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for f in sorted(Path(sys.argv[1]).glob("*.json")):
        mode, rest = f.stem.split("-", 1)
        checkout = rest.rsplit("-", 1)[0]
        groups[(mode, checkout)].append(json.loads(f.read_text()))
    head = ["flood", "code", "rounds", "capacity req/s", "offered req/s", "200/s",
            "good/s (200 within deadline)", "good % of capacity", "429/s", "504/s",
            "p50 of 200s ms", "p99 of 200s ms", "k6 dropped"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (mode, checkout), runs in sorted(groups.items()):
        print("| " + " | ".join([mode, checkout, *row(runs)]) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
