"""`eeserve evaluate DIR --split test [--json F] [--plot F.png]`: offline policy sweeps."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from tools.commands.calibrate import add_guard_options, guard_config, table
from tools.errors import CliError

if TYPE_CHECKING:
    from policies.fit.evaluation import CurvePoint, EvaluationReport
    from policies.fit.sweep import OperatingPoint

SPLITS = ("val", "test")
MARKERS = ("o", "s", "^", "v", "D", "x", "+", "P", "h", "<", ">")
LINES = ("-", "--", "-.", ":")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="replay every policy over a parameter sweep on cached "
                                        "logits: accuracy, speed-ups, Pareto plot")
    p.add_argument("dir", type=Path, help="artifact directory")
    p.add_argument("--split", default="test", help="split to evaluate (val or test; default test)")
    p.add_argument("--json", type=Path, metavar="F", help="write the full report as JSON")
    p.add_argument("--plot", type=Path, metavar="F.png", help="write a Pareto plot (PNG)")
    p.add_argument("--policy", action="append", dest="policies", metavar="NAME",
                   help="evaluate only this policy (repeatable); default: all and the oracles")
    p.add_argument("--eenet-budgets", default="0.3,0.4,0.5,0.6,0.7,0.8,0.9", metavar="B,B,...",
                   help="EENet budgets to fit on validation (fractions of full cost)")
    add_guard_options(p)
    return p


def _budgets(text: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"--eenet-budgets must be numbers separated by commas, got {text!r}") \
            from None
    bad = [v for v in vals if not 0.0 < v <= 1.0]
    if bad:
        raise CliError(f"--eenet-budgets: {bad[0]} is not in (0, 1] (fraction of full cost)")
    return vals


def run(args: argparse.Namespace) -> int:
    from models.artifact import read_manifest
    from policies.fit.calibration import load_split
    from policies.fit.evaluation import eenet_budget_summary, evaluate

    if args.split not in SPLITS:
        raise CliError(f"--split must be one of {', '.join(SPLITS)}, got {args.split!r}")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise CliError(f"--plot {args.plot}: the plot is a PNG file (name it *.png)")
    if not args.dir.is_dir():
        raise CliError(f"{args.dir}: no such artifact directory")
    budgets = _budgets(args.eenet_budgets)
    cfg = guard_config(args)
    manifest = read_manifest(args.dir)
    val = load_split(args.dir, "val", manifest)
    data = val if args.split == "val" else load_split(args.dir, args.split, manifest)
    report = evaluate(val, data, args.split, manifest.get("policies") or {}, args.policies, cfg,
                      budgets)
    print(format_sweep(report))
    print()
    print(format_summary(report))
    realised = eenet_budget_summary(report)
    if realised:
        print(f"\nEENet realised cost vs budget on {args.split}: mean |error| "
              f"{realised['mean_abs'] * 100:.2f} %, max {realised['max_abs'] * 100:.2f} % over "
              f"{realised['budgets']} budgets" + _calibrated_budget(report))
    doc = {"artifact": str(args.dir), "model": manifest.get("name"),
           "latency_profile": {k: (manifest.get("latency") or {}).get(k)
                               for k in ("device", "machine", "threads", "seq_len")},
           "eenet_budget_realisation": realised, **report.to_json()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    if args.plot:
        plot_pareto(report, args.plot, f"{manifest.get('name', args.dir.name)} ({args.split})")
    return 0


def _calibrated_budget(report: EvaluationReport) -> str:
    rep = next((p for p in report.policies if p.name == "eenet"), None)
    cal = rep.calibrated if rep else None
    if cal is None or cal.budget_error is None:
        return ""
    return f"; calibrated budget: {cal.budget_error * 100:+.2f} %"


def _value(p: CurvePoint) -> str:
    if p.value is None:
        return "never" if p.parameter not in ("-", "calibrated") else p.parameter
    return f"{p.parameter}={p.value:.4g}"


def _cells(name: str, label: str, op: OperatingPoint, last: float) -> tuple[str, ...]:
    return (name, label, f"{op.accuracy * 100:.2f}", f"{(op.accuracy - last) * 100:+.2f}",
            f"{op.mean_exit:.2f}", f"{op.layer_speedup:.2f}", f"{op.cost_speedup:.2f}")


HEADER = ("policy", "parameter", "acc %", "d acc pt", "mean exit", "layer x", "cost x")


def format_sweep(report: EvaluationReport) -> str:
    rows = []
    for rep in report.policies:
        for p in rep.curve:
            rows.append(_cells(rep.name, _value(p), p.point, report.last_accuracy))
        if rep.calibrated:
            rows.append(_cells(rep.name, "calibrated", rep.calibrated.point,
                               report.last_accuracy))
    return (f"{report.split}: {report.n} rows, {report.num_exits} exits, last-exit accuracy "
            f"{report.last_accuracy * 100:.2f} %; costs: {report.costs['source']}\n"
            + table(HEADER, rows))


def format_summary(report: EvaluationReport) -> str:
    tol = report.tolerance * 100
    header = ("policy", "calibrated: d acc pt", "layer x", "cost x", f"kept <= {tol:g} pt",
              f"best layer x at <= {tol:g} pt")
    rows = []
    for rep in report.policies:
        cal, best = rep.calibrated, rep.best
        kept = "-" if rep.kept is None else ("yes" if rep.kept else "NO")
        delta = None if cal is None else cal.point.accuracy - cal.point.last_accuracy
        rows.append((rep.name, "-" if delta is None else f"{delta * 100:+.2f}",
                     "-" if cal is None else f"{cal.point.layer_speedup:.2f}",
                     "-" if cal is None else f"{cal.point.cost_speedup:.2f}", kept,
                     "-" if best is None else f"{best.point.layer_speedup:.2f} ({_value(best)})"))
    return table(header, rows)


def plot_pareto(report: EvaluationReport, path: Path, title: str) -> None:
    """Accuracy vs layer speed-up and vs cost speed-up, one curve per policy, calibrated points
    starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    last = report.last_accuracy * 100
    for ax, attr, xlabel in [(axes[0], "layer_speedup", "layer speed-up (K / mean exit)"),
                             (axes[1], "cost_speedup", "cost speed-up (measured latency)")]:
        for i, rep in enumerate(report.policies):
            color = f"C{i % 10}"
            pts = sorted(rep.curve, key=lambda p: getattr(p.point, attr))
            xs = [getattr(p.point, attr) for p in pts]
            ys = [p.point.accuracy * 100 for p in pts]
            marker = MARKERS[i % len(MARKERS)]
            style = "" if len(pts) == 1 else LINES[i % len(LINES)]  # overlapping curves stay
            ax.plot(xs, ys, marker=marker, ls=style or "none", color=color, label=rep.name,
                    lw=1.2, ms=4 if len(pts) > 1 else 7)
            if rep.calibrated:
                c = rep.calibrated.point
                ax.plot([getattr(c, attr)], [c.accuracy * 100], "*", color=color, ms=14,
                        mec="black", mew=0.6)
        ax.axhline(last, color="grey", lw=0.8, ls="--")
        ax.axhline(last - report.tolerance * 100, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    accs = [p.point.accuracy * 100 for r in report.policies for p in r.curve]
    fast = [p.point.accuracy * 100 for r in report.policies for p in r.curve
            if p.point.layer_speedup > 1.05]
    axes[0].set_ylim(max(min([last - 4, *fast]), last - 10), max([last + 1, *accs]) + 0.5)
    axes[1].legend(fontsize=8, loc="lower left", ncol=2)
    fig.suptitle(f"{title}: accuracy vs speed-up; * = calibrated operating point; dashed = last "
                 f"exit, dotted = -{report.tolerance * 100:g} pt")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)

