"""Present a `BenchReport`: a text table, a JSON file, a latency-vs-load PNG (matplotlib Agg)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tools.loadtest.records import RunSummary
from tools.loadtest.runner import BenchReport

COLUMNS = ("policy", "load", "ok/req", "req/s", "goodput", "p50 ms", "p95 ms", "p99 ms",
           "acc", "mean exit", "errors")


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def row(r: RunSummary) -> tuple[str, ...]:
    load = f"c={int(r.level)}" if r.mode == "closed" else f"{r.level:g}/s"
    exits = "-" if r.mean_exit_layer is None else f"{r.mean_exit_layer:.2f}/{r.num_layers}"
    errors = ", ".join(f"{k}:{v}" for k, v in r.errors.items()) or "-"
    return (r.policy, load, f"{r.ok}/{r.requests}", _f(r.throughput_rps, 2),
            _f(r.goodput_rps, 2), _f(r.latency_ms.p50), _f(r.latency_ms.p95),
            _f(r.latency_ms.p99), _f(None if r.accuracy is None else 100 * r.accuracy),
            exits, errors)


def format_table(runs: Sequence[RunSummary]) -> str:
    rows = [COLUMNS, *(row(r) for r in runs)]
    widths = [max(len(x[i]) for x in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)).rstrip()
             for x in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_histograms(runs: Sequence[RunSummary]) -> str:
    lines = []
    for r in runs:
        if r.exit_histogram:
            total = sum(r.exit_histogram.values())
            parts = " ".join(f"{k}:{100 * v / total:.0f}%" for k, v in r.exit_histogram.items())
            load = f"c={int(r.level)}" if r.mode == "closed" else f"{r.level:g}/s"
            lines.append(f"exit layers {r.policy} {load}: {parts}")
    return "\n".join(lines)


def write_json(report: BenchReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.to_dict(), indent=2, sort_keys=False) + "\n")


def write_plot(runs: Sequence[RunSummary], path: str | Path, title: str = "eeserve bench") -> None:
    """Latency (p50 solid, p99 dashed) against achieved throughput, one colour per policy and
    one panel per load mode (closed loop, open loop)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in ("closed", "open") if any(r.mode == m for r in runs)] or ["closed"]
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.2), squeeze=False)
    policies = list(dict.fromkeys(r.policy for r in runs))
    colours = plt.get_cmap("tab10")
    for ax, mode in zip(axes[0], modes, strict=True):
        for i, policy in enumerate(policies):
            pts = sorted((r for r in runs if r.mode == mode and r.policy == policy
                          and r.latency_ms.p50 is not None), key=lambda r: r.level)
            if not pts:
                continue
            xs = [r.throughput_rps for r in pts]
            ax.plot(xs, [r.latency_ms.p50 for r in pts], "o-", color=colours(i),
                    label=f"{policy} p50")
            ax.plot(xs, [r.latency_ms.p99 for r in pts], "s--", color=colours(i),
                    label=f"{policy} p99")
        ax.set_xlabel("throughput (requests/s)")
        ax.set_ylabel("latency (ms)")
        ax.set_title("closed loop (concurrency)" if mode == "closed" else "open loop (Poisson)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
