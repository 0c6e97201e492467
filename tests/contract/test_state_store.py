"""One contract for every StateStore: the memory store and the Redis store must both pass it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_monitor.core.aggregates import PartitionDelta
from stream_monitor.core.labels import JoinDelta
from stream_monitor.state import MemoryStore, StateStore

TP = "recs.serving/0"


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("redis-cluster", marks=pytest.mark.integration),
    ]
)
def store(request: pytest.FixtureRequest) -> StateStore:
    if request.param == "memory":
        return MemoryStore()
    if request.param == "redis-cluster":  # 3 masters (tests/contract/conftest.py)
        return request.getfixturevalue("cluster_store")  # type: ignore[no-any-return]
    return request.getfixturevalue("redis_store")  # type: ignore[no-any-return]


def delta(
    first: int, nxt: int, sums: dict[int, dict[str, float]], tp: str = TP, ts: int = 0
) -> PartitionDelta:
    events = {start: int(fields.get("s#n", 0)) for start, fields in sums.items()}
    return PartitionDelta(
        tp,
        first,
        nxt,
        max_event_ms=ts,
        windows=sums,
        window_events=events,
        counts={"consumed": nxt - first, "accepted": nxt - first},
    )


def test_claim_bumps_epoch_and_reports_resume_offset(store: StateStore) -> None:
    first = store.claim([TP, "recs.serving/1"], now_ms=1)
    assert first[TP].epoch == 1 and first[TP].next_offset == 0
    store.commit([delta(0, 10, {0: {"s#n": 10}})], {TP: 1}, now_ms=2)
    again = store.claim([TP], now_ms=3)
    assert again[TP].epoch == 2 and again[TP].next_offset == 10


def test_commit_adds_sums_and_advances_offset(store: StateStore) -> None:
    store.claim([TP], now_ms=0)
    r1 = store.commit([delta(0, 3, {60_000: {"s#n": 3, "s#err": 1}}, ts=61_000)], {TP: 1}, now_ms=5)
    r2 = store.commit([delta(3, 5, {60_000: {"s#n": 2}, 120_000: {"s#n": 1}}, ts=121_000)], {TP: 1}, 6)
    assert r1.applied == [TP] and r2.applied == [TP] and not r1.refused
    assert store.read_window(60_000) == {"s#n": 5, "s#err": 1}
    assert store.read_window(120_000) == {"s#n": 1}
    assert store.open_windows() == [60_000, 120_000]
    progress = store.progress()[TP]
    assert (progress.next_offset, progress.max_event_ms, progress.updated_wall_ms) == (5, 121_000, 6)
    assert store.totals()["consumed"] == 5


def test_stale_epoch_is_refused(store: StateStore) -> None:
    store.claim([TP], now_ms=0)
    store.claim([TP], now_ms=1)  # another worker took the partition over
    result = store.commit([delta(0, 4, {0: {"s#n": 4}})], {TP: 1}, now_ms=2)
    assert result.refused == [TP] and result.applied == []
    assert store.read_window(0) == {}
    assert store.claim([TP], now_ms=3)[TP].next_offset == 0


def test_overlapping_offsets_are_refused(store: StateStore) -> None:
    store.claim([TP], now_ms=0)
    store.commit([delta(0, 4, {0: {"s#n": 4}})], {TP: 1}, now_ms=1)
    result = store.commit([delta(2, 6, {0: {"s#n": 4}})], {TP: 1}, now_ms=2)
    assert result.refused == [TP]
    assert store.read_window(0) == {"s#n": 4}


def test_partitions_are_fenced_independently(store: StateStore) -> None:
    other = "recs.serving/1"
    store.claim([TP, other], now_ms=0)
    store.claim([other], now_ms=0)  # only `other` moved to another owner
    result = store.commit(
        [delta(0, 2, {0: {"s#n": 2}}), delta(0, 3, {0: {"s#n": 3}}, tp=other)], {TP: 1, other: 1}, now_ms=1
    )
    assert result.applied == [TP] and result.refused == [other]
    assert store.read_window(0) == {"s#n": 2}


def test_closed_windows_count_late_events_instead(store: StateStore) -> None:
    store.claim([TP], now_ms=0)
    store.commit([delta(0, 2, {0: {"s#n": 2}})], {TP: 1}, now_ms=1)
    assert store.close_window(0, 60_000, b'{"version": 1}') is True
    assert store.close_window(0, 60_000, b'{"version": 1}') is False
    assert store.closed_before() == 60_000 and store.open_windows() == []
    result = store.commit([delta(2, 5, {0: {"s#n": 3}, 60_000: {"s#n": 1}})], {TP: 1}, now_ms=2)
    assert result.applied == [TP] and result.late_events == 3 and result.closed_before == 60_000
    assert store.read_window(0) == {"s#n": 2}
    assert store.read_window(60_000) == {"s#n": 1}
    assert store.totals()["late"] == 3
    assert store.load_detector_state() == b'{"version": 1}'


def test_lease_is_exclusive_until_it_expires(store: StateStore) -> None:
    assert store.acquire_lease("closer", "a", ttl_ms=60_000)
    assert store.acquire_lease("closer", "a", ttl_ms=60_000)  # renewal
    assert not store.acquire_lease("closer", "b", ttl_ms=60_000)


def test_deployments_keep_the_latest_per_arm(store: StateStore) -> None:
    store.put_deployment("m", "control", b"v1")
    store.put_deployment("m", "control", b"v2")
    store.put_deployment("m", "canary", b"v3")
    assert store.deployments() == {"m": {"control": b"v2", "canary": b"v3"}}


@settings(max_examples=30, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=12),
    splits=st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=12),
)
def test_any_batching_gives_the_same_sums(counts: list[int], splits: list[int]) -> None:
    """Merge is associative: however events are cut into batches, the window sums are the same."""
    store = MemoryStore()
    store.claim([TP], now_ms=0)
    offset, i = 0, 0
    while i < len(counts):
        size = splits[i % len(splits)]
        chunk = counts[i : i + size]
        sums: dict[int, dict[str, float]] = {}
        for j, c in enumerate(chunk):
            w = sums.setdefault(((i + j) % 3) * 60_000, {})
            w["s#n"] = w.get("s#n", 0) + c
        store.commit([delta(offset, offset + len(chunk), sums)], {TP: 1}, now_ms=1)
        offset += len(chunk)
        i += size
    total = sum(store.read_window(s).get("s#n", 0) for s in (0, 60_000, 120_000))
    assert total == sum(counts)


def test_a_claimed_partition_holds_the_watermark_before_its_first_commit(store: StateStore) -> None:
    store.claim([TP], now_ms=0)
    store.commit([delta(0, 2, {0: {"s#n": 2}}, ts=50_000)], {TP: 1}, now_ms=1)
    store.claim(["recs.serving/1"], now_ms=7)
    progress = store.progress()
    assert progress["recs.serving/1"].max_event_ms == 0
    assert progress["recs.serving/1"].updated_wall_ms == 7
    assert progress[TP].max_event_ms == 50_000


def test_progress_reports_whether_a_partition_is_caught_up(store: StateStore) -> None:
    store.claim([TP], now_ms=0)
    behind = delta(0, 2, {0: {"s#n": 2}}, ts=50_000)
    behind.highwater = 10
    store.commit([behind], {TP: 1}, now_ms=1)
    assert not store.progress()[TP].caught_up
    done = delta(2, 10, {0: {"s#n": 8}}, ts=51_000)
    done.highwater = 10
    store.commit([done], {TP: 1}, now_ms=2)
    assert store.progress()[TP].caught_up


def test_a_partition_claimed_with_a_backlog_holds_the_watermark_past_the_idle_timeout(
    store: StateStore,
) -> None:
    """The log-end offset given at the claim: not caught up (so never idle) until the backlog is counted."""
    from stream_monitor.core.windows import watermark

    other = "recs.serving/1"
    store.claim([TP, other], now_ms=0, highwaters={TP: 0, other: 5})
    store.commit([delta(0, 3, {0: {"s#n": 3}}, ts=50_000)], {TP: 1}, now_ms=1)
    progress = store.progress()
    assert progress[TP].caught_up and not progress[other].caught_up
    assert progress[other].highwater == 5
    # Long after the idle timeout, the unfetched partition still holds the watermark at "nothing yet".
    assert watermark(progress.values(), now_wall_ms=600_000, idle_timeout_ms=30_000) == 0
    store.commit([delta(0, 5, {0: {"s#n": 5}}, tp=other, ts=40_000)], {other: 1}, now_ms=2)
    assert watermark(store.progress().values(), now_wall_ms=3, idle_timeout_ms=30_000) == 40_000
    # A partition claimed without one keeps the idle-timeout rule (and what was stored before).
    again = store.claim([other], now_ms=4)
    assert again[other].next_offset == 5 and store.progress()[other].highwater == 5


def test_a_commit_for_a_partition_the_store_never_heard_of_reports_lost_state(store: StateStore) -> None:
    result = store.commit([delta(0, 2, {0: {"s#n": 2}})], {TP: 3}, now_ms=1)
    assert result.refused == [TP] and result.lost == [TP]
    assert store.read_window(0) == {}


def test_an_identical_retry_of_an_applied_commit_changes_nothing(store: StateStore) -> None:
    """A commit whose reply was lost (a timeout) is retried as is; the store recognises it."""
    store.claim([TP], now_ms=0)
    batch = delta(0, 3, {0: {"s#n": 3}})
    assert store.commit([batch], {TP: 1}, now_ms=1).applied == [TP]
    again = store.commit([batch], {TP: 1}, now_ms=2)
    assert again.applied == [TP] and not again.refused and not again.conflict
    assert store.read_window(0) == {"s#n": 3}
    assert store.totals()["consumed"] == 3


def test_overlapping_offsets_under_our_own_epoch_are_a_conflict(store: StateStore) -> None:
    store.claim([TP], now_ms=0)
    store.commit([delta(0, 4, {0: {"s#n": 4}})], {TP: 1}, now_ms=1)
    result = store.commit([delta(2, 9, {0: {"s#n": 7}})], {TP: 1}, now_ms=2)
    assert result.refused == [TP] and result.conflict == [TP]
    assert store.read_window(0) == {"s#n": 4}


def test_a_store_below_what_the_worker_saw_it_count_is_behind_and_refuses(store: StateStore) -> None:
    """A store that went back in time (a failover to a lagging replica) must not apply over the gap."""
    store.claim([TP], now_ms=0)
    store.commit([delta(0, 4, {0: {"s#n": 4}})], {TP: 1}, now_ms=1, counted={TP: 0})
    # The worker saw the store count to 9; this store only has 4: offsets 4-8 would be lost.
    result = store.commit([delta(9, 12, {0: {"s#n": 3}})], {TP: 1}, now_ms=2, counted={TP: 9})
    assert result.refused == [TP] and result.behind == [TP] and not result.applied
    assert store.read_window(0) == {"s#n": 4} and store.offsets([TP]) == {TP: 4}
    # What the worker saw is what the store has: applied, over a gap the worker knows is empty.
    ok = store.commit([delta(7, 12, {0: {"s#n": 3}})], {TP: 1}, now_ms=3, counted={TP: 4})
    assert ok.applied == [TP] and not ok.behind and store.offsets([TP]) == {TP: 12}


def test_a_store_with_an_older_epoch_than_ours_is_behind(store: StateStore) -> None:
    store.claim([TP], now_ms=0)
    result = store.commit([delta(0, 2, {0: {"s#n": 2}})], {TP: 2}, now_ms=1)
    assert result.refused == [TP] and result.behind == [TP]
    assert store.read_window(0) == {}


def test_offsets_are_reported_for_committed_partitions_only(store: StateStore) -> None:
    store.claim([TP, "recs.serving/1"], now_ms=0)
    assert store.offsets([TP, "recs.serving/1"]) == {}
    store.commit([delta(0, 6, {0: {"s#n": 6}})], {TP: 1}, now_ms=1)
    assert store.offsets([TP, "recs.serving/1", "never/0"]) == {TP: 6}
    assert store.offsets([]) == {}


def test_deployments_commit_with_their_offsets(store: StateStore) -> None:
    store.claim([TP], now_ms=0)
    batch = delta(0, 2, {})
    batch.deployments = [("m", "canary", b'{"v": 1}'), ("m", "canary", b'{"v": 2}')]
    store.commit([batch], {TP: 1}, now_ms=1)
    assert store.deployments() == {"m": {"canary": b'{"v": 2}'}}
    store.claim([TP], now_ms=2)  # someone else took over: a stale commit must not write deployments
    stale = delta(2, 3, {})
    stale.deployments = [("m", "canary", b'{"v": 3}')]
    assert store.commit([stale], {TP: 1}, now_ms=3).refused == [TP]
    assert store.deployments() == {"m": {"canary": b'{"v": 2}'}}


def test_datasets_keep_the_newest_arrival_by_event_time(store: StateStore) -> None:
    store.claim([TP], now_ms=0)
    batch = delta(0, 3, {})
    batch.datasets = [("f", 2_000, b'{"p": 2}'), ("f", 1_000, b'{"p": 1}'), ("g", 5, b'{"g": 1}')]
    assert store.commit([batch], {TP: 1}, now_ms=1).applied == [TP]
    # A backfilled older partition does not replace the newest; the same ts again (re-published) does.
    assert store.datasets() == {"f": b'{"p": 2}', "g": b'{"g": 1}'}
    later = delta(3, 5, {})
    later.datasets = [("f", 1_500, b'{"p": 1.5}'), ("f", 2_000, b'{"p": 2, "fixed": true}')]
    store.commit([later], {TP: 1}, now_ms=2)
    assert store.datasets()["f"] == b'{"p": 2, "fixed": true}'


def test_datasets_commit_exactly_once_with_their_offsets(store: StateStore) -> None:
    store.claim([TP], now_ms=0)
    batch = delta(0, 2, {})
    batch.datasets = [("f", 1_000, b'{"p": 1}')]
    store.commit([batch], {TP: 1}, now_ms=1)
    newer = delta(2, 3, {})
    newer.datasets = [("f", 3_000, b'{"p": 3}')]
    # An identical retry (its reply was lost) is recognised and writes nothing twice.
    store.commit([newer], {TP: 1}, now_ms=2)
    assert store.commit([newer], {TP: 1}, now_ms=3).applied == [TP]
    assert store.datasets() == {"f": b'{"p": 3}'}
    store.claim([TP], now_ms=4)  # someone else took over: a stale commit must not write arrivals
    stale = delta(3, 4, {})
    stale.datasets = [("f", 9_000, b'{"p": 9}')]
    assert store.commit([stale], {TP: 1}, now_ms=5).refused == [TP]
    assert store.datasets() == {"f": b'{"p": 3}'}
    assert store.totals()["consumed"] == 3


# -- the label join's state (stream_monitor.core.labels) --------------------------------------------------

SERVING, ENGAGEMENT = "recs.serving/3", "recs.engagement/3"


def join_delta(parts: list[str], fence: dict[str, int], n: int = 1) -> JoinDelta:
    return JoinDelta(
        "3",
        parts,
        fence,
        put={f"{i:016x}": b'["m|v",1000,20,1,0,0,0,0]' for i in range(n)},
        delete=["00000000000000ff"],
        matured={0: "00000000000000ff"},
        sums={180_000: {"m|v#req": n, "*#eng": 2 * n}},
    )


def test_join_state_commits_with_both_partitions_offsets(store: StateStore) -> None:
    store.claim([SERVING, ENGAGEMENT], now_ms=0)
    fence = {SERVING: 1, ENGAGEMENT: 1}
    parts = [delta(0, 4, {}, tp=SERVING), delta(0, 6, {}, tp=ENGAGEMENT)]
    result = store.commit(parts, fence, now_ms=1, joins=[join_delta([SERVING, ENGAGEMENT], fence, n=2)])
    assert sorted(result.applied) == [ENGAGEMENT, SERVING] and result.join_refused == []
    entries, matured = store.load_join("3")
    assert entries == {f"{i:016x}": b'["m|v",1000,20,1,0,0,0,0]' for i in range(2)}
    assert matured == {0: "00000000000000ff"}
    assert store.read_labels(180_000) == {"m|v#req": 2, "*#eng": 4}
    # The next commit deletes an entry and appends matured ids of the same window.
    later = JoinDelta("3", [SERVING], fence, delete=[f"{0:016x}"], matured={0: "0000000000000100"})
    store.commit([delta(4, 5, {}, tp=SERVING)], fence, now_ms=2, joins=[later])
    entries, matured = store.load_join("3")
    assert list(entries) == [f"{1:016x}"] and matured == {0: "00000000000000ff0000000000000100"}


def test_an_identical_retry_applies_the_join_once(store: StateStore) -> None:
    store.claim([SERVING, ENGAGEMENT], now_ms=0)
    fence = {SERVING: 1, ENGAGEMENT: 1}
    parts = [delta(0, 4, {}, tp=SERVING)]
    joins = [join_delta([SERVING], fence)]
    assert store.commit(parts, fence, now_ms=1, joins=joins).join_refused == []
    again = store.commit(parts, fence, now_ms=2, joins=joins)
    assert again.applied == [SERVING] and again.join_refused == []
    assert store.read_labels(180_000) == {"m|v#req": 1, "*#eng": 2}


def test_a_join_is_refused_when_a_partition_of_its_group_moved(store: StateStore) -> None:
    store.claim([SERVING, ENGAGEMENT], now_ms=0)
    store.claim([ENGAGEMENT], now_ms=1)  # the partner went to another worker (co-partitioning broken)
    fence = {SERVING: 1, ENGAGEMENT: 1}
    result = store.commit(
        [delta(0, 4, {}, tp=SERVING)], {SERVING: 1}, now_ms=2, joins=[join_delta([SERVING], fence)]
    )
    # The serving offsets still count (their window sums are exact); the join state is left alone.
    assert result.applied == [SERVING] and result.join_refused == ["3"]
    assert store.load_join("3") == ({}, {}) and store.read_labels(180_000) == {}


def test_a_join_is_refused_with_its_refused_partition(store: StateStore) -> None:
    store.claim([SERVING, ENGAGEMENT], now_ms=0)
    store.claim([SERVING, ENGAGEMENT], now_ms=1)  # both taken over: our epoch 1 is stale
    fence = {SERVING: 1, ENGAGEMENT: 1}
    result = store.commit(
        [delta(0, 4, {}, tp=SERVING)], {SERVING: 1}, now_ms=2, joins=[join_delta([SERVING], fence)]
    )
    assert result.refused == [SERVING] and result.join_refused == ["3"]
    assert store.load_join("3") == ({}, {})


def test_label_sums_for_a_closed_window_are_not_added(store: StateStore) -> None:
    store.claim([SERVING], now_ms=0)
    store.commit([delta(0, 1, {0: {"s#n": 1}}, tp=SERVING)], {SERVING: 1}, now_ms=1)
    store.close_window(0, 60_000, b"{}")
    late = JoinDelta("3", [SERVING], {SERVING: 1}, sums={0: {"m|v#req": 1}, 60_000: {"m|v#req": 2}})
    store.commit([delta(1, 2, {}, tp=SERVING)], {SERVING: 1}, now_ms=2, joins=[late])
    assert store.read_labels(0) == {} and store.read_labels(60_000) == {"m|v#req": 2}
    assert store.totals()["labels_late"] == 1


# --- release history and verdicts (stream_monitor.core.lineage, docs/deployment-safety.md) ---------


def test_the_release_history_appends_each_record_exactly_once(store: StateStore) -> None:
    store.claim([TP], now_ms=0)
    first = delta(0, 2, {})
    first.deployments = [("m", "control", b'{"v": 1}'), ("m", "canary", b'{"v": 2}')]
    assert store.commit([first], {TP: 1}, now_ms=1).applied == [TP]
    # The reply was lost and the worker retries the very same commit: nothing is appended again.
    assert store.commit([first], {TP: 1}, now_ms=2).applied == [TP]
    second = delta(2, 3, {})
    second.deployments = [("m", "canary", b'{"v": 3}'), ("other", "control", b'{"v": 4}')]
    store.commit([second], {TP: 1}, now_ms=3)
    assert store.history("m") == [b'{"v": 1}', b'{"v": 2}', b'{"v": 3}']
    assert store.history("other") == [b'{"v": 4}'] and store.history("unknown") == []
    # A stale owner's commit (refused) and an overlapping one (conflict) append nothing either.
    store.claim([TP], now_ms=4)
    stale = delta(3, 4, {})
    stale.deployments = [("m", "canary", b'{"v": 5}')]
    assert store.commit([stale], {TP: 1}, now_ms=5).refused == [TP]
    overlap = delta(1, 4, {})
    overlap.deployments = [("m", "canary", b'{"v": 6}')]
    assert store.commit([overlap], {TP: 2}, now_ms=6).conflict == [TP]
    assert store.history("m") == [b'{"v": 1}', b'{"v": 2}', b'{"v": 3}']


def test_the_release_history_keeps_the_newest_records(store: StateStore) -> None:
    from stream_monitor.core.lineage import HISTORY_LIMIT

    store.claim([TP], now_ms=0)
    batch = delta(0, HISTORY_LIMIT + 5, {})
    batch.deployments = [("m", "canary", str(i).encode()) for i in range(HISTORY_LIMIT + 5)]
    store.commit([batch], {TP: 1}, now_ms=1)
    kept = store.history("m")
    assert len(kept) == HISTORY_LIMIT and kept[0] == b"5" and kept[-1] == str(HISTORY_LIMIT + 4).encode()


def test_verdicts_keep_the_newest_document_per_key(store: StateStore) -> None:
    store.put_verdict("m", "m/v2@1", b'{"n": 1}', emitted_at=100)
    store.put_verdict("m", "m/v2@1", b'{"n": 2}', emitted_at=200)
    store.put_verdict("m", "m/v2@1", b'{"n": 0}', emitted_at=150)  # re-delivered older one: ignored
    store.put_verdict("m", "m/v3@9", b'{"n": 3}', emitted_at=300)
    store.put_verdict("n", "n/v1@1", b'{"n": 4}', emitted_at=50)
    assert store.verdicts("m") == {"m/v2@1": b'{"n": 2}', "m/v3@9": b'{"n": 3}'}
    assert store.verdicts("n") == {"n/v1@1": b'{"n": 4}'} and store.verdicts("x") == {}


def test_verdicts_keep_a_bounded_number_of_keys_per_model(store: StateStore) -> None:
    from stream_monitor.state.base import VERDICTS_PER_MODEL

    for i in range(VERDICTS_PER_MODEL + 3):
        store.put_verdict("m", f"m/v{i}@{i}", str(i).encode(), emitted_at=1_000 + i)
    kept = store.verdicts("m")
    assert len(kept) == VERDICTS_PER_MODEL
    assert "m/v0@0" not in kept and f"m/v{VERDICTS_PER_MODEL + 2}@{VERDICTS_PER_MODEL + 2}" in kept


# --- the diagnosis log of closed windows (stream_monitor.core.window_log, docs/diagnose.md) --------------


def _twin(store: StateStore) -> StateStore:
    """The same stored state seen by another process (a second worker, or this one after a restart)."""
    if isinstance(store, MemoryStore):
        return store  # one process: the memory store has no second view
    from stream_monitor.state.redis_store import RedisStore

    assert isinstance(store, RedisStore)
    return RedisStore(store.client, prefix=store.prefix, window_log_limit=store.window_log_limit)


def test_the_window_log_entry_is_written_with_the_close_exactly_once(store: StateStore) -> None:
    assert store.window_log() == []
    assert store.close_window(0, 60_000, b"{}", b"entry-0") is True
    # Another closer (or this one after a restart) that closes the same window again adds nothing.
    other = _twin(store)
    assert other.close_window(0, 60_000, b"{}", b"entry-0-again") is False
    assert store.close_window(0, 60_000, b"{}", b"entry-0") is False
    assert other.close_window(60_000, 120_000, b"{}", b"entry-1") is True
    assert store.close_window(60_000, 120_000, b"{}", b"entry-1-again") is False
    assert store.window_log() == other.window_log() == [b"entry-0", b"entry-1"]
    # A close without an entry (a worker older than the log) closes and logs nothing.
    assert store.close_window(120_000, 180_000, b"{}") is True
    assert store.window_log() == [b"entry-0", b"entry-1"] and store.closed_before() == 180_000


def test_the_window_log_keeps_the_newest_entries_and_reads_a_range(store: StateStore) -> None:
    store.window_log_limit = 3  # type: ignore[attr-defined]
    for i in range(6):
        assert store.close_window(i * 60_000, (i + 1) * 60_000, b"{}", f"e{i}".encode()) is True
    assert store.window_log() == [b"e3", b"e4", b"e5"]
    assert store.window_log(since_ms=240_000) == [b"e4", b"e5"]
    assert store.window_log(until_ms=240_000) == [b"e3"]
    assert store.window_log(since_ms=240_000, until_ms=300_000) == [b"e4"]
    store.window_log_limit = 0  # type: ignore[attr-defined]  # 0: keep no log
    store.close_window(6 * 60_000, 7 * 60_000, b"{}", b"e6")
    assert store.window_log() == [b"e3", b"e4", b"e5"]


def test_the_window_log_holds_each_closed_window_once_across_a_restart(store: StateStore) -> None:
    """The real closer: an engine closes some windows, a restarted one (same store) closes the rest."""
    import orjson

    from stream_monitor.config import Topics
    from stream_monitor.core.window_log import WindowEntry
    from stream_monitor.engine import Engine, EngineOptions
    from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
    from stream_monitor.sim import TrafficSimulator
    from stream_monitor.sinks.base import ListSink
    from stream_monitor.topology import load_topology

    topology = load_topology(None)
    start = 1_763_942_400_000
    events = list(TrafficSimulator(seed=3, start_ms=start, rate_per_s=4.0).events_until(start + 420_000))

    def engine(view: StateStore) -> tuple[Engine, InProcessPipeline, EventTimeClock]:
        clock = EventTimeClock(start)
        sink = ListSink()
        options = EngineOptions(worker_id="closer", auto_claim=True, lease_ttl_ms=1)
        eng = Engine(topology, view, sink, sink, clock, options=options)
        return eng, InProcessPipeline(eng, Topics(), partitions=2), clock

    first, pipe, clock = engine(store)
    half = [e for e in events if e[2]["ts"] < start + 240_000]
    for kind, key, event in half:
        pipe.feed(kind, key, orjson.dumps(event))
    clock.observe(start + 240_000)
    pipe.step()
    logged = [WindowEntry.decode(raw).start for raw in store.window_log()]
    assert logged and logged == sorted(set(logged))
    # The worker restarts: a new engine on the same stored state re-reads everything from the last
    # acknowledged offset (here: all of it, as if nothing was acknowledged) and closes to the end.
    second, pipe, clock = engine(_twin(store))
    for kind, key, event in events:
        pipe.feed(kind, key, orjson.dumps(event))
    clock.observe(start + 420_000)
    pipe.step(final=True)
    entries = [WindowEntry.decode(raw) for raw in store.window_log()]
    starts = [e.start for e in entries]
    assert starts == sorted(set(starts)) and starts[: len(logged)] == logged
    assert starts == list(range(starts[0], starts[-1] + 60_000, 60_000))  # none lost, none doubled
    assert first.windows_closed + second.windows_closed == len(starts)
    assert all(e.values for e in entries)


# --- through Redis Sentinel (stream_monitor.state.redis_connect, docs/redis-ha.md) ------------------------

THROUGH_SENTINEL = [
    test_claim_bumps_epoch_and_reports_resume_offset,
    test_commit_adds_sums_and_advances_offset,
    test_stale_epoch_is_refused,
    test_closed_windows_count_late_events_instead,
    test_lease_is_exclusive_until_it_expires,
    test_an_identical_retry_of_an_applied_commit_changes_nothing,
    test_join_state_commits_with_both_partitions_offsets,
    test_verdicts_keep_the_newest_document_per_key,
]


@pytest.mark.integration
@pytest.mark.parametrize("check", THROUGH_SENTINEL, ids=lambda f: f.__name__.removeprefix("test_"))
def test_the_core_contract_holds_through_sentinel(
    check: Callable[[StateStore], None], sentinel_stores: Callable[[], Any], redis_sentinel: Any
) -> None:
    """A store built from a ``redis+sentinel://`` URL passes on the primary the Sentinel names."""
    store = sentinel_stores()
    check(store)
    assert store.client.execute_command("ROLE")[0] == b"master"
    assert int(store.client.config_get("port")["port"]) == redis_sentinel.primary.port


# --- in a Redis Cluster (docs/redis-ha.md "Cluster") -----------------------------------------------------


@pytest.mark.integration
def test_in_a_cluster_one_app_is_one_slot_and_its_traces_another(cluster_store: Any) -> None:
    """Every key a commit, a close or a join writes hashes to the app's slot (the hash-tag prefix), so
    each script runs on one node; the traces of the same app have a slot of their own."""
    from stream_monitor.core.topology import TraceRule
    from stream_monitor.core.traces import TraceBatch
    from stream_monitor.state.redis_traces import RedisTraceStore

    store, client = cluster_store, cluster_store.client
    store.claim([SERVING, ENGAGEMENT], now_ms=0)
    fence = {SERVING: 1, ENGAGEMENT: 1}
    parts = [delta(0, 4, {0: {"s#n": 4}}, tp=SERVING), delta(0, 6, {}, tp=ENGAGEMENT)]
    assert store.commit(parts, fence, now_ms=1, joins=[join_delta([SERVING, ENGAGEMENT], fence)]).applied
    assert store.close_window(0, 60_000, b"{}", b"entry")
    store.put_verdict("m", "m/v2@1", b"{}", emitted_at=1)
    traces = RedisTraceStore.beside(store, TraceRule(sample_rate=1.0))
    traces.put(TraceBatch([("r1", "m|v1|control|home|eu", 1, b"{}")]))
    app = {client.keyslot(k) for k in client.scan_iter(f"{store.prefix}:*")}
    traced = {client.keyslot(k) for k in client.scan_iter(f"{traces.prefix}:*")}
    assert store.prefix == "{" + store.app_prefix + "}" and len(app) == 1
    assert traces.prefix == "{" + store.app_prefix + "/traces}" and len(traced) == 1
    assert len(list(client.scan_iter(f"{store.prefix}:*"))) >= 10  # offsets, epochs, windows, join, log...
