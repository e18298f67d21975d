"""The subprocess that builds one missing model while `eeserve serve` already answers.

    python -m tools.build_worker RECIPE OUT [--device D]

Builds into a staging directory beside OUT (calibrating the text model's policies, as
`build_default` does), then renames it to OUT, so OUT holds a whole artifact or nothing; the
staging directory is removed after a failure or SIGTERM, and one build of OUT runs at a time
(a lock file beside it). Progress
goes to the file named by `EESERVE_PROGRESS_FILE` (models/progress.py). Runs at a lower CPU
priority than the server (nice 10) and exits when the server that started it is gone.
Recipes: text-default, caption-default, and tiny-text (seconds; what the tests build).

A write that fails for want of space (ENOSPC) ends the build with one line naming it and exit
status `EXIT_NO_SPACE` (service/building.py reads both). For tests, `EESERVE_BUILD_FAULT=disk-full`
makes the build's manifest write fail that way (`inject_fault`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

from models import progress
from models.artifact import MANIFEST
from models.build.options import BuildOptions
from models.build.recipes import build
from policies.fit.calibration import calibrate_artifact
from service.building import EXIT_NO_SPACE, FAILED_PREFIX, lock_file, staging_dir
from tools.commands.calibrate import recheck_onnx
from tools.commands.train import build_default, build_default_captioner

NICE = 10
FAULT_ENV = "EESERVE_BUILD_FAULT"  # tests only: "disk-full" (see `inject_fault`)
MANIFEST_TMP = MANIFEST + ".part"  # models.artifact.write_manifest writes this, then renames


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
    with open(lock_file(out), "w") as fh:
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
    try:
        run(args.recipe, args.out, args.device)
    except Exception as e:
        if not no_space(e):
            raise  # its traceback ends the log: the server quotes the last line
        with contextlib.suppress(OSError):  # the log may be on the full disk too
            traceback.print_exc(file=sys.stdout)
        _say(FAILED_PREFIX + no_space_line(e, args.out))  # the line the server quotes
        return EXIT_NO_SPACE
    return 0


def no_space(e: BaseException) -> bool:
    """Whether `e`, or an exception it came from, is a write that found no space (ENOSPC; also
    the libraries that wrap it in their own error, as safetensors does, by its message)."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if os.strerror(errno.ENOSPC) in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def no_space_line(e: BaseException, out: Path) -> str:
    """`no space left on device (writing X; N MiB free under DIR now ...)`, after the staging
    directory is gone (so the number is what a retry has)."""
    where = getattr(e, "filename", None)
    try:
        free = f"{shutil.disk_usage(out.parent).free // 2**20} MiB free"
    except OSError:
        free = "free space unknown"
    what = f"writing {where}; " if where else ""
    return (f"no space left on device ({what}{free} under {out.parent} now that the partial "
            f"build is removed; free some and restart the server to build it again)")


def _say(line: str) -> None:
    with contextlib.suppress(OSError):  # the log may be on the full disk too
        print(line, flush=True)


def inject_fault(staging: Path) -> None:
    """Tests only, `EESERVE_BUILD_FAULT=disk-full`: the build's manifest write fails with
    ENOSPC from the kernel (its temporary file in `staging` is a link to /dev/full, where every
    write does), after the weights are written, so the worker's real failure path runs: the
    error, the half artifact removed, the line and exit status the server reports."""
    fault = os.environ.get(FAULT_ENV)
    if not fault:
        return
    if fault != "disk-full":
        raise SystemExit(f"build_worker: unknown {FAULT_ENV} {fault!r} (known: disk-full)")
    staging.mkdir(parents=True, exist_ok=True)
    (staging / MANIFEST_TMP).symlink_to("/dev/full")
    print(f"[eeserve] {FAULT_ENV}=disk-full: the manifest write goes to /dev/full (ENOSPC)",
          flush=True)


def run(recipe: str, out: Path, device: str) -> bool:
    """Build `recipe` into `out` unless it is there; True when this call built it."""
    staging = staging_dir(out)
    with _exclusive(out):
        if (out / "manifest.json").exists():
            print(f"[eeserve] {out} is already built", flush=True)
            return False
        shutil.rmtree(staging, ignore_errors=True)  # left by a build that was killed
        try:
            inject_fault(staging)
            build_into(recipe, staging, device)
            publish(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # after a failure or SIGTERM
    print(f"[eeserve] built {out}", flush=True)
    return True


if __name__ == "__main__":
    sys.exit(main())
