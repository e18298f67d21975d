"""Code trees under test (before/after checkouts): their commit and a child process's imports.

A process that must import `service` from another checkout runs as `python -P ...` with
PYTHONPATH set to that checkout: `-P` keeps the working directory and the script's directory
off sys.path, so nothing of this tree shadows the checkout's code.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

from bench.harness import QUIET_ENV


def commit(tree: Path) -> str:
    """The checkout's short commit, with `+dirty` when tracked files changed; "unknown" if none."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tree), *args], text=True, capture_output=True,
                              check=True).stdout.strip()
    try:
        sha = git("rev-parse", "--short", "HEAD")
        return sha + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def env(tree: Path) -> Mapping[str, str]:
    """Environment of a child that imports the project's packages from `tree`."""
    return {**os.environ, **QUIET_ENV, "PYTHONPATH": str(tree.resolve())}


def imported_from(tree: Path, service_dir: str) -> bool:
    """Did a child that reported `service.__file__`'s directory import `tree`'s code?"""
    return Path(service_dir).resolve() == (tree / "service").resolve()
