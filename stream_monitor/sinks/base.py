"""Sink protocols for alerts and dead letters, plus simple in-process implementations."""

from __future__ import annotations

import base64
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, ClassVar, Protocol

import orjson

from stream_monitor.core.alerts import Alert

__all__ = [
    "AlertSink",
    "DeadLetter",
    "DeadLetterSink",
    "JsonLinesSink",
    "ListSink",
    "TerminalAlertSink",
]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be used, with why and where it came from (docs/schemas/deadletter...)."""

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes
    worker: str
    dead_lettered_at: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "detail": self.detail,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "key_b64": base64.b64encode(self.key).decode() if self.key is not None else None,
            "value_b64": base64.b64encode(self.value).decode(),
            "worker": self.worker,
            "dead_lettered_at": self.dead_lettered_at,
        }


class AlertSink(Protocol):
    """Receives alerts (firing and resolved) as they are decided."""

    def emit(self, alerts: Sequence[Alert]) -> None: ...


class DeadLetterSink(Protocol):
    """Receives messages that were rejected."""

    def send(self, record: DeadLetter) -> None: ...

    def flush(self) -> None:
        """Make everything sent so far durable (called before the offsets it covers are committed)."""
        ...


class ListSink:
    """Keeps everything in lists (tests, replay)."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.dead_letters: list[DeadLetter] = []

    def emit(self, alerts: Sequence[Alert]) -> None:
        self.alerts.extend(alerts)

    def send(self, record: DeadLetter) -> None:
        self.dead_letters.append(record)

    def flush(self) -> None:
        pass


class JsonLinesSink:
    """Writes alerts and dead letters as JSON lines to a stream."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def emit(self, alerts: Sequence[Alert]) -> None:
        for alert in alerts:
            self.stream.write(orjson.dumps(alert.to_dict()) + b"\n")
        self.stream.flush()

    def send(self, record: DeadLetter) -> None:
        self.stream.write(orjson.dumps({"deadletter": record.to_dict()}) + b"\n")

    def flush(self) -> None:
        self.stream.flush()


class TerminalAlertSink:
    """Prints alerts for people, one line each."""

    COLOURS: ClassVar[dict[str, str]] = {
        "critical": "\033[31m",
        "warning": "\033[33m",
        "info": "\033[36m",
        "resolved": "\033[32m",
    }

    def __init__(self, stream: IO[str] | None = None, colour: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.colour = self.stream.isatty() if colour is None else colour

    def emit(self, alerts: Sequence[Alert]) -> None:
        from datetime import UTC, datetime

        for a in alerts:
            when = datetime.fromtimestamp(a.window["start"] / 1000, tz=UTC).strftime("%H:%M")
            tag = "RESOLVED" if a.status == "resolved" else a.severity.upper()
            text = f"[{when} UTC window] {tag:<8} {a.signal}/{a.metric}  {a.message}"
            if self.colour:
                code = self.COLOURS["resolved" if a.status == "resolved" else a.severity]
                text = f"{code}{text}\033[0m"
            print(text, file=self.stream, flush=True)
