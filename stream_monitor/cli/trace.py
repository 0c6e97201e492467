"""``stream-monitor trace``: print a captured request trace, or list the recent ones of a slice.

The worker samples requests (``traces:`` in the topology) and keeps their traces in Redis for a while:
the candidates per source, the features and their ages, the scores and the returned slate, the flags,
the latency per stage and the engagement that followed. Alerts name a few of them in
``example_request_ids``; this command shows them. See docs/traces.md.

Examples::

    stream-monitor trace 7f3c9a
    stream-monitor trace 7f3c9a --json
    stream-monitor trace --model home-ranker --version 2026.11.24-1 --segment region=eu --limit 5

Exit status: 0 found, 1 nothing stored (not sampled, or expired), 2 a usage or configuration error,
75 Redis does not answer (docs/troubleshooting.md).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from stream_monitor.cli._common import (
    add_topology_arg,
    format_table,
    load_settings_and_topology,
    open_store,
    report_problems,
)
from stream_monitor.core.traces import TraceRecord
from stream_monitor.runtime.preflight import EXIT_UNAVAILABLE, redis_problems
from stream_monitor.state.traces import TraceStore, load_trace, recent_traces

__all__ = ["add_parser", "render_trace", "run"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "trace",
        help="print a captured request trace (or list a slice's recent ones)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("request_id", nargs="?", help="the request id (e.g. from an alert's example_request_ids)")
    p.add_argument("--model", help="list the recent traces of this model")
    p.add_argument("--version", help="... of this model version")
    p.add_argument("--arm", help="... on this arm")
    p.add_argument("--surface", help="... on this surface")
    p.add_argument(
        "--segment", action="append", default=[], metavar="DIM=VALUE", help="... in this segment (repeatable)"
    )
    p.add_argument("--limit", type=int, default=10, help="how many to list (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON (one document, or a list)")
    add_topology_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, store: TraceStore | None = None) -> int:
    if (args.request_id is None) == (args.model is None):
        print("trace: give a REQUEST_ID, or --model (with optional filters) to list", file=sys.stderr)
        return 2
    settings, topology = load_settings_and_topology(args)
    pattern: dict[str, str] = {}
    if args.model is not None:
        pattern = {"model": args.model}
        for dim, value in (("model_version", args.version), ("arm", args.arm), ("surface", args.surface)):
            if value is not None:
                pattern[dim] = value
        for item in args.segment:
            dim, sep, value = item.partition("=")
            if not sep or dim not in topology.segment_dims:
                known = ", ".join(topology.segment_dims)
                print(f"trace: --segment {item!r} is not DIM=VALUE with DIM one of: {known}", file=sys.stderr)
                return 2
            pattern[dim] = value
    if store is None and (problems := redis_problems(settings)):
        return report_problems("trace", problems)
    try:
        if store is None:
            from stream_monitor.state.redis_traces import RedisTraceStore

            store = RedisTraceStore.beside(open_store(settings), topology.traces)
        if args.request_id is not None:
            record = load_trace(store, args.request_id)
            left = store.ttl_ms(args.request_id) if record is not None else None
            records = [record] if record is not None else []
        else:
            records = recent_traces(store, topology.key_dims, pattern, max(1, args.limit))
    except Exception as exc:  # a connection error of the Redis client
        print(f"trace: cannot read the traces from Redis ({exc})", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if not records:
        what = f"request {args.request_id!r}" if args.request_id else f"slice {_slice(pattern)}"
        print(
            f"trace: no stored trace of {what} "
            "(not sampled, capped, or older than the TTL; see docs/traces.md)",
            file=sys.stderr,
        )
        return 1
    if args.json:
        docs = [r.to_json_dict() for r in records]
        out: Any = docs[0] if args.request_id else docs
        sys.stdout.buffer.write(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
    elif args.request_id:
        print(render_trace(records[0], left))
    else:
        print("\n".join(_list(records)))
    return 0


def render_trace(record: TraceRecord, ttl_ms: int | None = None) -> str:
    """A trace for people: slice and flags first, then sources, features, slate, latency, engagement.

    >>> r = TraceRecord("r1", 1764086400000, "m|v1|control|home|eu", {"model": "m", "model_version": "v1",
    ...     "arm": "control", "surface": "home"}, {"region": "eu"}, sources={"collab": 10},
    ...     slate=[{"id": "a", "score": 0.9}], slate_len=1, latency_ms={"total": 80.0})
    >>> print(render_trace(r).splitlines()[0])
    request r1 at 2025-11-25T16:00:00.000Z
    """
    lines = [f"request {record.request_id} at {_iso(record.ts)}"]
    key = {**record.key, **record.segment}
    lines.append("slice    " + " ".join(f"{d}={v}" for d, v in key.items()))
    flags = [n for n, on in (("fallback", record.fallback), ("empty slate", record.empty)) if on]
    if record.error:
        flags.append(f"error: {record.error}")
    lines.append("flags    " + (", ".join(flags) or "none"))
    if ttl_ms is not None:
        lines.append(f"kept     {ttl_ms // 3_600_000} h {ttl_ms // 60_000 % 60} min more")
    if record.truncated:
        lines.append("cut      " + ", ".join(record.truncated) + " (bounded trace size)")
    lines.append("latency  " + "  ".join(f"{s} {ms:.1f} ms" for s, ms in record.latency_ms.items()))
    if record.funnel:
        lines.append("funnel   " + " -> ".join(f"{s} {n}" for s, n in record.funnel.items()))
    lines.append("")
    lines.append("candidates per source")
    lines.extend(f"  {name:<24} {n}" for name, n in record.sources.items())
    if not record.sources:
        lines.append("  (none reported)")
    lines.append("")
    names = list(dict.fromkeys([*record.features, *record.feature_age_ms]))
    lines.append(f"features ({len(names)})")
    rows: list[tuple[str, ...]] = [("  name", "value", "age")]
    for name in names:
        value = record.features.get(name, "(not stored)")
        age = record.feature_age_ms.get(name)
        rows.append((f"  {name}", str(value), _age(age) if age is not None else ""))
    lines.extend(format_table(rows) if names else ["  (none)"])
    lines.append("")
    lines.append(f"slate ({record.slate_len} items, {len(record.slate)} kept)")
    rows = [("  pos", "item", "score", "source")]
    for pos, item in enumerate(record.slate):
        score = item.get("score")
        rows.append(
            (
                f"  {pos}",
                str(item.get("id", "")),
                f"{score:.4f}" if isinstance(score, int | float) else "",
                str(item.get("source") or ""),
            )
        )
    lines.extend(format_table(rows) if record.slate else ["  (empty)"])
    lines.append("")
    lines.append(f"engagement ({len(record.engagement)})")
    for e in record.engagement:
        where = f" item {e.get('item_id')}" if e.get("item_id") else ""
        at = f" at position {e.get('position')}" if e.get("position") is not None else ""
        lines.append(f"  +{_age(int(e['ts']) - record.ts)}  {e['action']}{where}{at}")
    if not record.engagement:
        lines.append("  (none stored)")
    return "\n".join(lines)


def _list(records: list[TraceRecord]) -> list[str]:
    rows = [("TIME", "REQUEST", "SLICE", "FLAGS", "ITEMS", "TOTAL MS", "ENGAGEMENT")]
    for r in records:
        flags = ",".join(
            n for n, on in (("fallback", r.fallback), ("empty", r.empty), ("error", r.error)) if on
        )
        rows.append(
            (
                _iso(r.ts),
                r.request_id,
                r.series,
                flags or "-",
                str(r.slate_len),
                f"{r.latency_ms.get('total', 0.0):.1f}",
                ",".join(sorted({str(e["action"]) for e in r.engagement})) or "-",
            )
        )
    return format_table(rows)


def _slice(pattern: dict[str, str]) -> str:
    return " ".join(f"{d}={v}" for d, v in pattern.items())


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _age(ms: int) -> str:
    if abs(ms) < 10_000:
        return f"{ms} ms"
    if abs(ms) < 3_600_000:
        return f"{ms / 1000:.0f} s"
    return f"{ms / 3_600_000:.1f} h"
