"""`eeserve export DIR --format onnx|hf`: write an artifact in a format other runtimes load.

    onnx  per-layer ONNX graphs (embedding graph + one graph per encoder layer with its exit
          head) into DIR/onnx/, their sha256 in the manifest, checked for parity with torch
    hf    the last exit as a standard `AutoModelForSequenceClassification` directory

Exporters are found through the `EXPORTERS` table (format name -> function(DIR, args)).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from tools.errors import CliError

Exporter = Callable[[Path, argparse.Namespace], str]


def _onnx(root: Path, args: argparse.Namespace) -> str:
    from models.build.onnx_export import export_onnx
    from policies.fit.parity import policy_mismatches

    report = export_onnx(root, precision=args.precision, progress=not args.quiet,
                         policy_check=policy_mismatches)
    return report.summary()


def _hf(root: Path, args: argparse.Namespace) -> str:
    from models.build.export_hf import export_hf

    return export_hf(root, args.out).summary()


EXPORTERS: dict[str, Exporter] = {"onnx": _onnx, "hf": _hf}


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="export an artifact for another runtime (onnx, hf)")
    p.add_argument("dir", type=Path, help="artifact directory")
    p.add_argument("--format", default="onnx", help="onnx (default) or hf")
    p.add_argument("--out", type=Path, help="output directory (hf only; default DIR/hf)")
    p.add_argument("--precision", default="fp32", help="onnx: fp32 (default) or int8")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def run(args: argparse.Namespace) -> int:
    fn = EXPORTERS.get(args.format)
    if fn is None:
        raise CliError(f"--format {args.format!r}: choose one of {sorted(EXPORTERS)}")
    if not args.dir.is_dir():
        raise CliError(f"{args.dir}: not a model directory")
    print(fn(args.dir, args))
    return 0
