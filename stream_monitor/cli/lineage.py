"""``stream-monitor lineage MODEL``: a model's release history, from the state store.

Every deployment event the worker counted is in the history (newest 200 per model): when, which arm,
which version at what traffic share, the version it replaced on that arm (the rollback target), who
and why, and its lineage. Exit code 0 when the model has a history, 1 when it has none, 75 when Redis
does not answer, 2 when a setting is wrong or the stored history is unreadable.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from stream_monitor.cli._common import format_table
from stream_monitor.core.lineage import LineageError, ReleaseHistory, build_history
from stream_monitor.runtime.preflight import EXIT_UNAVAILABLE
from stream_monitor.state.base import StateStore, StoreUnavailable

__all__ = ["add_parser", "render_history", "run", "show"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "lineage",
        help="print a model's release history and lineage (from Redis)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="model name, as in the deployment events")
    p.add_argument("--json", action="store_true", help="print the history as one JSON document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stream_monitor.cli._common import open_store, report_problems
    from stream_monitor.config import Settings
    from stream_monitor.runtime.preflight import redis_problems

    settings = Settings()
    problems = redis_problems(settings)
    if problems:
        return report_problems("lineage", problems)
    return show(open_store(settings), args.model, as_json=args.json)


def show(store: StateStore, model: str, as_json: bool = False, out: IO[str] | None = None) -> int:
    """Print the history of ``model`` from ``store``; returns the exit code."""
    out = out or sys.stdout
    try:
        history = build_history(model, store.history(model))
    except StoreUnavailable as exc:
        print(f"lineage: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except LineageError as exc:
        print(f"lineage: the stored history is unreadable: {exc}", file=sys.stderr)
        return 2
    if as_json:
        out.write(orjson.dumps(history.to_json_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    elif history.releases:
        out.write(render_history(history))
    if not history.releases:
        print(f"lineage: no deployment events for model {model!r}", file=sys.stderr)
        return 1
    return 0


def render_history(history: ReleaseHistory) -> str:
    """The history as text: the live versions, then one row per release (oldest first).

    >>> from stream_monitor.core.lineage import DeploymentRecord
    >>> h = build_history("m", [DeploymentRecord(1764086400000, "m", "v1", "control", 1.0,
    ...     lineage={"code_commit": "4f2c1e9"}, actor="ci", reason="weekly retrain").to_json()])
    >>> for line in render_history(h).splitlines()[:2]:
    ...     print(line)
    m: 1 release (oldest first)
    live: control v1 (100%)
    """
    n = len(history.releases)
    lines = [f"{history.model}: {n} release{'s' if n != 1 else ''} (oldest first)"]
    live = history.live()
    parts = []
    for arm, record in live.items():
        target = history.rollback_target(arm)
        parts.append(
            f"{arm} {record.version} ({_share(record.traffic)})"
            + (f", rollback target {target}" if target else "")
        )
    lines.append("live: " + ("; ".join(parts) if parts else "nothing (every arm at 0 %)"))
    lines.append("")
    header = (
        "WHEN (UTC)",
        "ARM",
        "VERSION",
        "TRAFFIC",
        "REPLACED",
        "ACTOR",
        "REASON",
        "CODE",
        "DIGEST",
        "DATA",
        "FEATURES",
        "VALIDATION",
    )
    rows = [header]
    for release in history.releases:
        r = release.record
        # A traffic step usually repeats no lineage: show the version's (from its earlier event).
        lineage = r.lineage or history.lineage_of(r.version)
        rows.append(
            (
                _when(r.ts),
                r.arm,
                r.version,
                _share(r.traffic),
                release.previous or "-",
                r.actor or "-",
                _cut(r.reason, 40),
                _prefix(lineage.get("code_commit"), 12),
                _prefix(lineage.get("artifact_digest"), 19),
                _cut(lineage.get("training_data"), 40),
                _cut(lineage.get("feature_set"), 30),
                _validation(lineage.get("validation")),
            )
        )
    lines.extend(format_table(rows))
    return "\n".join(lines) + "\n"


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _share(traffic: float | None) -> str:
    if traffic is None:
        return "-"
    return f"{traffic:.0%}" if traffic >= 0.01 or traffic == 0 else f"{traffic:.1%}"


def _cut(value: Any, limit: int) -> str:
    if not isinstance(value, str) or not value:
        return "-"
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _prefix(value: Any, limit: int) -> str:
    """A commit or digest shortened as in the model_info metric's labels (a prefix identifies it)."""
    return value[:limit] if isinstance(value, str) and value else "-"


def _validation(value: Any) -> str:
    if not isinstance(value, dict) or not value:
        return "-"
    return _cut(", ".join(f"{k}={v:g}" for k, v in list(value.items())[:3]), 40)
