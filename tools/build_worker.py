"""The subprocess that builds one missing model while `eeserve serve` already answers.

    python -m tools.build_worker RECIPE OUT [--device D]

Builds into a staging directory beside OUT (calibrating the text model's policies, as
`build_default` does), then renames it to OUT, so OUT holds a whole artifact or nothing; the
staging directory is removed after a failure or SIGTERM, and one build of OUT runs at a time
(a lock file beside it). Progress
goes to the file named by `EESERVE_PROGRESS_FILE` (models/progress.py). Runs at a lower CPU
priority than the server (nice 10) and exits when the server that started it is gone.
Recipes: text-default, caption-default, and tiny-text (seconds; what the tests build).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from models import progress
from models.build.options import BuildOptions
from models.build.recipes import build
from policies.fit.calibration import calibrate_artifact
from service.building import staging_dir
from tools.commands.calibrate import recheck_onnx
from tools.commands.train import build_default, build_default_captioner

NICE = 10


def build_into(recipe: str, staging: Path, device: str) -> None:
    """Build `recipe` into `staging` (a fresh directory), calibrated."""
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
        recheck_onnx(staging)  # the exported graphs against the new calibration
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


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One build of `out` at a time across processes (two servers started on one checkout)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.stage("waiting for another build of this model")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="build_worker")
    p.add_argument("recipe")
    p.add_argument("out", type=Path)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    _exit_with_parent(os.getppid())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # run `finally`
    try:
        os.nice(NICE)  # the server answers first; the build takes the idle CPU
    except OSError:
        pass
    run(args.recipe, args.out, args.device)
    return 0


def run(recipe: str, out: Path, device: str) -> bool:
    """Build `recipe` into `out` unless it is there; True when this call built it."""
    staging = staging_dir(out)
    with _exclusive(out):
        if (out / "manifest.json").exists():
            print(f"[eeserve] {out} is already built", flush=True)
            return False
        shutil.rmtree(staging, ignore_errors=True)  # left by a build that was killed
        try:
            build_into(recipe, staging, device)
            publish(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # after a failure or SIGTERM
    print(f"[eeserve] built {out}", flush=True)
    return True


if __name__ == "__main__":
    sys.exit(main())
