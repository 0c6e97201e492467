"""``stream-monitor`` entry point: builds the argument parser from one module per command.

Each command module exposes ``add_parser(subparsers)`` which registers its sub-parser and sets
``func=run`` on it; ``run(args) -> int`` returns the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "build_parser", "main"]

# Module names under stream_monitor.cli; imported lazily so `stream-monitor replay` never loads Faust.
COMMANDS = (
    "demo",
    "worker",
    "simulate",
    "replay",
    "score_series",
    "bench",
    "profile",
    "lineage",
    "canary",
    "diagnose",
    "trace",
    "incident",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-monitor",
        description="Streaming monitor for production recommendation systems.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"stream_monitor.cli.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
