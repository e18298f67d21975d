"""`eeserve` command line: one module per subcommand in service/commands/.

Each module offers `add_parser(subparsers)` and `run(args) -> int`. Expected failures (bad data,
bad artifact, bad policy parameter) end with one line `eeserve: error: ...` and exit status 2;
unexpected ones with one line naming the exception and exit status 1 (`EESERVE_DEBUG=1` shows
the traceback instead).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# OpenMP threads that spin-wait steal the other core from the event loop and from ONNX Runtime
# (a batch-1 torch forward took 544 ms instead of 21 ms beside another busy process, see
# docs/BENCHMARKS.md); set before torch is imported. An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

COMMANDS = ["train", "calibrate", "evaluate", "export", "serve", "bench", "peer"]


class CliError(Exception):
    """An expected failure whose message is shown as one line."""


def _expected_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [CliError, FileNotFoundError, PermissionError]
    for mod, name in [("models.data", "DataError"), ("models.artifact", "ArtifactError"),
                      ("policies.base", "PolicyError")]:
        try:
            errs.append(getattr(importlib.import_module(mod), name))
        except ImportError:
            pass
    return tuple(errs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eeserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"service.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"service.commands.{name}":
                continue
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("eeserve: interrupted", file=sys.stderr)
        return 130
    except _expected_errors() as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"eeserve: error: {msg}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 -- every path ends in its result or one line
        if os.environ.get("EESERVE_DEBUG"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        print(f"eeserve: error: {type(e).__name__}: {first} (unexpected; EESERVE_DEBUG=1 "
              f"shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
