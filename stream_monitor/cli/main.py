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
    from pydantic import ValidationError

    from stream_monitor.cli._common import report_problems
    from stream_monitor.runtime.preflight import EXIT_CONFIG, Problem, settings_problems
    from stream_monitor.topology import TopologyError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    # A malformed setting or topology is the user's to fix: one line each, not a traceback.
    except ValidationError as exc:
        if exc.title != "Settings":  # a bug, not a setting: keep the traceback
            raise
        return report_problems(args.command, settings_problems(exc))
    except TopologyError as exc:
        return report_problems(args.command, [Problem(f"topology: {exc}", EXIT_CONFIG)])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
