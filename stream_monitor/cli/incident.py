"""``stream-monitor incident``: the alerts, verdicts, releases and dataset arrivals of a time range as one
incident: related alerts grouped (cause and the symptoms it explains), a timeline, the detection delay and
a post-mortem skeleton in markdown.

Sources (one of):

* ``--from FILE``: a recorded events JSONL (e.g. ``stream-monitor simulate --out``) runs through the
  engine in this process, as ``diagnose --from`` does: alerts, canary verdicts, the release history and
  dataset arrivals come out of it with no server, and the diagnosis of the same range names the suspect.
* ``--alerts FILE [--verdicts FILE] [--deployments FILE] [--datasets FILE]``: JSON lines written by
  ``stream-monitor replay --out`` or a consumer of the topics. Each line is classified by its shape
  (alert, ``stream-monitor.health/v1`` verdict, deployment or dataset event), so one mixed file works too.
* neither: live. The alert, health and dataset topics are read for the range (``offsets_for_times``,
  bounded by ``--max-messages`` and ``--timeout``) and the release history from Redis.

``--since`` / ``--until`` take epoch milliseconds, an ISO-8601 time (``2026-11-26T04:00Z``; no zone means
UTC), ``now``, or a duration before now (``90s``, ``30m``, ``2h``, ``1d``). Live mode defaults to the last
24 hours; the file modes to everything in the files.

Exit status: 0 an incident was printed, 1 ``--from`` found no valid event, 2 a usage or configuration
error, 75 Kafka does not answer (live; docs/troubleshooting.md).

Examples::

    stream-monitor simulate --speed 0 --duration 3600 --out /tmp/r.jsonl \\
        --incident ctr_drop_after_release:onset=1800
    stream-monitor incident --from /tmp/r.jsonl --markdown /tmp/postmortem.md
    stream-monitor replay /tmp/r.jsonl --out /tmp/alerts.jsonl
    stream-monitor incident --alerts /tmp/alerts.jsonl --json
    stream-monitor incident --since 2h --model home-ranker          # live
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
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
from stream_monitor.core.datasets import DatasetArrival
from stream_monitor.core.diagnosis import Diagnosis
from stream_monitor.core.incident import DEFAULT_LOOKBACK_MS, Incident, build_incident
from stream_monitor.core.lineage import DeploymentRecord, LineageError
from stream_monitor.runtime.preflight import kafka_problems

__all__ = ["Sources", "add_parser", "parse_time", "run"]

HEALTH_SCHEMA = "stream-monitor.health/v1"
_UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
LIVE_DEFAULT_SINCE = "24h"


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "incident",
        help="incident timeline and post-mortem skeleton for a time range",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--since", help="start: epoch ms, ISO-8601, 'now' or a duration ago (2h)")
    p.add_argument("--until", help="end (exclusive), as --since (default: now / end of the files)")
    p.add_argument("--model", help="only this model")
    p.add_argument("--from", dest="source", type=Path, metavar="FILE", help="recorded events JSONL")
    p.add_argument("--alerts", type=Path, action="append", default=[], metavar="FILE", help="alert JSONL")
    p.add_argument("--verdicts", type=Path, action="append", default=[], metavar="FILE", help="verdict JSONL")
    p.add_argument("--deployments", type=Path, action="append", default=[], metavar="FILE")
    p.add_argument("--datasets", type=Path, action="append", default=[], metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the incident as JSON instead of text")
    p.add_argument("--markdown", type=Path, metavar="PATH", help="write the post-mortem skeleton here")
    p.add_argument("--max-messages", type=int, default=100_000, help="live: per topic (default 100000)")
    p.add_argument("--timeout", type=float, default=30.0, help="live: seconds per topic (default 30)")
    add_topology_arg(p)
    p.set_defaults(func=run)


def parse_time(text: str | None, now_ms: int) -> int | None:
    """Epoch milliseconds from ``--since``/``--until`` text (a duration counts back from ``now_ms``).

    >>> now = 1_764_115_200_000  # 2025-11-26T00:00Z
    >>> parse_time("2h", now), parse_time("now", now), parse_time("2025-11-25T23:00Z", now)
    (1764108000000, 1764115200000, 1764111600000)
    >>> parse_time("1764115200000", now), parse_time(None, now)
    (1764115200000, None)
    >>> parse_time("yesterday", now)
    Traceback (most recent call last):
    ...
    ValueError: 'yesterday' is not epoch ms, an ISO-8601 time, 'now' or a duration like 2h
    """
    if text is None:
        return None
    text = text.strip()
    if text == "now":
        return now_ms
    if text.isdigit():
        return int(text)
    relative = _RELATIVE.match(text)
    if relative:
        return now_ms - int(float(relative.group(1)) * _UNITS[relative.group(2)])
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{text!r} is not epoch ms, an ISO-8601 time, 'now' or a duration like 2h") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


@dataclass(slots=True)
class Sources:
    """What an incident is built from, however it was read.

    >>> s = Sources()
    >>> s.classify({"schema": "stream-monitor.health/v1", "model": "m"})
    >>> s.classify({"type": "dataset", "name": "d", "partition": "p", "ts": 5, "rows": 1})
    >>> len(s.verdicts), s.datasets[0].name, s.skipped
    (1, 'd', 0)
    """

    alerts: list[dict[str, Any]] = field(default_factory=list)
    verdicts: list[dict[str, Any]] = field(default_factory=list)
    deployments: list[DeploymentRecord] = field(default_factory=list)
    datasets: list[DatasetArrival] = field(default_factory=list)
    diagnosis: Diagnosis | None = None
    notes: list[str] = field(default_factory=list)
    skipped: int = 0
    # Event time of the last event of a recording: the end of the range when --until is not given.
    last_ts: int | None = None

    def classify(self, doc: Any) -> None:
        """File one JSON document by its shape; anything unrecognised is counted in ``skipped``."""
        if not isinstance(doc, dict):
            self.skipped += 1
        elif doc.get("schema") == HEALTH_SCHEMA:
            self.verdicts.append(doc)
        elif "signal" in doc and "status" in doc:
            self.alerts.append(doc)
        elif doc.get("type") == "deployment" or {"model", "model_version", "arm", "ts"} <= set(doc):
            try:
                self.deployments.append(DeploymentRecord.from_json_dict(doc))
            except LineageError:
                self.skipped += 1
        elif doc.get("type") == "dataset":
            try:
                self.datasets.append(
                    DatasetArrival(str(doc["name"]), str(doc["partition"]), int(doc["ts"]), int(doc["rows"]))
                )
            except (KeyError, TypeError, ValueError):
                self.skipped += 1
        else:
            self.skipped += 1

    def read_lines(self, lines: Iterable[bytes]) -> None:
        for line in lines:
            # A message may batch several newline-delimited records (docs/events.md).
            for part in line.splitlines():
                part = part.strip()
                if not part:
                    continue
                try:
                    self.classify(orjson.loads(part))
                except orjson.JSONDecodeError:
                    self.skipped += 1


def run(args: argparse.Namespace) -> int:
    now = int(time.time() * 1000)
    live = args.source is None and not (args.alerts or args.verdicts or args.deployments or args.datasets)
    try:
        since = parse_time(args.since if args.since is not None or not live else LIVE_DEFAULT_SINCE, now)
        until = parse_time(args.until if args.until is not None or not live else "now", now)
    except ValueError as exc:
        return _fail(str(exc))
    if since is not None and until is not None and since >= until:
        return _fail(f"--since ({args.since}) must be before --until ({args.until or 'now'})")
    if args.source is not None and (args.alerts or args.verdicts or args.deployments or args.datasets):
        return _fail("--from FILE replays a recording; it does not mix with --alerts/--verdicts/...")
    if args.max_messages < 1 or args.timeout <= 0:
        return _fail("--max-messages must be >= 1 and --timeout > 0")
    for path in [args.source, *args.alerts, *args.verdicts, *args.deployments, *args.datasets]:
        if path is not None and not Path(path).is_file():
            return _fail(f"{path}: no such file")
    settings, topology = load_settings_and_topology(args)
    if args.source is not None:
        try:
            sources = _from_recording(args.source, topology, since, until, args.model)
        except _NoEvents as exc:
            print(f"incident: {exc}", file=sys.stderr)
            return 1
    elif not live:
        sources = Sources()
        for path in [*args.alerts, *args.verdicts, *args.deployments, *args.datasets]:
            with open(path, "rb") as lines:
                sources.read_lines(lines)
    else:
        assert since is not None and until is not None
        # Kafka first, bounded: an unreachable broker is one line and exit 75, not a minute of retries.
        problems = kafka_problems(settings)
        if problems:
            return report_problems("incident", problems)
        try:
            sources = _live(settings, since, until, args.max_messages, args.timeout)
        except _LiveError as exc:
            return _fail(str(exc))
    if until is None and sources.last_ts is not None:
        until = sources.last_ts + 1
    if sources.skipped:
        sources.notes.append(f"{sources.skipped} input lines were not alerts, verdicts or events (skipped)")
    incident = build_incident(
        sources.alerts,
        sources.verdicts,
        sources.deployments,
        sources.datasets,
        diagnosis=sources.diagnosis,
        since_ms=since,
        until_ms=until,
        model=args.model,
        dataset_rules=topology.datasets,
    )
    incident.notes.extend(sources.notes)
    _emit(incident, args)
    return 0


def _fail(message: str) -> int:
    print(f"incident: {message}", file=sys.stderr)
    return 2


def _emit(incident: Incident, args: argparse.Namespace) -> None:
    if args.markdown:
        args.markdown.write_text(incident.to_markdown(), encoding="utf-8")
        print(f"incident: post-mortem skeleton written to {args.markdown}", file=sys.stderr)
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(incident.to_json_dict(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(incident.to_text())


def _from_recording(
    path: Path, topology: Any, since: int | None, until: int | None, model: str | None
) -> Sources:
    # Imported here: the engine is only needed for a recording.
    from stream_monitor.diagnosing import STEP_LINES, DiagnosisRecorder
    from stream_monitor.sinks.health import ListHealthSink

    health = ListHealthSink()  # the canary verdicts, as replay writes them
    recorder = DiagnosisRecorder(topology, health_sink=health)
    sources = Sources()
    read = not_objects = 0
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            read += 1
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                event = None
            if not isinstance(event, dict):
                not_objects += 1
            else:
                ts = event.get("ts")
                if isinstance(ts, int) and not isinstance(ts, bool):
                    sources.last_ts = ts if sources.last_ts is None else max(sources.last_ts, ts)
                if event.get("type") == "dataset":
                    sources.classify(event)
            recorder.feed(line, event if isinstance(event, dict) else None)
            if number % STEP_LINES == 0:
                recorder.step()
    recorder.step(final=True)
    # Without one event the range would be built around nothing (an incident of 1970).
    if not read:
        raise _NoEvents(f"{path}: no valid events: the file has no non-empty line")
    if recorder.dead.count >= read:
        raise _NoEvents(
            f"{path}: no valid events: all {read} non-empty lines rejected ({not_objects} not JSON "
            f"objects, {read - not_objects} not events as docs/events.md describes them)"
        )
    sources.alerts = recorder.alerts
    sources.verdicts = list(health.docs)
    sources.deployments = recorder.deployments()
    sources.diagnosis = recorder.diagnose(since_ms=since, until_ms=until, model=model)
    if recorder.dead.count:
        sources.notes.append(f"{recorder.dead.count} lines of the recording were dead-lettered")
    return sources


class _LiveError(RuntimeError):
    pass


class _NoEvents(ValueError):
    """A recording without a single event the engine accepted."""


def _live(settings: Any, since: int, until: int, max_messages: int, timeout_s: float) -> Sources:
    from stream_monitor.runtime.kafka import client_config
    from stream_monitor.runtime.topic_range import TopicRangeError, read_topic_range

    sources = Sources()
    conf = client_config(settings)
    # From an hour earlier: an alert that opened before the range and resolved in it is still one span.
    start = since - DEFAULT_LOOKBACK_MS
    for topic in (settings.topics.alerts, settings.topics.health, settings.topics.datasets):
        try:
            got = read_topic_range(conf, topic, start, until, max_messages, timeout_s)
        except TopicRangeError as exc:
            raise _LiveError(f"cannot read {topic} ({exc}); use --from FILE or --alerts FILE") from exc
        if got.truncated:
            sources.notes.append(f"{topic}: {got.truncated}; the incident may be incomplete")
        sources.read_lines(got.values)
    sources.notes.append(
        f"live mode: {settings.topics.health} is compacted, so only the newest verdict of a rollout may "
        "be left"
    )
    try:
        store = open_store(settings)
        for model in store.deployments():
            for raw in store.history(model):
                try:
                    sources.deployments.append(DeploymentRecord.from_json(raw))
                except LineageError:
                    sources.skipped += 1
    except Exception as exc:  # a connection error of the Redis client
        sources.notes.append(f"no release history: cannot read Redis ({exc})")
    return sources
