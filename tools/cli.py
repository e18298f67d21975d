"""`eeserve` command line: one module per subcommand in tools/commands/.

Each module offers `add_parser(subparsers)` and `run(args) -> int`. Expected failures (bad data,
bad artifact, bad policy parameter) end with one line `eeserve: error: ...` and exit status 2;
unexpected ones with one line naming the exception and exit status 1 (`EESERVE_DEBUG=1` shows
the traceback instead).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import ModuleType

# A command imports what only it needs (training, fitting, the engine) inside its `run`, so a
# command loads its own libraries only; nothing is imported late to dodge a cycle (import-linter
# checks the graph: pyproject.toml). The expected failures are `tools.errors.EXPECTED`.
from tools.commands import bench, calibrate, evaluate, export, serve, train  # noqa: E402
from tools.errors import EXPECTED, CliError  # noqa: E402

__all__ = ["COMMANDS", "CliError", "build_parser", "main"]

COMMANDS: dict[str, ModuleType] = {"train": train, "calibrate": calibrate, "evaluate": evaluate,
                                   "export": export, "serve": serve, "bench": bench}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eeserve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in COMMANDS.values():
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
    except EXPECTED as e:
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
