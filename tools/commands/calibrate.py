"""`eeserve calibrate DIR [--policy NAME ...]`: fit policies on an artifact's validation logits."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from policies.names import POLICY_NAMES
from tools.errors import CliError

GUARD_HELP = "guarded validation accuracy loss allowed vs the last exit, as a fraction " \
             "(default 0.005 = 0.5 points)"


def add_guard_options(p: argparse.ArgumentParser) -> None:
    """Options shared with `eeserve evaluate`."""
    p.add_argument("--tolerance", type=float, default=0.005, help=GUARD_HELP)
    p.add_argument("--confidence", type=float, default=0.8,
                   help="one-sided confidence of the guard's upper bound (default 0.8)")
    p.add_argument("--guard", default="exact", choices=["exact", "score"],
                   help="the guard's bound: exact Clopper-Pearson bounds on lost and gained rows "
                        "(default) or a joint score bound (less margin; broke the promise more "
                        "often on validation halves, docs/benchmarks/accuracy.md)")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("calibrate", help="fit every exit policy on the cached validation logits")
    p.add_argument("dir", type=Path, help="artifact directory")
    p.add_argument("--policy", action="append", dest="policies", metavar="NAME",
                   help="fit only this policy (repeatable); default: all")
    add_guard_options(p)
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"],
                   help="whose exit logits to fit on: torch (the cached training logits, "
                        "default) or onnx (recomputed with the exported graphs)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8"],
                   help="precision that will serve (int8: onnx only)")
    p.add_argument("--min-support", type=int, default=None,
                   help="BEEM: fewest validation rows a per-exit threshold rests on "
                        "(default: chosen by cross-fitting on validation halves)")
    p.add_argument("--reference", default="paired", choices=["paired", "overall"],
                   help="BEEM per-exit target: the last exit on the same rows (paired) or its "
                        "overall error rate (the paper)")
    p.add_argument("--beem-target-speedup", type=float, metavar="X",
                   help="BEEM: one global alpha, the most accurate reaching this layer speed-up "
                        "on validation (instead of the guarded accuracy target)")
    p.add_argument("--eenet-budget", type=float, metavar="B",
                   help="fit EENet for this average cost (fraction of full cost) instead of the "
                        "smallest budget within the tolerance")
    return p


def guard_config(args: argparse.Namespace, **extra: Any) -> Any:
    """A validated CalibrationConfig from the command line."""
    from policies.fit.calibration import CalibrationConfig

    cfg = CalibrationConfig(tolerance=args.tolerance, confidence=args.confidence,
                            guard=args.guard, **extra)
    cfg.validate()
    return cfg


def run(args: argparse.Namespace) -> int:
    from policies.fit.calibration import calibrate_artifact

    if not args.dir.is_dir():
        raise CliError(f"{args.dir}: no such artifact directory")
    names = args.policies or None
    unknown = [n for n in names or [] if n not in POLICY_NAMES]
    if unknown:
        raise CliError(f"unknown policy {unknown[0]!r}; known: {', '.join(POLICY_NAMES)}")
    cfg = guard_config(args, min_support=args.min_support, reference=args.reference,
                       eenet_budget=args.eenet_budget,
                       beem_target_speedup=args.beem_target_speedup)
    fitted = names or list(POLICY_NAMES)
    if (args.backend, args.precision) != ("torch", "fp32"):
        return _calibrate_backend(args, names, cfg, fitted)
    manifest = calibrate_artifact(args.dir, names, cfg)
    parity = recheck_onnx(args.dir)
    if parity is not None:
        print(f"onnx fp32 graphs: same decisions as torch for every policy: "
              f"{'yes' if parity['passed'] else 'NO'} {parity['policy_mismatches']}")
    print(f"calibrated {', '.join(fitted)} on {args.dir} (validation split); "
          f"default policy: {manifest.get('default_policy')}")
    print(format_calibration(manifest, fitted))
    return 0


def recheck_onnx(root: Path) -> dict[str, Any] | None:
    """Re-check the exported fp32 graphs against the new calibration (None: no graphs)."""
    from models.build.onnx_export import recheck_policies
    from policies.fit.parity import policy_mismatches

    return recheck_policies(root, policy_mismatches)


def _calibrate_backend(args: argparse.Namespace, names: list[str] | None, cfg: Any,
                       fitted: list[str]) -> int:
    from policies.fit.fit_backend import calibrate_backend

    if args.backend == "torch":
        raise CliError(f"--precision {args.precision} runs on the onnx backend only")
    entry = calibrate_backend(args.dir, args.backend, args.precision, names, cfg)
    acc = entry["exit_accuracy"]["test"][-1]
    ref = (entry.get("reference_test_accuracy") or [None])[-1]
    change = f" ({(acc - ref) * 100:+.2f} pt vs torch fp32)" if ref is not None else ""
    print(f"calibrated {', '.join(fitted)} on {args.dir} for {args.backend} {args.precision} "
          f"(validation split); last-exit test accuracy {acc * 100:.2f} %{change}")
    print(format_calibration(entry, fitted))
    return 0


def format_calibration(manifest: dict[str, Any], names: list[str]) -> str:
    header = ("policy", "val acc %", "loss pt", "guarded pt", "mean exit", "layer x", "cost x",
              "method")
    rows = []
    for name in names:
        entry = manifest["policies"][name]
        op, fit = entry["operating_point"], entry.get("fit", {})
        rows.append((name, f"{op['accuracy'] * 100:.2f}", f"{op['loss'] * 100:+.2f}",
                     f"{op['loss_upper'] * 100:+.2f}", f"{op['mean_exit']:.2f}",
                     f"{op['layer_speedup']:.2f}", f"{op['cost_speedup']:.2f}",
                     str(fit.get("method", ""))))
    return table(header, rows)


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
