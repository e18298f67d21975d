"""Draw a soak record (bench.reliability.soak --json): per window, each process's resident
memory, open files and threads, and each request kind's p99.

    python -m bench.reliability.soak_plot docs/figures/soak_2h.json docs/figures/soak_2h.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = __doc__.splitlines()[0] if __doc__ else ""
PANELS = (("rss_mb_by_pid", "resident memory, MiB"), ("fds_by_pid", "open files"),
          ("threads_by_pid", "threads"))


def per_process(windows: list[dict[str, Any]], key: str) -> dict[str, list[float | None]]:
    """`key` (a per-pid map) per window, by process name and pid: one series each."""
    series: dict[str, list[float | None]] = {}
    for i, w in enumerate(windows):
        names = w.get("names_by_pid", {})
        for pid, value in w.get(key, {}).items():
            label = f"{names.get(pid, '?')} ({pid})"
            series.setdefault(label, [None] * len(windows))[i] = value
    return series


def per_kind_p99(windows: list[dict[str, Any]]) -> dict[str, list[float | None]]:
    kinds = sorted({k for w in windows for k in w.get("by_kind", {})})
    return {k: [w.get("by_kind", {}).get(k, {}).get("p99_ms") for w in windows] for k in kinds}


def draw(record: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = record["results"]
    windows = res["windows"]
    minutes = [w["start_s"] / 60 for w in windows]
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True)
    for ax, (key, title) in zip(axes, PANELS, strict=False):
        for label, ys in per_process(windows, key).items():
            ax.plot(minutes, ys, marker=".", label=label)
        ax.set_ylabel(title)
        ax.legend(fontsize=7, loc="best")
        ax.set_ylim(bottom=0)
    for kind, ys in per_kind_p99(windows).items():
        axes[3].plot(minutes, ys, marker=".", label=kind)
    axes[3].set_ylabel("p99 of 200s, ms")
    axes[3].set_ylim(bottom=0)
    axes[3].legend(fontsize=7, loc="best")
    axes[3].set_xlabel("minutes into the soak (window start)")
    machine = record.get("machine", {}).get("cpu", "")
    fig.suptitle(f"soak: {res['duration_s'] / 3600:.2f} h at {res.get('load')} x capacity, "
                 f"policy {res['policy']}\n{machine}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.reliability.soak_plot",
                                 description=DESCRIPTION)
    ap.add_argument("record", type=Path, help="a bench.reliability.soak --json record")
    ap.add_argument("out", type=Path, help="the PNG to write")
    args = ap.parse_args(argv)
    try:
        record = json.loads(args.record.read_text())
        if not record.get("results", {}).get("windows"):
            raise ValueError("it has no windows")
    except (OSError, ValueError) as e:
        print(f"soak_plot: error: cannot read {args.record}: {e}", file=sys.stderr)
        return 2
    draw(record, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
