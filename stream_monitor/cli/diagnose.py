"""``stream-monitor diagnose``: a ranked list of suspects, with evidence, for what went wrong.

With ``--from FILE`` (a JSONL recording, e.g. from ``stream-monitor simulate --out``) no server is
needed: the recording runs through the same engine as ``replay``, every closed window's signal values
are kept, and the suspects come with a timeline of which signals moved first (deployments and dataset
arrivals on it), an Adtributor drill-down of the symptom across segment dimensions and model versions,
the features that moved, the funnel stage where candidates were lost, the release that correlates with
its lineage and rollback target, and example request ids.

Without ``--from`` it reads the live state in Redis (STREAM_MONITOR_REDIS_URL): the worker's diagnosis log
(each closed window's signal values and the alerts it fired or resolved, written with the close; the
newest 1,440 windows by default), the open alerts of its checkpoint, the release history and the newest
dataset arrivals, so the live report has the same timeline and drill-down as ``--from`` over the windows
the log holds; example request ids of the top suspects' slices come from the trace store (print one with
``stream-monitor trace ID``). See docs/diagnose.md.

Examples::

    stream-monitor simulate --speed 0 --duration 2400 --out /tmp/r.jsonl \\
        --incident stale_feature:region=eu,onset=1200
    stream-monitor diagnose --from /tmp/r.jsonl --html /tmp/diagnosis.html
    stream-monitor diagnose --from /tmp/r.jsonl --symptom volume.count --json
    stream-monitor diagnose --model home-ranker
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from stream_monitor.cli._common import (
    add_topology_arg,
    load_settings_and_topology,
    open_store,
    report_problems,
)
from stream_monitor.core.diagnosis import Diagnosis
from stream_monitor.core.topology import Topology
from stream_monitor.diagnose_report import render_html, render_text
from stream_monitor.diagnosing import LiveInputs, LiveStateMissing, live_examples, live_state, replay_file
from stream_monitor.runtime.preflight import EXIT_UNAVAILABLE, redis_problems

__all__ = ["add_parser", "parse_time", "run"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "diagnose",
        help="ranked suspects with evidence (timeline, drill-down, release, examples)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--from", dest="source", type=Path, metavar="FILE", help="JSONL recording ('-': stdin)")
    p.add_argument("--model", help="only this model's alerts and releases")
    p.add_argument("--since", help="start of the range: epoch ms or ISO time (e.g. 2026-11-26T04:00Z)")
    p.add_argument("--until", help="end of the range (exclusive), as --since")
    p.add_argument("--symptom", help="the series to drill down: SIGNAL[.METRIC] (default: the top suspect's)")
    p.add_argument("--json", action="store_true", help="print the diagnosis as JSON instead of text")
    p.add_argument("--html", type=Path, metavar="OUT.html", help="also write a self-contained HTML report")
    add_topology_arg(p)
    p.set_defaults(func=run)


def parse_time(text: str | None) -> int | None:
    """Epoch milliseconds from ``--since``/``--until`` text.

    >>> parse_time("1763943600000"), parse_time("2025-11-24T00:00Z"), parse_time(None)
    (1763943600000, 1763942400000, None)
    """
    if text is None:
        return None
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not epoch ms or an ISO time: {text!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def run(args: argparse.Namespace) -> int:
    try:
        since, until = parse_time(args.since), parse_time(args.until)
    except ValueError as exc:
        print(f"diagnose: {exc}", file=sys.stderr)
        return 2
    settings, topology = load_settings_and_topology(args)
    if args.source is not None:
        if str(args.source) != "-" and not args.source.is_file():
            print(f"diagnose: {args.source}: no such file", file=sys.stderr)
            return 2
        stream = sys.stdin.buffer if str(args.source) == "-" else None
        recorder = replay_file(None if stream else args.source, topology, stream)
        result = recorder.diagnose(since_ms=since, until_ms=until, model=args.model, symptom=args.symptom)
        if recorder.dead.count:
            result.notes.append(f"{recorder.dead.count} lines of the recording were dead-lettered")
    else:
        if problems := redis_problems(settings):
            return report_problems("diagnose", problems)
        try:
            store = open_store(settings)
            live = live_state(store, topology.window.size_ms, [args.model] if args.model else None)
        except LiveStateMissing as exc:
            print(f"diagnose: {exc}", file=sys.stderr)
            return 2
        except Exception as exc:  # a connection error of the Redis client
            print(
                f"diagnose: cannot read the live state from Redis ({exc}); use --from FILE for a recording",
                file=sys.stderr,
            )
            return EXIT_UNAVAILABLE
        result = live.diagnose(
            topology, since_ms=since, until_ms=until, model=args.model, symptom=args.symptom
        )
        result.notes.append(_live_note(live))
        result.notes.append(_live_examples(result, store, topology))
    _emit(result, args)
    return 0


def _live_note(live: LiveInputs) -> str:
    """Where a live report's history came from (and what it lacks when the log is empty)."""
    if not live.windows:
        return (
            "live mode: the store holds no window log (a worker older than the log, or window_log_limit 0): "
            "ranked from the open alerts and the release history only, no timeline or drill-down"
        )
    first, last = min(live.history.windows), max(live.history.windows)
    note = (
        f"live mode: {live.windows} closed windows from the worker's diagnosis log in Redis "
        f"({_iso(first)} to {_iso(last + live.history.window_ms)})"
    )
    if live.unreadable:
        note += f"; {live.unreadable} unreadable entries skipped"
    return note


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _live_examples(result: Diagnosis, store: Any, topology: Topology) -> str:
    """Examples of the top suspects from the trace store; the note that says where they came from."""
    from stream_monitor.state.redis_traces import RedisTraceStore

    if not topology.traces.active:
        return "no example requests: context capture is off (traces: in the topology)"
    try:
        filled = live_examples(result, RedisTraceStore.beside(store, topology.traces), topology.key_dims)
    except Exception as exc:  # the trace store is an extra: its failure must not lose the report
        return f"no example requests: the trace store could not be read ({exc})"
    if not filled:
        return "no example requests: the trace store has no trace of the top suspects' models"
    return "example requests: newest traced requests of each suspect's slice (stream-monitor trace ID)"


def _emit(result: Diagnosis, args: argparse.Namespace) -> None:
    if args.html:
        args.html.write_text(render_html(result), encoding="utf-8")
        print(f"diagnose: HTML report written to {args.html}", file=sys.stderr)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result.to_json_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(render_text(result))
