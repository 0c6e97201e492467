"""The StateStore protocol: where window sums, input offsets and detector checkpoints live.

The store is the single source of truth for "which messages have been counted". A worker *claims* the
partitions it was assigned (bumping a per-partition epoch that fences off the previous owner) and learns
the next offset to count from; it *commits* per-partition deltas together with the offsets they cover,
atomically. A delta is refused when its epoch is stale or it overlaps what is already counted, so no
event is counted twice; a worker only lets Kafka commit offsets after the store accepted them, so none is
lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from stream_monitor.core.aggregates import PartitionDelta
from stream_monitor.core.labels import JoinDelta
from stream_monitor.core.lineage import HISTORY_LIMIT as HISTORY_LIMIT
from stream_monitor.core.windows import PartitionProgress

__all__ = [
    "VERDICTS_PER_MODEL",
    "WINDOW_LOG_LIMIT",
    "CommitResult",
    "PartitionClaim",
    "StateLost",
    "StateStore",
    "StoreUnavailable",
]

# Verdicts kept per model (one per rollout): enough for the rollouts in flight and a few past ones.
VERDICTS_PER_MODEL = 20
# Closed windows whose diagnosis log entry is kept (core/window_log.py): a day of one-minute windows, as
# much as a replayed diagnosis keeps (SignalHistory), about 8 MB of Redis at the default traffic.
WINDOW_LOG_LIMIT = 1_440


class StoreUnavailable(RuntimeError):
    """The store cannot be reached; the caller should pause and retry, not drop data."""


class StateLost(RuntimeError):
    """The store no longer holds what this worker saw it commit: it came back empty, or went back in time.

    The worker cannot tell what was counted any more; it must stop without acknowledging anything else
    and be restarted. Counting then resumes from the store's offsets where it has them (a store behind
    Kafka's committed offset re-reads the messages in between), and from Kafka's committed offsets
    where it has none (an empty store: what it had counted is gone with it).
    """


@dataclass(frozen=True, slots=True)
class PartitionClaim:
    """Ownership of one input partition: the fencing epoch and the next offset still to count."""

    partition: str
    epoch: int
    next_offset: int


@dataclass(slots=True)
class CommitResult:
    """Outcome of one commit: which partitions' deltas counted, which were refused, and late events."""

    applied: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    late_events: int = 0
    closed_before: int | None = None
    # Refused because the store has no record of the partition at all: its state was lost.
    lost: list[str] = field(default_factory=list)
    # Refused under our own epoch because the offsets overlap what is stored in another way than a
    # plain retry: the worker's idea of what was counted is wrong.
    conflict: list[str] = field(default_factory=list)
    # Join groups whose JoinDelta was not applied (a partition of the group refused or re-claimed).
    join_refused: list[str] = field(default_factory=list)
    # Refused because the store went back in time: it holds an older claim epoch than ours, or has
    # counted the partition to an offset below what this worker saw it commit (a failover to a replica
    # that missed the last commits). Its state is consistent but old: re-read from its offsets.
    behind: list[str] = field(default_factory=list)


class StateStore(Protocol):
    """Storage for window state; see the module docstring for the guarantees."""

    def claim(
        self, partitions: Sequence[str], now_ms: int, highwaters: Mapping[str, int] | None = None
    ) -> dict[str, PartitionClaim]:
        """Take ownership of ``partitions`` (fencing previous owners); returns where to resume.

        A claimed partition holds the watermark back from now until it has been idle for the idle
        timeout, even before its first commit. ``highwaters`` (log-end offsets the broker reported at
        the claim) make that firmer: a partition whose stored offset is below its highwater is not caught
        up, so it holds the watermark until its backlog is counted, however long the fetcher takes to
        reach it.
        """
        ...

    def commit(
        self,
        deltas: Sequence[PartitionDelta],
        epochs: Mapping[str, int],
        now_ms: int,
        joins: Sequence[JoinDelta] = (),
        counted: Mapping[str, int] | None = None,
    ) -> CommitResult:
        """Atomically add each partition's window sums and advance its offset (or refuse it).

        ``counted`` is, per partition, the offset the caller last saw this store count it to (at the
        claim or its last applied commit): a store now below it went back in time and refuses the
        partition as ``behind`` instead of applying the delta over a gap.

        A join group's delta (pending label entries, matured ids, label sums) is applied in the same
        atomic step, only when every partition of the group in this commit is applied for the first time
        and every epoch in its fence is current; an identical retry applies nothing again.
        """
        ...

    def load_join(self, group: str) -> tuple[dict[str, bytes], dict[int, str]]:
        """A join group's stored state: pending entries by id, and matured ids (hex) per serving window."""
        ...

    def read_labels(self, start: int) -> dict[str, float]:
        """The label sums of one label window (see stream_monitor.core.labels)."""
        ...

    def progress(self) -> dict[str, PartitionProgress]:
        """Per-partition counted offset, newest event time and when it last advanced."""
        ...

    def offsets(self, partitions: Sequence[str]) -> dict[str, int]:
        """The next offset to count of each of ``partitions`` that has a committed offset here."""
        ...

    def closed_before(self) -> int | None:
        """Every window ending at or before this has been closed (``None`` before the first close)."""
        ...

    def open_windows(self) -> list[int]:
        """Starts of windows holding data that have not been closed yet, ascending."""
        ...

    def read_window(self, start: int) -> dict[str, float]:
        """The merged sums of one window (open, or closed and not yet expired)."""
        ...

    def close_window(self, start: int, end: int, detector_state: bytes, log_entry: bytes = b"") -> bool:
        """Mark the window closed and save the detector checkpoint, atomically; False if already closed.

        A non-empty ``log_entry`` (core/window_log.py) is kept as the window's diagnosis log entry in
        the same atomic step: a window refused as already closed adds none, so every closed window has
        exactly one (the newest ``window_log_limit`` are kept, oldest dropped).
        """
        ...

    def window_log(self, since_ms: int | None = None, until_ms: int | None = None) -> list[bytes]:
        """The kept diagnosis log entries of windows starting in [since_ms, until_ms), oldest first."""
        ...

    def load_detector_state(self) -> bytes | None:
        """The last detector checkpoint saved by :meth:`close_window`."""
        ...

    def totals(self) -> dict[str, int]:
        """Message counters over all commits (consumed, accepted, rejected, late, ...)."""
        ...

    def acquire_lease(self, name: str, owner: str, ttl_ms: int) -> bool:
        """Take or renew an exclusive lease (e.g. the right to close windows)."""
        ...

    def put_deployment(self, model: str, arm: str, record: bytes) -> None:
        """Remember the latest deployment of a model on an arm."""
        ...

    def deployments(self) -> dict[str, dict[str, bytes]]:
        """Latest deployment record per model and arm."""
        ...

    def history(self, model: str) -> list[bytes]:
        """The model's deployment records in commit order (see stream_monitor.core.lineage).

        Each record of a commit's deltas is appended exactly once, with the offsets that cover it (an
        identical retry appends nothing); only the newest ``HISTORY_LIMIT`` are kept.
        """
        ...

    def put_verdict(self, model: str, key: str, doc: bytes, emitted_at: int) -> None:
        """Keep a canary verdict document under its key (``model/deployment``), unless a newer is kept.

        Only the newest ``VERDICTS_PER_MODEL`` keys of a model are kept.
        """
        ...

    def verdicts(self, model: str) -> dict[str, bytes]:
        """The model's kept verdict documents by key (the newest per deployment)."""
        ...

    def datasets(self) -> dict[str, bytes]:
        """Newest arrival record (by event ts) per dataset name, as committed with the batches."""
        ...
