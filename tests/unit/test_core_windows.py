"""Event-time tumbling windows and the watermark (stream_monitor.core.windows).

Windows are ``[start, start + size)`` and may close once the watermark reaches ``start + size + lateness``;
the watermark is the minimum over active partitions of their newest event time, and when every partition
is idle the wall clock carries it on.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_monitor.core.windows import CatchUpAlignment, PartitionProgress, WindowSpec, watermark

pytestmark = pytest.mark.unit

HYPOTHESIS = settings(derandomize=True, database=None, deadline=None, max_examples=300)

MINUTE = 60_000
T0 = 1_764_086_400_000  # 2025-11-25T16:00:00Z, a whole minute

sizes = st.integers(min_value=1, max_value=3_600_000)
lateness = st.integers(min_value=0, max_value=3_600_000)
timestamps = st.integers(min_value=0, max_value=4_102_444_800_000)


# -- construction ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "late", "message"),
    [
        (0, 0, "window size must be positive, got 0 ms"),
        (-60_000, 0, "window size must be positive, got -60000 ms"),
        (60_000, -1, "allowed lateness cannot be negative, got -1 ms"),
    ],
)
def test_invalid_spec_is_rejected_with_the_value(size: int, late: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WindowSpec(size_ms=size, allowed_lateness_ms=late)


def test_lateness_defaults_to_zero_and_spec_is_frozen() -> None:
    spec = WindowSpec(MINUTE)
    assert spec.allowed_lateness_ms == 0
    with pytest.raises(AttributeError):
        spec.size_ms = 1  # type: ignore[misc]


# -- start_of / end_of / closes_at / closable_before tables --------------------------------------------


@pytest.mark.parametrize(
    ("size", "ts", "start"),
    [
        (MINUTE, T0, T0),  # exactly on a boundary: the window starting there
        (MINUTE, T0 + 1, T0),
        (MINUTE, T0 + MINUTE - 1, T0),  # last millisecond of the window
        (MINUTE, T0 + MINUTE, T0 + MINUTE),  # the end is exclusive
        (MINUTE, T0 - 1, T0 - MINUTE),
        (MINUTE, 0, 0),
        (MINUTE, 59_999, 0),
        (1, 12_345, 12_345),  # 1 ms windows: every ts is its own window
        (7_000, 20_999, 14_000),  # sizes that do not divide a minute
        (7_000, 21_000, 21_000),
        (3_600_000, T0 + 30 * MINUTE, T0),  # T0 is also a whole hour
    ],
)
def test_start_of(size: int, ts: int, start: int) -> None:
    spec = WindowSpec(size)
    assert spec.start_of(ts) == start
    assert spec.end_of(start) == start + size


@pytest.mark.parametrize(
    ("size", "late", "start", "closes"),
    [
        (MINUTE, 0, T0, T0 + MINUTE),  # lateness 0: closes at its end
        (MINUTE, 30_000, T0, T0 + 90_000),
        (MINUTE, MINUTE, 0, 2 * MINUTE),
        (1, 0, 5, 6),
    ],
)
def test_closes_at(size: int, late: int, start: int, closes: int) -> None:
    assert WindowSpec(size, late).closes_at(start) == closes


@pytest.mark.parametrize(
    ("size", "late", "mark", "before"),
    [
        # lateness 0: the window [T0, T0+60s) closes exactly when the watermark reaches T0+60s
        (MINUTE, 0, T0 + MINUTE - 1, T0),
        (MINUTE, 0, T0 + MINUTE, T0 + MINUTE),
        (MINUTE, 0, T0 + MINUTE + 1, T0 + MINUTE),
        # 30 s lateness: the same window waits until T0+90s
        (MINUTE, 30_000, T0 + 89_999, T0),
        (MINUTE, 30_000, T0 + 90_000, T0 + MINUTE),
        (MINUTE, 30_000, T0 + 149_999, T0 + MINUTE),
        (MINUTE, 30_000, T0 + 150_000, T0 + 2 * MINUTE),
        (MINUTE, 30_000, 190_000, 120_000),  # the docstring example
        # lateness longer than a window
        (MINUTE, 150_000, T0 + 209_999, T0),
        (MINUTE, 150_000, T0 + 210_000, T0 + MINUTE),
    ],
)
def test_closable_before(size: int, late: int, mark: int, before: int) -> None:
    spec = WindowSpec(size, late)
    assert spec.closable_before(mark) == before
    # Consistent with closes_at: the last closable window closes at or before the mark, the next one after.
    assert spec.closes_at(before - size) <= mark < spec.closes_at(before)


# -- properties -----------------------------------------------------------------------------------------


@HYPOTHESIS
@given(size=sizes, ts=timestamps)
def test_every_ts_falls_in_exactly_one_window(size: int, ts: int) -> None:
    spec = WindowSpec(size)
    start = spec.start_of(ts)
    assert start <= ts < spec.end_of(start)
    assert start % size == 0  # windows are aligned to the epoch
    # Idempotent, and every instant of the window maps back to the same start.
    assert spec.start_of(start) == start
    assert spec.start_of(spec.end_of(start) - 1) == start
    # Neighbouring windows do not contain ts.
    for other in (start - size, start + size):
        assert not other <= ts < spec.end_of(other)


@HYPOTHESIS
@given(size=sizes, late=lateness, mark=timestamps)
def test_closable_before_splits_closable_from_open_windows(size: int, late: int, mark: int) -> None:
    spec = WindowSpec(size, late)
    before = spec.closable_before(mark)
    assert before % size == 0
    last_closable = before - size
    # Every window starting before ``before`` may close (closes_at grows with start, so checking the last
    # one covers them all), and the window starting at ``before`` may not.
    assert spec.closes_at(last_closable) <= mark
    assert spec.closes_at(last_closable - 5 * size) <= mark
    assert spec.closes_at(before) > mark


@HYPOTHESIS
@given(size=sizes, late=lateness, mark=timestamps, step=st.integers(min_value=0, max_value=10_000_000))
def test_closable_before_is_monotonic_in_the_watermark(size: int, late: int, mark: int, step: int) -> None:
    spec = WindowSpec(size, late)
    assert spec.closable_before(mark) <= spec.closable_before(mark + step)


# -- watermark ------------------------------------------------------------------------------------------

IDLE = 30_000


def _p(
    max_event_ms: int, updated_wall_ms: int, next_offset: int = 1, highwater: int | None = None
) -> PartitionProgress:
    return PartitionProgress(
        next_offset=next_offset,
        max_event_ms=max_event_ms,
        updated_wall_ms=updated_wall_ms,
        highwater=highwater,
    )


@pytest.mark.parametrize(
    ("parts", "now", "expected"),
    [
        pytest.param([], 1_000, None, id="no partitions: none"),
        pytest.param([_p(5_000, 1_000)], 2_000, 5_000, id="one active partition"),
        pytest.param([_p(5_000, 1_000), _p(3_000, 1_000)], 2_000, 3_000, id="min over active partitions"),
        pytest.param(
            [_p(3_000, 1_000), _p(9_000, 50_000), _p(7_000, 45_000)],
            50_000,
            7_000,
            id="idle partition (behind) does not hold it back",
        ),
        pytest.param(
            [_p(5_000, 1_000), _p(9_000, 1_000 + IDLE)],
            1_000 + IDLE,
            9_000,
            id="exactly idle_timeout since update counts as idle",
        ),
        pytest.param(
            [_p(5_000, 1_000), _p(9_000, 20_000)],
            IDLE,
            5_000,
            id="one ms before idle_timeout is still active",
        ),
        pytest.param(
            [_p(5_000, 1_000), _p(3_000, 1_000)],
            1_000 + IDLE,
            5_000,
            id="all idle, just idle: newest event time",
        ),
        pytest.param(
            [_p(5_000, 1_000), _p(3_000, 1_000)],
            61_000,
            35_000,
            id="all idle: wall clock carries it on",
        ),
        pytest.param(
            [_p(5_000, 1_000), _p(3_000, 20_000)],
            80_000,
            35_000,
            id="all idle: carried on from the last update of any partition",
        ),
        pytest.param(
            [_p(3_000, 1_000, next_offset=10, highwater=500), _p(9_000, 50_000)],
            50_000,
            3_000,
            id="quiet but behind its log (next_offset < highwater): still holds it back",
        ),
        pytest.param(
            [_p(3_000, 1_000, next_offset=500, highwater=500), _p(9_000, 50_000)],
            50_000,
            9_000,
            id="quiet and caught up (next_offset == highwater): idle",
        ),
        pytest.param(
            [_p(3_000, 1_000, next_offset=10, highwater=500), _p(9_000, 1_000)],
            900_000,
            3_000,
            id="a lagging partition stops the wall clock carrying it on",
        ),
        pytest.param(
            [_p(0, 40_000), _p(9_000, 50_000)],
            50_000,
            0,
            id="claimed, nothing counted yet: holds it back until idle",
        ),
        pytest.param(
            [_p(0, 40_000), _p(9_000, 50_000)],
            70_000,
            9_000,
            id="claimed, nothing counted, idle: no longer holds it back",
        ),
    ],
)
def test_watermark_table(parts: list[PartitionProgress], now: int, expected: int | None) -> None:
    assert watermark(parts, now_wall_ms=now, idle_timeout_ms=IDLE) == expected


@pytest.mark.parametrize(
    ("next_offset", "highwater", "caught_up"),
    [(10, None, True), (10, 10, True), (11, 10, True), (9, 10, False), (0, 1, False), (0, 0, True)],
)
def test_caught_up(next_offset: int, highwater: int | None, caught_up: bool) -> None:
    assert _p(0, 0, next_offset=next_offset, highwater=highwater).caught_up is caught_up


def test_watermark_accepts_any_iterable() -> None:
    parts = (p for p in [_p(5_000, 1_000), _p(3_000, 1_000)])
    assert watermark(parts, now_wall_ms=2_000, idle_timeout_ms=IDLE) == 3_000


@HYPOTHESIS
@given(
    parts=st.lists(
        st.tuples(st.integers(0, 10**12), st.integers(0, 10**9), st.none() | st.integers(0, 3)),
        min_size=1,
        max_size=8,
    ).map(lambda xs: [_p(m, u, next_offset=1, highwater=h) for m, u, h in xs]),
    now=st.integers(0, 2 * 10**9),
    idle=st.integers(1, 10**8),
)
def test_watermark_properties(parts: list[PartitionProgress], now: int, idle: int) -> None:
    mark = watermark(parts, now_wall_ms=now, idle_timeout_ms=idle)
    assert mark is not None
    active = [p for p in parts if now - p.updated_wall_ms < idle or not p.caught_up]
    newest = max(p.max_event_ms for p in parts)
    if active:
        # Never ahead of an active partition, and equal to the slowest of them.
        assert mark == min(p.max_event_ms for p in active)
    else:
        # All idle: at least the newest event time, advancing one for one with the wall clock.
        assert mark >= newest
        later = watermark(parts, now_wall_ms=now + 1_000, idle_timeout_ms=idle)
        assert later == mark + 1_000


# -- catch-up alignment -------------------------------------------------------------------------------


@pytest.mark.parametrize(("lead", "stall"), [(0, 1), (1, 0), (-5, 10)])
def test_alignment_rejects_non_positive_times(lead: int, stall: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        CatchUpAlignment(lead_ms=lead, stall_ms=stall)


def test_alignment_sets_no_limit_without_a_partition_behind() -> None:
    align = CatchUpAlignment(lead_ms=60_000, stall_ms=10_000)
    caught_up = {"a/0": PartitionProgress(10, 5_000_000, 0, 10), "a/1": PartitionProgress(4, 1_000, 0, None)}
    assert align.limit(caught_up, now_ms=0) is None
    assert align.ahead(caught_up, now_ms=0) == set()
    assert align.limit({}, now_ms=0) is None


@HYPOTHESIS
@given(
    parts=st.lists(
        st.tuples(st.integers(0, 10**12), st.integers(0, 5), st.none() | st.integers(0, 5)),
        min_size=1,
        max_size=8,
    ),
    lead=st.integers(1, 10**7),
)
def test_alignment_never_holds_the_slowest_partition_behind(
    parts: list[tuple[int, int, int | None]], lead: int
) -> None:
    progress = {
        f"t/{i}": PartitionProgress(offset, event, 0, hw) for i, (event, offset, hw) in enumerate(parts)
    }
    align = CatchUpAlignment(lead_ms=lead, stall_ms=10_000)
    limit = align.limit(progress, now_ms=0)
    ahead = align.ahead(progress, now_ms=0)
    behind = {tp: p for tp, p in progress.items() if not p.caught_up}
    if not behind:
        assert limit is None and not ahead
        return
    assert limit == min(p.max_event_ms for p in behind.values()) + lead
    slowest = min(behind, key=lambda tp: behind[tp].max_event_ms)
    assert slowest not in ahead  # reading always goes on
    assert ahead == {tp for tp, p in progress.items() if p.max_event_ms > limit}


def test_alignment_lets_go_of_a_slowest_partition_that_stalls_and_holds_again_when_it_moves() -> None:
    align = CatchUpAlignment(lead_ms=60_000, stall_ms=10_000)
    progress = {"s/0": PartitionProgress(1, 1_000_000, 0, 9), "e/0": PartitionProgress(1, 2_000_000, 0, 9)}
    assert align.ahead(progress, now_ms=0) == {"e/0"}
    assert align.ahead(progress, now_ms=10_000) == {"e/0"}  # not yet past the stall time
    assert align.ahead(progress, now_ms=10_001) == set()
    progress["s/0"] = PartitionProgress(2, 1_000_500, 0, 9)
    assert align.ahead(progress, now_ms=10_002) == {"e/0"}
