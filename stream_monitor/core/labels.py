"""Late labels: join serving and engagement events by request id, and judge the model by them.

A served request learns how it did only later, when its engagement comes in (an impression within
seconds, a click within minutes, a ``complete`` up to hours later). This module keeps the join and its
maths pure; the engine feeds it events and commits what it hands back together with the input offsets.

**The join.** Serving and engagement topics are co-partitioned by request id, so partition ``p`` of both
holds the same requests: one :class:`JoinBuffer` per partition number (a *join group*) sees both sides.
A sampled serving request becomes a compact pending entry (series key, ts, slate length, action counts,
2-bit relevance grades of its first 32 positions). Engagement updates its entry. A request's labels are
final once its serving window has *matured*: ``window end + maturity <= group watermark``, where the
group watermark is the smaller of the two partitions' newest event times. Then its sums are emitted and
the entry is dropped (its id is remembered for ``retention`` to recognise late engagement).

Outcomes of a sampled engagement event, decided by event time only (so every batching and every
interleaving of the two partitions gives the same sums, provided each partition is in event-time order):

* joined: its request is pending and ``ts < request window end + maturity``;
* ``late``: its request matured, or it comes at or after that instant (the label is not counted);
* ``orphan``: no serving request with that id showed up by ``ts + maturity`` (or it is older than
  maturity + retention, when a late event can no longer be told from an orphan).

Engagement that arrives before its serving request (the engagement partition ahead of the serving one)
waits as an *early* entry until the request arrives or the orphan deadline passes.

**Where sums go.** Every sum lands in the *label window* ``out(w) = start_of(w + size + maturity)`` of the
window ``w`` it describes (the request's serving window for metrics, the engagement's window for
late/orphan counts): the window during which ``w`` matures. Label windows are stored beside the regular
window sums and read by the closer when it closes that window.

**Metrics (mergeable integer sums per series).** ``req`` matured requests, ``imp`` / ``click`` / ``play`` /
``complete`` engagement events, ``imp_req`` requests with an impression, ``ndcg_u`` and ``ndcg_n`` the sum
of NDCG@k in millionths over requests with a positive grade (and their count), ``rr_u`` the reciprocal
rank of the first positive item in millionths (0 when none; averaged over ``imp_req``). Relevance grades:
impression 0, click 1, play 2, complete 3 (a position keeps its highest). Global counts under series
``*``: ``eng`` sampled engagement events, ``late``, ``orphan``, ``capped`` (request not buffered: the
partition's cap was reached), ``dup`` (a repeated serving request id), ``late_serving`` (a serving event
whose window had matured), ``unjoined`` (serving events on a partition whose partner this worker does not
own; see docs/signals.md).

Imports: standard library, numpy, orjson and the core.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from stream_monitor.core.fields import ALL, field_name, join_series, metric_prefix, split_series
from stream_monitor.core.series import MAX_BASELINES, Breach, SignalValue, parse_window
from stream_monitor.core.signals import WindowEvaluator
from stream_monitor.core.stats.proportions import wilson_lower_bound, wilson_upper_bound
from stream_monitor.core.topology import KEY_DIMS, LabelRule, Topology

__all__ = [
    "GRADES",
    "JoinBuffer",
    "JoinDelta",
    "LabelEvaluator",
    "LabelJoin",
    "ndcg_at_k",
    "reciprocal_rank",
    "request_id_hash",
    "sampled",
]

GRADES: Final = {"impression": 0, "click": 1, "play": 2, "complete": 3}
ACTIONS: Final = ("impression", "click", "play", "complete")
GRADED_POSITIONS: Final = 32
MICRO: Final = 1_000_000
# Entry layout (a list, mutated in place): series, serving ts, slate length, then one count per action,
# then the grades of positions 0..31 packed two bits each.
_SERIES, _TS, _LEN, _COUNTS, _GRADES = 0, 1, 2, 3, 7
_EARLY: Final = "E"
# The join's global counts under their window-sum names, built once (they are counted per event).
_GLOBAL_NAMES: Final = {
    n: field_name(ALL, n) for n in ("eng", "late", "orphan", "dup", "capped", "late_serving", "unjoined")
}
_ENG: Final = _GLOBAL_NAMES["eng"]
U64 = npt.NDArray[np.uint64]


def request_id_hash(request_id: str) -> int:
    """A 64-bit hash of a request id (the join key; both sides compute the same one).

    >>> request_id_hash("0000018f2a3b4c5d")
    17276769924604897808
    """
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")


def sampled(rid_hash: int, rate: float) -> bool:
    """Whether a request id is in the sample: the top 32 bits of its hash below ``rate`` x 2^32.

    Serving and engagement of one request hash alike, so sampling never splits a pair.

    >>> sampled(request_id_hash("r1"), 1.0), sampled(request_id_hash("r1"), 1e-9)
    (True, False)
    """
    return (rid_hash >> 32) < sample_bound(rate)


def sample_bound(rate: float) -> int:
    """The bound of :func:`sampled`: a hash is in the sample when its top 32 bits are below it.

    >>> sample_bound(0.5)
    2147483648
    """
    return int(rate * 2**32)


def _gain(grade: int, rank: int) -> float:
    return float(2**grade - 1) / math.log2(rank + 1)


def ndcg_at_k(grades: Sequence[int], k: int) -> float | None:
    """NDCG@k of one request: ``grades[i]`` is the grade of the item at 0-based position ``i``.

    The ideal ordering is the request's own positive grades sorted best first (the only items judged);
    ``None`` when nothing was engaged (such requests are left out of the average).

    >>> ndcg_at_k([0, 0, 1], k=10) < 1.0, ndcg_at_k([3, 1, 0], k=10), ndcg_at_k([0, 0], k=10)
    (True, 1.0, None)
    >>> ndcg_at_k([0, 0, 1], k=2)  # the click sits below the cut-off
    0.0
    """
    positives = sorted((g for g in grades if g > 0), reverse=True)
    if not positives:
        return None
    ideal = sum(_gain(g, i + 1) for i, g in enumerate(positives[:k]))
    actual = sum(_gain(g, i + 1) for i, g in enumerate(grades[:k]) if g > 0)
    return actual / ideal


def reciprocal_rank(grades: Sequence[int]) -> float:
    """1 / (1-based rank of the first positively graded item), 0 when there is none.

    >>> reciprocal_rank([0, 2, 1]), reciprocal_rank([0, 0])
    (0.5, 0.0)
    """
    return next((1.0 / (i + 1) for i, g in enumerate(grades) if g > 0), 0.0)


def _unpack(packed: int, length: int) -> list[int]:
    return [(packed >> (2 * i)) & 3 for i in range(min(length, GRADED_POSITIONS))]


def request_sums(entry: Sequence[Any], k: int) -> dict[str, int]:
    """The integer sums one matured request adds to its series (see the module docstring).

    >>> request_sums(["s", 0, 20, 3, 1, 1, 0, 2 << 2], k=10)["rr_u"]  # played the item at position 1
    500000
    """
    grades = _unpack(entry[_GRADES], entry[_LEN])
    imp, click, play, complete = entry[_COUNTS : _COUNTS + 4]
    out = {"req": 1, "imp": imp, "click": click, "play": play, "complete": complete}
    out["imp_req"] = 1 if imp else 0
    ndcg = ndcg_at_k(grades, k)
    if ndcg is not None:
        out["ndcg_u"] = round(ndcg * MICRO)
        out["ndcg_n"] = 1
    out["rr_u"] = round(reciprocal_rank(grades) * MICRO)
    return out


@dataclass(slots=True)
class JoinDelta:
    """What one commit changes in one join group's stored state.

    Applied by the store only if every input partition of the group in the same commit (``parts``) is
    applied by it for the first time and every epoch in ``fence`` is still current; otherwise it changes
    nothing and the group is reported in ``CommitResult.join_refused``.
    """

    group: str
    parts: list[str]
    fence: dict[str, int]
    put: dict[str, bytes] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    # Serving window start -> hex of the 64-bit ids of the requests that matured in it (appended).
    matured: dict[int, str] = field(default_factory=dict)
    drop_matured: list[int] = field(default_factory=list)
    # Label window start -> field -> integer sum.
    sums: dict[int, dict[str, int]] = field(default_factory=dict)

    def count(self, name: str) -> int:
        """Total of one global count (``late``, ``orphan``, ...) over the label windows."""
        key = field_name(ALL, name)
        return sum(w.get(key, 0) for w in self.sums.values())


class JoinBuffer:
    """The join of one group (one partition number of the serving and engagement topics).

    >>> buf = JoinBuffer(LabelRule(maturity_ms=60_000), window_ms=60_000)
    >>> h = request_id_hash("r1")
    >>> buf.add_serving(h, "m|v1", ts=1_000, slate_len=20)
    >>> buf.add_engagement(h, ts=3_000, action="click", position=0)
    >>> buf.note("serving", 200_000); buf.note("engagement", 200_000)
    >>> delta = buf.take("0", [], {})
    >>> delta.sums[120_000]["m|v1#click"], delta.sums[120_000]["m|v1#rr_u"], buf.pending
    (1, 1000000, 0)
    """

    def __init__(self, rule: LabelRule, window_ms: int) -> None:
        self.rule = rule
        self.size = window_ms
        self.maturity = rule.maturity_ms
        self.retention = rule.retention_ms
        self._reset()

    def _reset(self) -> None:
        self.serving_max = 0
        self.engagement_max = 0
        self._wm = 0
        self._pending: dict[int, dict[int, list[Any]]] = {}
        self._early: dict[int, dict[int, list[tuple[int, int, int | None]]]] = {}
        # Where each request id is (its window in _pending, its start in _early): an engagement event
        # finds its request in one lookup instead of one per pending window (~17 at default maturity).
        self._pending_at: dict[int, int] = {}
        self._early_at: dict[int, int] = {}
        self._matured: dict[int, U64] = {}
        # All matured ids sorted, with their windows; built when an engagement needs it after a change.
        self._matured_index: tuple[U64, Any] | None = None
        self.pending = 0
        # Changes since the last take().
        self._dirty: dict[int, int] = {}
        self._dirty_early: dict[int, int] = {}
        self._deleted: set[int] = set()
        self._matured_new: dict[int, U64] = {}
        self._drop: set[int] = set()
        self._sums: dict[int, dict[str, int]] = {}

    # -- event time ---------------------------------------------------------------------------------

    def _start(self, ts: int) -> int:
        return ts - ts % self.size

    def out_window(self, window: int) -> int:
        """The label window that reports on ``window`` (the one during which it matures)."""
        return self._start(window + self.size + self.maturity)

    def _deadline(self, window: int) -> int:
        return window + self.size + self.maturity

    def note(self, side: str, ts: int) -> None:
        """Every accepted event of a side moves that side's clock, sampled or not."""
        if side == "serving":
            self.serving_max = max(self.serving_max, ts)
        else:
            self.engagement_max = max(self.engagement_max, ts)

    @property
    def watermark(self) -> int:
        return min(self.serving_max, self.engagement_max)

    def _add(self, window: int, name: str, by: int = 1) -> None:
        sums = self._sums.setdefault(self.out_window(window), {})
        sums[name] = sums.get(name, 0) + by

    def _count(self, ts: int, name: str) -> None:
        self._add(self._start(ts), _GLOBAL_NAMES[name])

    # -- events ---------------------------------------------------------------------------------------

    def add_serving(self, rid: int, series: str, ts: int, slate_len: int) -> None:
        """A sampled serving request with a non-empty slate."""
        window = self._start(ts)
        if self._deadline(window) <= self._wm:
            self._count(ts, "late_serving")
            self._expire_early(rid, late=True)
            return
        if rid in self._pending_at or self._was_matured(rid, window):
            self._count(ts, "dup")
            return
        if self.pending >= self.rule.max_pending:
            self._count(ts, "capped")
            return
        entry: list[Any] = [series, ts, slate_len, 0, 0, 0, 0, 0]
        self._pending.setdefault(window, {})[rid] = entry
        self._pending_at[rid] = window
        self.pending += 1
        self._dirty[rid] = window
        start = self._early_at.pop(rid, None)
        if start is not None:
            events = self._early[start].pop(rid)
            self._dirty_early.pop(rid, None)
            for t, action, position in events:
                self._apply(entry, window, rid, t, action, position)

    def add_engagement(self, rid: int, ts: int, action: str, position: int | None) -> None:
        """A sampled engagement event."""
        # The hot path (3 of 4 events): the "eng" count inlined, the label window computed once.
        size = self.size
        own_start = ts - ts % size
        out = own_start + size + self.maturity
        label_window = out - out % size  # out_window(own_start)
        sums = self._sums.get(label_window)
        if sums is None:
            sums = self._sums[label_window] = {}
        sums[_ENG] = sums.get(_ENG, 0) + 1
        code = ACTIONS.index(action)
        window = self._pending_at.get(rid)
        if window is not None:
            self._apply(self._pending[window][rid], window, rid, ts, code, position)
            return
        start = self._early_at.get(rid)
        if start is not None:
            # Still waiting for its request, so it cannot have matured (the request would be pending).
            self._early[start][rid].append((ts, code, position))
            self._dirty_early[rid] = start
            return
        window = self._matured_window(rid)
        if window is not None:
            expired = ts >= self._deadline(window) + self.retention
            self._count(ts, "orphan" if expired else "late")
            return
        self._early.setdefault(own_start, {})[rid] = [(ts, code, position)]
        self._early_at[rid] = own_start
        self._dirty_early[rid] = own_start

    def _apply(
        self, entry: list[Any], window: int, rid: int, ts: int, code: int, position: int | None
    ) -> None:
        if ts >= self._deadline(window):
            # As for a matured request: past maturity + retention it counts as an orphan, whether the
            # request was still waiting here (not yet matured in this batch) or already emitted.
            expired = ts >= self._deadline(window) + self.retention
            self._count(ts, "orphan" if expired else "late")
            return
        entry[_COUNTS + code] += 1
        if code and position is not None and 0 <= position < min(entry[_LEN], GRADED_POSITIONS):
            shift = 2 * position
            if code > (entry[_GRADES] >> shift) & 3:
                entry[_GRADES] = entry[_GRADES] & ~(3 << shift) | code << shift
        self._dirty[rid] = window

    def _was_matured(self, rid: int, window: int) -> bool:
        # A re-sent serving event carries its request's ts, so only its own window can hold it: looking
        # through every retained window cost one binary search per window for every serving event.
        ids = self._matured.get(window)
        return ids is not None and _contains(ids, rid)

    def _matured_window(self, rid: int) -> int | None:
        """The window whose matured ids hold ``rid`` (one binary search over all retained windows)."""
        if self._matured_index is None:
            if not self._matured:
                return None
            windows = sorted(self._matured)
            ids = np.concatenate([self._matured[w] for w in windows])
            owner = np.repeat(np.array(windows, dtype=np.int64), [len(self._matured[w]) for w in windows])
            order = np.argsort(ids, kind="stable")
            self._matured_index = (ids[order], owner[order])
        ids, owner = self._matured_index
        i = int(np.searchsorted(ids, np.uint64(rid)))
        return int(owner[i]) if i < len(ids) and int(ids[i]) == rid else None

    def _expire_early(self, rid: int, late: bool) -> None:
        start = self._early_at.pop(rid, None)
        if start is not None:
            events = self._early[start].pop(rid)
            self._dirty_early.pop(rid, None)
            self._deleted.add(rid)
            for t, _code, _pos in events:
                self._count(t, "late" if late else "orphan")

    # -- maturity -------------------------------------------------------------------------------------

    def advance(self) -> None:
        """Emit every window the group watermark has matured; expire early entries and old ids."""
        mark = self.watermark
        if mark <= self._wm:
            return
        self._wm = mark
        k = self.rule.k
        for window in sorted(w for w in self._pending if self._deadline(w) <= mark):
            entries = self._pending.pop(window)
            sums = self._sums.setdefault(self.out_window(window), {})
            for entry in entries.values():
                prefix = metric_prefix(entry[_SERIES])
                for name, value in request_sums(entry, k).items():
                    if value:
                        sums[prefix + name] = sums.get(prefix + name, 0) + value
            ids = np.array(sorted(entries), dtype=np.uint64)
            self._matured[window] = ids
            self._matured_new[window] = ids
            self._matured_index = None
            self.pending -= len(entries)
            for rid in entries:
                del self._pending_at[rid]
                self._dirty.pop(rid, None)
                self._deleted.add(rid)
        for start in [s for s in self._early if self._deadline(s) <= mark]:
            for rid, events in self._early.pop(start).items():
                del self._early_at[rid]
                self._dirty_early.pop(rid, None)
                self._deleted.add(rid)
                for t, _code, _pos in events:
                    self._count(t, "orphan")
        for window in [w for w in self._matured if self._deadline(w) + self.retention <= mark]:
            del self._matured[window]
            self._matured_index = None
            self._matured_new.pop(window, None)
            self._drop.add(window)

    # -- persistence ----------------------------------------------------------------------------------

    def take(self, group: str, parts: list[str], fence: dict[str, int]) -> JoinDelta:
        """Mature what is due and hand over every change since the last take as a :class:`JoinDelta`."""
        self.advance()
        put: dict[str, bytes] = {}
        for rid, window in self._dirty.items():
            entry = self._pending.get(window, {}).get(rid)
            if entry is not None:
                put[_hex(rid)] = orjson.dumps(entry)
                self._deleted.discard(rid)
        for rid, start in self._dirty_early.items():
            events = self._early.get(start, {}).get(rid)
            if events is not None:
                put[_hex(rid)] = orjson.dumps([_EARLY, events])
                self._deleted.discard(rid)
        delta = JoinDelta(
            group,
            parts,
            fence,
            put=put,
            delete=sorted(_hex(rid) for rid in self._deleted if _hex(rid) not in put),
            matured={w: ids.astype(">u8").tobytes().hex() for w, ids in self._matured_new.items()},
            drop_matured=sorted(self._drop),
            sums=self._sums,
        )
        self._dirty, self._dirty_early, self._deleted = {}, {}, set()
        self._matured_new, self._drop, self._sums = {}, set(), {}
        return delta

    def load(
        self, entries: Mapping[str, bytes], matured: Mapping[int, str], serving_max: int, engagement_max: int
    ) -> None:
        """Restore the state a store holds (what the last applied commit left)."""
        self._reset()
        self.serving_max, self.engagement_max = serving_max, engagement_max
        self._wm = min(serving_max, engagement_max)
        for key, raw in entries.items():
            rid = int(key, 16)
            doc = orjson.loads(raw)
            if doc and doc[0] == _EARLY:
                events = [(int(t), int(c), p) for t, c, p in doc[1]]
                start = self._start(events[0][0])
                self._early.setdefault(start, {})[rid] = events
                self._early_at[rid] = start
            else:
                window = self._start(int(doc[_TS]))
                self._pending.setdefault(window, {})[rid] = list(doc)
                self._pending_at[rid] = window
                self.pending += 1
        for window, text in matured.items():
            ids = np.frombuffer(bytes.fromhex(text), dtype=">u8").astype(np.uint64)
            self._matured[window] = np.sort(ids)
        self._matured_index = None

    def memory_entries(self) -> tuple[int, int, int]:
        """(pending requests, early entries, remembered matured ids)."""
        return (
            self.pending,
            sum(len(e) for e in self._early.values()),
            sum(len(ids) for ids in self._matured.values()),
        )


def _hex(rid: int) -> str:
    return f"{rid:016x}"


def _contains(ids: U64, rid: int) -> bool:
    i = int(np.searchsorted(ids, np.uint64(rid)))
    return i < len(ids) and int(ids[i]) == rid


class LabelJoin:
    """All join groups of one worker: routes events to their group, builds the groups' commit deltas.

    A group is *joined* only while this worker owns both of its partitions (Faust co-assigns the same
    partition numbers of co-partitioned topics; docs/signals.md). Otherwise its serving events count as
    ``unjoined`` and its engagement events as ``orphan``, and nothing of the group's stored state is touched.

    >>> join = LabelJoin(LabelRule(), 60_000, "s", "e")
    >>> join.owns({"s/0": 1, "e/0": 1}), join.group_of("e/0"), join.partner("s/3")
    (['0'], '0', 'e/3')
    """

    def __init__(self, rule: LabelRule, window_ms: int, serving_topic: str, engagement_topic: str) -> None:
        self.rule = rule
        self.window_ms = window_ms
        self.topics = {serving_topic: "serving", engagement_topic: "engagement"}
        self.serving_topic = serving_topic
        self.engagement_topic = engagement_topic
        self.buffers: dict[str, JoinBuffer] = {}
        self._loose: dict[str, JoinBuffer] = {}
        self._groups: dict[str, str | None] = {}  # group_of, per partition (asked once per event)
        self._sample_below = sample_bound(rule.sample_rate)  # sampled(), with the bound computed once

    def group_of(self, tp: str) -> str | None:
        try:
            return self._groups[tp]
        except KeyError:
            topic, _, partition = tp.rpartition("/")
            group = self._groups[tp] = partition if topic in self.topics else None
            return group

    def partner(self, tp: str) -> str | None:
        topic, _, partition = tp.rpartition("/")
        side = self.topics.get(topic)
        if side is None:
            return None
        return f"{self.engagement_topic if side == 'serving' else self.serving_topic}/{partition}"

    def tps(self, group: str) -> tuple[str, str]:
        return f"{self.serving_topic}/{group}", f"{self.engagement_topic}/{group}"

    def owns(self, claims: Mapping[str, object]) -> list[str]:
        """Groups both of whose partitions are in ``claims``."""
        groups = {g for tp in claims if (g := self.group_of(tp)) is not None}
        return sorted(g for g in groups if all(tp in claims for tp in self.tps(g)))

    def adopt(self, group: str, buffer: JoinBuffer) -> None:
        self.buffers[group] = buffer
        self._loose.pop(group, None)

    def drop(self, group: str) -> None:
        """Forget a group's in-memory state (it is no longer ours, or the store refused its delta)."""
        self.buffers.pop(group, None)
        self._loose.pop(group, None)

    def new_buffer(self) -> JoinBuffer:
        return JoinBuffer(self.rule, self.window_ms)

    def _loose_buffer(self, group: str) -> JoinBuffer:
        buf = self._loose.get(group)
        if buf is None:
            buf = self._loose[group] = JoinBuffer(self.rule, self.window_ms)
        return buf

    def serving(self, tp: str, request_id: str, ts: int, series: str, slate_len: int, ok: bool) -> None:
        group = self.group_of(tp)
        if group is None:
            return
        buf = self.buffers.get(group)
        rid = request_id_hash(request_id)
        if buf is None:
            if ok and sampled(rid, self.rule.sample_rate):
                self._loose_buffer(group)._count(ts, "unjoined")
            return
        if ts > buf.serving_max:  # buf.note("serving", ts), inlined
            buf.serving_max = ts
        if ok and slate_len > 0 and (rid >> 32) < self._sample_below:
            buf.add_serving(rid, series, ts, slate_len)

    def engagement(self, tp: str, request_id: str, ts: int, action: str, position: int | None) -> None:
        group = self.group_of(tp)
        if group is None:
            return
        rid = request_id_hash(request_id)
        buf = self.buffers.get(group)
        if buf is None:
            if sampled(rid, self.rule.sample_rate):
                loose = self._loose_buffer(group)
                loose._count(ts, "eng")
                loose._count(ts, "orphan")
            return
        if ts > buf.engagement_max:  # buf.note("engagement", ts), inlined: once per event
            buf.engagement_max = ts
        if (rid >> 32) < self._sample_below:  # sampled(rid, rule.sample_rate)
            buf.add_engagement(rid, ts, action, position)

    def take(self, parts: Iterable[str], epochs: Mapping[str, int]) -> list[JoinDelta]:
        """The join deltas to commit with the input deltas of ``parts`` (committed under ``epochs``)."""
        by_group: dict[str, list[str]] = {}
        for tp in parts:
            group = self.group_of(tp)
            if group is not None:
                by_group.setdefault(group, []).append(tp)
        out: list[JoinDelta] = []
        for group, tps in sorted(by_group.items()):
            buf = self.buffers.get(group)
            if buf is not None:
                fence = {tp: epochs[tp] for tp in self.tps(group) if tp in epochs}
                out.append(buf.take(group, sorted(tps), fence))
                continue
            loose = self._loose.pop(group, None)
            if loose is not None and loose._sums:
                out.append(
                    JoinDelta(
                        group, sorted(tps), {tp: epochs[tp] for tp in tps if tp in epochs}, sums=loose._sums
                    )
                )
        return out

    @property
    def pending(self) -> int:
        return sum(buf.pending for buf in self.buffers.values())


RATES: Final = (("ctr", "click"), ("play_rate", "play"))


class LabelEvaluator:
    """Label metrics of one closed label window and their alerts (CTR and play-rate drops).

    Values: ``labels`` (``ctr``, ``play_rate``, ``ndcg@k``, ``mrr``, ``requests``) per roll-up key;
    ``label_join`` (``orphan_ratio``, ``late_ratio``) globally. Breaches: ``label_ctr`` (a rate against the
    series' own trailing median) and ``release_ctr`` (a version with fewer than ``min_history`` windows
    against the previous version of the same model, arm, surface and segment slice), each only with at
    least ``min_impressions`` impressions and when the Wilson upper bound of the rate is below
    ``(1 - drop_ratio)`` x the baseline; ``label_join`` when the orphan share is above
    ``max_orphan_ratio`` with confidence.

    >>> from stream_monitor.core.windows import WindowSpec
    >>> ev = LabelEvaluator(Topology("t", WindowSpec(60_000)))
    >>> fields = {"m|v|control|home#req": 1000, "m|v|control|home#imp": 3000, "m|v|control|home#click": 90}
    >>> values, breaches = ev.evaluate(fields, {})
    >>> [(v.metric, round(v.value, 3)) for v in values if v.signal == "labels"][:2]
    [('requests', 1000), ('ctr', 0.03)]
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.rule = topology.labels
        self._levels = WindowEvaluator(topology)
        self._n_dims = len(topology.key_dims)

    def evaluate(
        self, fields: Mapping[str, float], baselines: dict[str, list[float]]
    ) -> tuple[list[SignalValue], list[Breach]]:
        """Values and localised breaches of one label window; ``baselines`` is updated in place."""
        rule = self.rule
        series, _ = parse_window(fields, self._n_dims)
        levels = self._levels.levels(series, with_version=True)
        values: list[SignalValue] = []
        breaches: list[Breach] = []
        previous = self._previous_versions(baselines)
        self._below: set[tuple[str, str, tuple[str, ...]]] = set()
        for key, stats in sorted(levels.items()):
            c = stats.counters
            imp = c.get("imp", 0)
            if not imp and not c.get("req"):
                continue
            values.append(SignalValue("labels", "requests", key, c.get("req", 0)))
            if imp:
                values.append(SignalValue("labels", "ctr", key, c.get("click", 0) / imp, trials=imp))
                values.append(SignalValue("labels", "play_rate", key, c.get("play", 0) / imp, trials=imp))
            if c.get("ndcg_n"):
                values.append(SignalValue("labels", f"ndcg@{rule.k}", key, c["ndcg_u"] / MICRO / c["ndcg_n"]))
            if c.get("imp_req"):
                values.append(SignalValue("labels", "mrr", key, c.get("rr_u", 0) / MICRO / c["imp_req"]))
            for metric, counter in RATES:
                self._drop(key, metric, c.get(counter, 0), imp, baselines, previous, values, breaches)
        self._rolled_back(levels, previous, baselines, values)
        self._join_health(fields, values, breaches)
        return values, _localise_drops(breaches, self._below)

    def _rolled_back(
        self,
        levels: Mapping[tuple[str, ...], Any],
        previous: Mapping[tuple[str, str], list[str]],
        baselines: Mapping[str, list[float]],
        values: list[SignalValue],
    ) -> None:
        """A new version that served nothing in this window while its slice was served by another one
        (rolled back, or replaced) is evaluated at the slice's rate, so its release alert can resolve."""
        rule = self.rule
        present: dict[str, dict[str, tuple[float, float, float]]] = {}
        for key, stats in levels.items():
            slice_key = join_series((key[0], ALL, *key[2:]))
            c = stats.counters
            present.setdefault(slice_key, {})[key[1]] = (c.get("imp", 0), c.get("click", 0), c.get("play", 0))
        for (metric, slice_key), versions in previous.items():
            here = present.get(slice_key)
            if not here:
                continue
            imp = sum(v[0] for v in here.values())
            if imp < rule.min_impressions:
                continue
            hits = sum(v[1 if metric == "ctr" else 2] for v in here.values())
            for version in versions:
                parts = list(split_series(slice_key))
                parts[1] = version
                gone = tuple(parts)
                history = baselines.get(self._history_key(metric, gone), [])
                if version not in here and len(history) < rule.min_history:
                    values.append(SignalValue("release_ctr", metric, gone, hits / imp))

    def _judge(
        self,
        signal: str,
        metric: str,
        key: tuple[str, ...],
        rate: float,
        upper: float,
        expected: float,
        severity: str,
        message: str,
        values: list[SignalValue],
        breaches: list[Breach],
    ) -> bool:
        """Judge a rate against ``expected`` x (1 - drop_ratio); True when the window must stay out of the
        baseline (below the floor, confidently or not)."""
        floor = expected * (1.0 - self.rule.drop_ratio)
        keep_out = False
        # The value is reported (and so an open alert may resolve) when the drop is confident or the rate
        # is back at the floor; in between an open alert stays open (no flapping on noise).
        if upper < floor or rate >= floor:
            values.append(SignalValue(signal, metric, key, rate))
        else:
            keep_out = True
            self._below.add((signal, metric, key))
        if upper < floor:
            keep_out = True
            breaches.append(Breach(signal, metric, key, rate, expected, floor, "ratio", severity, message))
        return keep_out

    @staticmethod
    def _history_key(metric: str, key: tuple[str, ...]) -> str:
        return f"label_ctr|{metric}|{join_series(key)}"

    def _previous_versions(self, baselines: Mapping[str, list[float]]) -> dict[tuple[str, str], list[str]]:
        """Per (metric, slice without version): versions with history, least recently used first."""
        out: dict[tuple[str, str], list[str]] = {}
        for name in baselines:
            if not name.startswith("label_ctr|"):
                continue
            _, metric, series = name.split("|", 2)
            key = list(split_series(series))
            if len(key) != self._n_dims:
                continue
            version = key[1]
            key[1] = ALL
            out.setdefault((metric, join_series(key)), []).append(version)
        return out

    def _drop(
        self,
        key: tuple[str, ...],
        metric: str,
        hits: float,
        imp: float,
        baselines: dict[str, list[float]],
        previous: Mapping[tuple[str, str], list[str]],
        values: list[SignalValue],
        breaches: list[Breach],
    ) -> None:
        rule = self.rule
        name = self._history_key(metric, key)
        prior = None
        if key[1] != ALL and len(baselines.get(name, ())) < rule.min_history:
            prior = self._prior_version(key, metric, baselines, previous)
        what = "CTR" if metric == "ctr" else "play rate"
        keep_out = False
        if prior is not None:
            # A new version is judged on its windows so far, pooled: one window of a slice rarely holds
            # the impressions to tell a halved CTR with confidence (about 1,500 per minute for a region at
            # 30 requests/s), and waiting for one that does took ~30 windows. Pooling adds no looks: the
            # test runs once a window either way, on a growing (bounded) sample.
            p_hits, p_imp, windows = self._pool(baselines, metric, key, hits, imp)
            if p_imp >= rule.min_impressions:
                version, history = prior
                expected = statistics.median(history)
                keep_out = self._judge(
                    "release_ctr",
                    metric,
                    key,
                    p_hits / p_imp,
                    wilson_upper_bound(p_hits, p_imp, rule.z),
                    expected,
                    "critical",
                    f"{what} of new version {key[1]} is {p_hits / p_imp:.2%} over {int(p_imp)} impressions "
                    f"({windows} window{'s' if windows != 1 else ''}), against {expected:.2%} for the "
                    f"previous version {version}",
                    values,
                    breaches,
                )
        if imp < rule.min_impressions:
            return
        rate = hits / imp
        past = _touch(baselines, name)
        if prior is None and len(past) >= rule.min_history:
            expected = statistics.median(past)
            keep_out = self._judge(
                "label_ctr",
                metric,
                key,
                rate,
                wilson_upper_bound(hits, imp, rule.z),
                expected,
                "critical" if rate < expected * (1.0 - 2 * rule.drop_ratio) else "warning",
                f"{what} from late labels is {rate:.2%} over {int(imp)} impressions, against a "
                f"trailing median of {expected:.2%}",
                values,
                breaches,
            )
        # Only windows at or above the floor teach a baseline: a drop must not become the new normal,
        # nor a bad release's own baseline.
        if not keep_out:
            past.append(rate)
            del past[: -rule.baseline_windows]

    def _prior_version(
        self,
        key: tuple[str, ...],
        metric: str,
        baselines: Mapping[str, list[float]],
        previous: Mapping[tuple[str, str], list[str]],
    ) -> tuple[str, list[float]] | None:
        """The most recently used other version of ``key``'s slice with a full history (None: none)."""
        slice_key = list(key)
        slice_key[1] = ALL
        for version in reversed(previous.get((metric, join_series(slice_key)), [])):
            if version == key[1]:
                continue
            other = list(key)
            other[1] = version
            history = baselines.get(self._history_key(metric, tuple(other)), [])
            if len(history) >= self.rule.min_history:
                return version, history
        return None

    def _pool(
        self, baselines: dict[str, list[float]], metric: str, key: tuple[str, ...], hits: float, imp: float
    ) -> tuple[float, float, int]:
        """Add a window of a new version to its pool (flat hits, impressions pairs; the last
        ``baseline_windows`` windows); the pool's hits, impressions and windows."""
        pool = _touch(baselines, f"label_release|{metric}|{join_series(key)}")
        pool.extend((hits, imp))
        del pool[: -2 * self.rule.baseline_windows]
        return sum(pool[0::2]), sum(pool[1::2]), len(pool) // 2

    def _join_health(
        self, fields: Mapping[str, float], values: list[SignalValue], breaches: list[Breach]
    ) -> None:
        rule = self.rule
        prefix = metric_prefix(ALL)
        eng = fields.get(prefix + "eng", 0)
        if not eng:
            return
        key = (ALL,) * self._n_dims
        orphan = fields.get(prefix + "orphan", 0)
        values.append(SignalValue("label_join", "orphan_ratio", key, orphan / eng))
        values.append(SignalValue("label_join", "late_ratio", key, fields.get(prefix + "late", 0) / eng))
        if eng >= rule.min_engagement and wilson_lower_bound(orphan, eng, rule.z) > rule.max_orphan_ratio:
            breaches.append(
                Breach(
                    "label_join",
                    "orphan_ratio",
                    key,
                    orphan / eng,
                    None,
                    rule.max_orphan_ratio,
                    "ratio",
                    "warning",
                    f"{orphan / eng:.1%} of {int(eng)} engagement events match no serving request: "
                    "serving logging, request ids or co-partitioning look broken",
                )
            )


def _localise_drops(
    breaches: list[Breach],
    below: set[tuple[str, str, tuple[str, ...]]] = frozenset(),  # type: ignore[assignment]
) -> list[Breach]:
    """Within each (signal, metric, model, version, arm, surface), the top-level breach when there is one
    (the whole slice dropped: its segments breach or not by chance), else every breaching segment slice.
    Segment slices are not reported either while the top level is below its floor without confidence
    (``below``): that is the whole slice's drop showing through noise, not a local one.

    >>> def b(r): return Breach("label_ctr", "ctr", ("m", "v", "c", "h", r), 0, 0, 0, "ratio", "warning", "")
    >>> [x.key[-1] for x in _localise_drops([b("eu"), b("*")])]
    ['*']
    >>> [x.key[-1] for x in _localise_drops([b("eu")])]
    ['eu']
    >>> _localise_drops([b("eu")], below={("label_ctr", "ctr", ("m", "v", "c", "h", "*"))})
    []
    """
    n_base = len(KEY_DIMS)
    tops = {(b.signal, b.metric, b.key[:n_base]) for b in breaches if all(v == ALL for v in b.key[n_base:])}
    tops |= {(s, m, k[:n_base]) for s, m, k in below if all(v == ALL for v in k[n_base:])}
    return [
        b
        for b in breaches
        if all(v == ALL for v in b.key[n_base:]) or (b.signal, b.metric, b.key[:n_base]) not in tops
    ]


def _touch(history: dict[str, list[float]], key: str) -> list[float]:
    """The history under ``key``, moved to the end (most recently used); the oldest go past the cap."""
    past = history.pop(key, [])
    history[key] = past
    while len(history) > MAX_BASELINES:
        del history[next(iter(history))]
    return past
