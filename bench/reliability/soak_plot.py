"""Draw a soak record (bench.reliability.soak --json): per window, each process's resident
memory, open files and threads, and each request kind's p99; `--markdown` also prints the
per-window table.

    python -m bench.reliability.soak_plot docs/figures/soak_2h.json docs/figures/soak_2h.png \
        --markdown
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


def by_name(w: dict[str, Any], key: str) -> dict[str, float]:
    """A window's per-pid `key` summed by process name (text-0, caption-0, server, ...)."""
    out: dict[str, float] = {}
    for pid, value in w.get(key, {}).items():
        name = w.get("names_by_pid", {}).get(pid, "?")
        out[name] = out.get(name, 0) + value
    return out


def markdown(record: dict[str, Any]) -> str:
    """One row per window: answers, p50/p99 per kind, errors, and each process's RSS, with
    the totals of open files and threads."""
    windows = record["results"]["windows"]
    names = sorted({n for w in windows for n in by_name(w, "rss_mb_by_pid")})
    kinds = [k for k in ("classify", "oip", "caption", "scrape")
             if any(k in w.get("by_kind", {}) for w in windows)]
    head = ["window (min)", "sent", *(f"{k} 200s, p50 / p99 ms" for k in kinds), "5xx",
            "unexpected", *(f"RSS {n} MiB" for n in names), "open files", "threads"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in windows:
        rss = by_name(w, "rss_mb_by_pid")
        start = w["start_s"] / 60
        cells = [f"{start:.0f}-{start + record['results']['window_s'] / 60:.0f}", f"{w['sent']:,}"]
        for k in kinds:
            got = w.get("by_kind", {}).get(k, {})
            cells.append(f"{got.get('ok', 0):,}, {_ms(got.get('p50_ms'))} / "
                         f"{_ms(got.get('p99_ms'))}")
        cells += [str(w["5xx"]), str(w["unexpected"]),
                  *(f"{rss[n]:.0f}" if n in rss else "-" for n in names),
                  str(w.get("fds")), str(w.get("threads"))]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _ms(x: float | None) -> str:
    """A latency cell: '-' where a window had too few answers for it (a p99 needs 100)."""
    return "-" if x is None else f"{x:.1f}"


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
    ap.add_argument("--markdown", action="store_true", help="also print the per-window table")
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
    if args.markdown:
        print(markdown(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
