"""Subcommands of `eeserve`; each module has `add_parser(subparsers)` and `run(args)`."""
