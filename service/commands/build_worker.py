"""The subprocess that builds one missing model while `eeserve serve` already answers.

    python -m service.commands.build_worker RECIPE OUT [--device D]

Builds into a staging directory beside OUT (calibrating the text model's policies, as
`build_default` does), then renames it to OUT, so OUT holds a whole artifact or nothing. Progress
goes to the file named by `EESERVE_PROGRESS_FILE` (models/progress.py). Runs at a lower CPU
priority than the server (nice 10) and exits when the server that started it is gone.
Recipes: text-default, caption-default, and tiny-text (seconds; what the tests build).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from service.building import staging_dir

NICE = 10


def build_into(recipe: str, staging: Path, device: str) -> None:
    """Build `recipe` into `staging` (a fresh directory), calibrated."""
    from models import progress
    from models.recipes import BuildOptions, build
    from policies.calibration import calibrate_artifact
    from service.commands.train import build_default, build_default_captioner

    progress.stage("downloading the backbone and data" if recipe == "text-default"
                   else "preparing data")
    if recipe == "text-default":
        build_default(staging, device=device)  # trains and calibrates
    elif recipe == "caption-default":
        build_default_captioner(staging, device=device)  # its recipe calibrates
    elif recipe == "tiny-text":
        build(recipe, BuildOptions(out=staging, device="cpu", progress=False))
        progress.stage("calibrating the exit policies")
        calibrate_artifact(staging)
    else:
        raise SystemExit(f"build_worker: unknown recipe {recipe!r}")
    progress.stage("built")


def publish(staging: Path, out: Path) -> None:
    """Move the complete build to `out` (replacing a partial directory without a manifest)."""
    if (out / "manifest.json").exists():  # built meanwhile by someone else: keep theirs
        shutil.rmtree(staging, ignore_errors=True)
        return
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)


def _exit_with_parent(parent: int) -> None:
    """End this process when the server that started it is gone (killed without a goodbye)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="build_worker")
    p.add_argument("recipe")
    p.add_argument("out", type=Path)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    _exit_with_parent(os.getppid())
    try:
        os.nice(NICE)  # the server answers first; the build takes the idle CPU
    except OSError:
        pass
    staging = staging_dir(args.out)
    if staging.exists():
        shutil.rmtree(staging)
    build_into(args.recipe, staging, args.device)
    publish(staging, args.out)
    print(f"[eeserve] built {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
