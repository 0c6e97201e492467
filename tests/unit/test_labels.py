"""The label join buffer and its maths: maturity, late and orphan engagement, sampling, exact sums.

The join's promise is that its sums depend only on the events (each partition in event-time order), not
on how they were batched or how the two partitions interleaved, nor on a restart from the stored state:
the hypothesis tests below cut and shuffle the same events every way and compare with one straight pass.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_monitor.core.labels import (
    JoinBuffer,
    JoinDelta,
    LabelEvaluator,
    LabelJoin,
    ndcg_at_k,
    reciprocal_rank,
    request_id_hash,
    sampled,
)
from stream_monitor.core.topology import LabelRule, Topology
from stream_monitor.core.windows import WindowSpec

pytestmark = pytest.mark.unit

W = 60_000
RULE = LabelRule(maturity_ms=120_000, retention_ms=600_000)


def _buffer(rule: LabelRule = RULE) -> JoinBuffer:
    return JoinBuffer(rule, W)


def _sums(deltas: list[JoinDelta]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for delta in deltas:
        for start, fields in delta.sums.items():
            window = out.setdefault(start, {})
            for name, value in fields.items():
                window[name] = window.get(name, 0) + value
    return out


def _advance(buf: JoinBuffer, ts: int) -> JoinDelta:
    buf.note("serving", ts)
    buf.note("engagement", ts)
    return buf.take("0", [], {})


# -- maths -----------------------------------------------------------------------------------------------


def _ndcg_reference(grades: list[int], k: int) -> float | None:
    g = np.array(grades, dtype=float)
    if not (g > 0).any():
        return None
    discounts = 1.0 / np.log2(np.arange(2, len(g) + 2))
    dcg = float(((2**g - 1) * discounts)[:k].sum())
    ideal = np.sort(g)[::-1]
    idcg = float(((2**ideal - 1) * discounts)[:k].sum())
    return dcg / idcg


@settings(max_examples=200, deadline=None)
@given(grades=st.lists(st.integers(0, 3), min_size=1, max_size=32), k=st.integers(1, 32))
def test_ndcg_matches_a_numpy_reference(grades: list[int], k: int) -> None:
    got = ndcg_at_k(grades, k)
    want = _ndcg_reference(grades, k)
    assert (got is None) == (want is None)
    if got is not None and want is not None:
        assert got == pytest.approx(want, rel=1e-12)
        assert 0.0 <= got <= 1.0 + 1e-12


def test_ndcg_and_mrr_on_hand_computed_slates() -> None:
    # A click at rank 2 and a complete at rank 1: DCG = 7/1 + 1/log2(3); ideal is the same order.
    assert ndcg_at_k([3, 1], k=10) == pytest.approx(1.0)
    # Swapped: DCG = 1 + 7/log2(3); IDCG = 7 + 1/log2(3).
    assert ndcg_at_k([1, 3], k=10) == pytest.approx((1 + 7 / math.log2(3)) / (7 + 1 / math.log2(3)))
    assert reciprocal_rank([0, 0, 0, 2]) == 0.25


def test_sampling_is_a_pure_function_of_the_request_id() -> None:
    ids = [f"{i:016x}" for i in range(20_000)]
    kept = [rid for rid in ids if sampled(request_id_hash(rid), 0.25)]
    assert 0.23 < len(kept) / len(ids) < 0.27
    assert kept == [rid for rid in ids if sampled(request_id_hash(rid), 0.25)]
    assert all(sampled(request_id_hash(rid), 0.5) for rid in kept)  # nested: a larger rate keeps more


# -- maturity, late, orphan --------------------------------------------------------------------------------


def test_labels_are_emitted_only_once_the_window_has_matured() -> None:
    buf = _buffer()
    rid = request_id_hash("r1")
    buf.add_serving(rid, "m|v", ts=10_000, slate_len=20)
    buf.add_engagement(rid, 11_000, "impression", 0)
    buf.add_engagement(rid, 11_000, "impression", 1)
    buf.add_engagement(rid, 40_000, "click", 1)
    # Window [0, 60 s) matures at 60 s + 120 s: nothing before, everything at that watermark.
    early = _advance(buf, 179_999)
    assert early.sums == {180_000: {"*#eng": 3}} and buf.pending == 1 and early.put
    delta = _advance(buf, 180_000)
    fields = delta.sums[180_000]
    assert fields["m|v#req"] == 1 and fields["m|v#imp"] == 2 and fields["m|v#click"] == 1
    assert fields["m|v#rr_u"] == 500_000 and fields["m|v#ndcg_n"] == 1
    assert fields["m|v#ndcg_u"] == round(1e6 * (1 / math.log2(3)))
    assert buf.pending == 0 and delta.delete == [f"{rid:016x}"]
    assert list(delta.matured) == [0]


def test_engagement_after_maturity_is_late_and_unknown_ids_are_orphans() -> None:
    buf = _buffer()
    known = request_id_hash("known")
    buf.add_serving(known, "m|v", ts=10_000, slate_len=20)
    # In time by event time but at/after the maturity instant (60 s + 120 s): late, not counted.
    buf.add_engagement(known, 180_000, "click", 0)
    _advance(buf, 200_000)
    # After the window was emitted: late (its id is remembered for the retention).
    buf.add_engagement(known, 210_000, "play", 0)
    # An id no serving request ever had: waits, then orphan once ts + maturity has passed.
    buf.add_engagement(request_id_hash("ghost"), 215_000, "click", 0)
    mid = _advance(buf, 300_000)
    end = _advance(buf, 400_000)
    total = _sums([mid, end])
    counts = Counter({k: v for w in total.values() for k, v in w.items() if k.startswith("*#")})
    assert counts["*#late"] == 1 and counts["*#orphan"] == 1 and counts["*#eng"] == 2
    # After maturity + retention an engagement cannot be told from an orphan any more.
    buf.add_engagement(known, 180_000 + 600_000, "complete", 0)
    assert _advance(buf, 900_000).count("orphan") + _advance(buf, 1_000_000).count("orphan") == 1


def test_engagement_that_arrives_before_its_serving_request_still_joins() -> None:
    buf = _buffer()
    rid = request_id_hash("r")
    buf.note("engagement", 30_000)
    buf.add_engagement(rid, 30_000, "click", 2)  # the engagement partition is ahead of the serving one
    first = buf.take("0", [], {})
    assert list(first.put) == [f"{rid:016x}"]  # stored as an early entry
    buf.add_serving(rid, "m|v", ts=20_000, slate_len=5)
    delta = _advance(buf, 200_000)
    assert delta.sums[180_000]["m|v#click"] == 1 and delta.sums[180_000]["m|v#rr_u"] == round(1e6 / 3)
    assert delta.count("orphan") == 0


def test_the_pending_cap_bounds_memory_and_counts_what_it_turns_away() -> None:
    buf = _buffer(LabelRule(maturity_ms=120_000, max_pending=3))
    for i in range(5):
        buf.add_serving(request_id_hash(f"r{i}"), "m|v", ts=1_000 + i, slate_len=3)
    assert buf.pending == 3
    buf.add_serving(request_id_hash("r0"), "m|v", ts=2_000, slate_len=3)  # a repeated id
    delta = _advance(buf, 200_000)
    assert delta.count("capped") == 2 and delta.count("dup") == 1
    assert delta.sums[180_000]["m|v#req"] == 3


def test_group_watermark_is_the_slower_of_the_two_partitions() -> None:
    buf = _buffer()
    buf.add_serving(request_id_hash("r"), "m|v", ts=1_000, slate_len=3)
    buf.note("serving", 500_000)
    buf.note("engagement", 100_000)  # engagement lags: its labels may still come
    assert buf.take("0", [], {}).sums == {} and buf.pending == 1


# -- the multi-group join ----------------------------------------------------------------------------------


def test_groups_are_joined_only_when_both_partitions_are_owned() -> None:
    join = LabelJoin(RULE, W, "s", "e")
    join.adopt("0", join.new_buffer())
    join.serving("s/1", "r", 1_000, "m|v", 3, ok=True)  # partition 1's partner is not ours
    join.engagement("e/1", "r", 2_000, "click", 0)
    deltas = {d.group: d for d in join.take(["s/1", "e/1", "s/0"], {"s/1": 3, "e/1": 4, "s/0": 1, "e/0": 1})}
    assert deltas["1"].count("unjoined") == 1 and deltas["1"].count("orphan") == 1
    assert deltas["1"].fence == {"s/1": 3, "e/1": 4} and not deltas["1"].put
    assert deltas["0"].fence == {"s/0": 1, "e/0": 1} and deltas["0"].parts == ["s/0"]


def test_sampling_keeps_pairs_intact() -> None:
    rule = LabelRule(maturity_ms=120_000, sample_rate=0.3)
    join = LabelJoin(rule, W, "s", "e")
    join.adopt("0", join.new_buffer())
    for i in range(2_000):
        join.serving("s/0", f"r{i}", 1_000, "m|v", 3, ok=True)
    for i in range(2_000):
        join.engagement("e/0", f"r{i}", 2_000, "impression", 0)
    join.serving("s/0", "late", 400_000, "m|v", 3, ok=True)
    join.engagement("e/0", "late", 400_000, "impression", 0)
    fields = _sums(join.take(["s/0"], {"s/0": 1, "e/0": 1}))[180_000]
    assert 500 < fields["m|v#req"] < 700
    assert fields["m|v#imp"] == fields["m|v#req"] == fields["*#eng"]  # every sampled impression joined
    assert "*#orphan" not in fields


# -- exactness under any batching, interleaving and restart -----------------------------------------------


def _events(seed: int, n: int) -> tuple[list[tuple[int, str, int]], list[tuple[int, str, str, int | None]]]:
    """In-order serving (ts, id, slate) and engagement (ts, id, action, position), with orphans and late."""
    rng = np.random.default_rng(seed)
    serving = []
    engagement = []
    for i in range(n):
        ts = 1_000 + i * 9_000 + int(rng.integers(0, 8_000))  # 60 requests over 9 minutes
        rid = f"q{i}"
        serving.append((ts, rid, int(rng.integers(1, 6))))
        for pos in range(int(rng.integers(0, 3))):
            engagement.append((ts + 1_000 + 10 * pos, rid, "impression", pos))
        if rng.random() < 0.4:
            delay = int(rng.choice([3_000, 150_000, 400_000]))  # in time, late, later than retention
            engagement.append((ts + delay, rid, str(rng.choice(["click", "play", "complete"])), 0))
        if rng.random() < 0.05:
            engagement.append((ts + 2_000, f"ghost{i}", "click", None))
    engagement.sort(key=lambda e: e[0])
    return serving, engagement


def _run(
    serving: list[tuple[int, str, int]],
    engagement: list[tuple[int, str, str, int | None]],
    order: list[int],
    cuts: set[int],
    restart_at: int | None = None,
) -> dict[int, dict[str, int]]:
    """Feed both sides in the interleaving ``order`` (0 serving, 1 engagement), taking a delta at ``cuts``;
    at ``restart_at``, rebuild the buffer from the stored state as a restarted worker would."""
    rule = LabelRule(maturity_ms=120_000, retention_ms=200_000)
    buf = JoinBuffer(rule, W)
    store: dict[str, bytes] = {}
    matured: dict[int, str] = {}
    deltas: list[JoinDelta] = []
    si = ei = 0

    def commit() -> None:
        delta = buf.take("0", [], {})
        store.update(delta.put)
        for rid in delta.delete:
            store.pop(rid, None)
        for window, ids in delta.matured.items():
            matured[window] = matured.get(window, "") + ids
        for window in delta.drop_matured:
            matured.pop(window, None)
        deltas.append(delta)

    for step, side in enumerate(order):
        if side == 0 and si < len(serving):
            ts, rid, slate = serving[si]
            si += 1
            buf.note("serving", ts)
            buf.add_serving(request_id_hash(rid), "m|v", ts, slate)
        elif side == 1 and ei < len(engagement):
            ts, rid, action, pos = engagement[ei]
            ei += 1
            buf.note("engagement", ts)
            buf.add_engagement(request_id_hash(rid), ts, action, pos)
        if step in cuts:
            commit()
        if step == restart_at:
            commit()
            smax, emax = buf.serving_max, buf.engagement_max
            buf = JoinBuffer(rule, W)
            buf.load(store, matured, smax, emax)
    commit()
    # Drain: both sides far ahead.
    buf.note("serving", 10**9)
    buf.note("engagement", 10**9)
    commit()
    return _sums(deltas)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    interleave=st.randoms(use_true_random=False),
    cut_every=st.integers(1, 50),
    restart=st.booleans(),
)
def test_sums_are_exact_under_any_batching_interleaving_and_restart(
    seed: int, interleave: Any, cut_every: int, restart: bool
) -> None:
    serving, engagement = _events(seed, 60)
    straight = _run(serving, engagement, [0] * len(serving) + [1] * len(engagement), set())
    # The events mature in the middle of the stream, so maturity, late and expired ids are exercised.
    assert any(k.endswith("#req") for k in straight.get(240_000, {}))
    order = [0] * len(serving) + [1] * len(engagement)
    interleave.shuffle(order)
    cuts = set(range(0, len(order), cut_every))
    restart_at = len(order) // 2 if restart else None
    assert _run(serving, engagement, order, cuts, restart_at) == straight
    # Every sampled engagement event is accounted for exactly once: joined, late or orphan.
    fields = Counter[str]()
    for window in straight.values():
        fields.update(window)
    joined = sum(v for k, v in fields.items() if k.split("#")[1] in ("imp", "click", "play", "complete"))
    assert joined + fields["*#late"] + fields["*#orphan"] == fields["*#eng"] == len(engagement)


# -- the evaluator -----------------------------------------------------------------------------------------


def _topology(**labels: Any) -> Topology:
    return Topology("t", WindowSpec(W), labels=LabelRule(**labels))


def _window(version: str, imp: int, clicks: int) -> dict[str, float]:
    return {f"m|{version}|control|home#imp": imp, f"m|{version}|control|home#click": clicks}


def test_ctr_drop_against_the_own_baseline_needs_confidence() -> None:
    ev = LabelEvaluator(_topology())
    baselines: dict[str, list[float]] = {}
    for _ in range(5):
        assert ev.evaluate(_window("v1", 10_000, 300), baselines)[1] == []
    # 2.4 % against 3.0 % is below the floor (75 % of 3 %) but not with 99.9 % confidence: no alert.
    assert ev.evaluate(_window("v1", 10_000, 220), baselines)[1] == []
    # Half the CTR on 10,000 impressions is.
    _, breaches = ev.evaluate(_window("v1", 10_000, 150), baselines)
    assert [(b.signal, b.metric) for b in breaches] == [("label_ctr", "ctr")]
    # The same rate on too few impressions says nothing.
    assert ev.evaluate(_window("v1", 900, 18), baselines)[1] == []
    # A breaching window did not teach the baseline.
    assert baselines["label_ctr|ctr|m|v1|control|home"] == [0.03] * 5


def test_a_new_version_is_compared_with_the_previous_one_on_the_same_slice() -> None:
    ev = LabelEvaluator(_topology())
    baselines: dict[str, list[float]] = {}
    for _ in range(6):
        ev.evaluate(_window("v1", 10_000, 300), baselines)
    values, breaches = ev.evaluate(_window("v2", 10_000, 150), baselines)
    (breach,) = [b for b in breaches if b.metric == "ctr"]
    assert breach.signal == "release_ctr" and breach.key[1] == "v2"
    assert "previous version v1" in breach.message and breach.expected == pytest.approx(0.03)
    # Rolled back: v1 serves the slice again, v2 is evaluated at the slice's rate and can resolve.
    values, breaches = ev.evaluate(_window("v1", 10_000, 300), baselines)
    assert breaches == []
    assert [
        v.value for v in values if v.signal == "release_ctr" and v.key[1] == "v2" and v.metric == "ctr"
    ] == [0.03]


def test_a_new_version_is_judged_on_its_windows_pooled() -> None:
    ev = LabelEvaluator(_topology())
    baselines: dict[str, list[float]] = {}
    for _ in range(6):
        ev.evaluate(_window("v1", 10_000, 300), baselines)
    # 1.33 % against 3 % on 1,500 impressions a window: not confident in one window (Wilson upper bound
    # 2.6 % against a floor of 2.25 %), confident over the version's first two windows pooled (2.15 %).
    assert [b for b in ev.evaluate(_window("v2", 1_500, 20), baselines)[1] if b.metric == "ctr"] == []
    (breach,) = [b for b in ev.evaluate(_window("v2", 1_500, 20), baselines)[1] if b.metric == "ctr"]
    assert breach.signal == "release_ctr" and breach.observed == pytest.approx(40 / 3_000)
    assert "over 3000 impressions (2 windows)" in breach.message
    # Windows below 1,000 impressions count towards the pool, never towards the version's own baseline.
    ev.evaluate(_window("v2", 500, 7), baselines)
    assert baselines["label_release|ctr|m|v2|control|home"] == [20, 1_500, 20, 1_500, 7, 500]
    assert not baselines.get("label_ctr|ctr|m|v2|control|home")


def test_a_new_version_as_good_as_the_previous_one_learns_its_own_baseline() -> None:
    ev = LabelEvaluator(_topology())
    baselines: dict[str, list[float]] = {}
    for _ in range(6):
        ev.evaluate(_window("v1", 10_000, 300), baselines)
    for _ in range(5):
        assert ev.evaluate(_window("v2", 1_500, 45), baselines)[1] == []
    assert baselines["label_ctr|ctr|m|v2|control|home"] == [0.03] * 5
    # From then on v2 is judged against its own trailing median, one window at a time.
    (breach,) = [b for b in ev.evaluate(_window("v2", 10_000, 150), baselines)[1] if b.metric == "ctr"]
    assert breach.signal == "label_ctr"


def test_the_pool_of_a_new_version_keeps_its_last_baseline_windows() -> None:
    ev = LabelEvaluator(_topology())  # baseline_windows: 15
    baselines: dict[str, list[float]] = {}
    for _ in range(6):
        ev.evaluate(_window("v1", 10_000, 300), baselines)
    for clicks in range(10, 27):
        ev.evaluate(_window("v2", 100, clicks), baselines)
    pool = baselines["label_release|ctr|m|v2|control|home"]
    assert pool[0::2] == list(range(12, 27)) and pool[1::2] == [100] * 15


def test_orphan_share_alerts_when_confidently_high() -> None:
    ev = LabelEvaluator(_topology())
    _, breaches = ev.evaluate({"*#eng": 5_000, "*#orphan": 800}, {})
    assert [(b.signal, b.metric) for b in breaches] == [("label_join", "orphan_ratio")]
    assert ev.evaluate({"*#eng": 5_000, "*#orphan": 200}, {})[1] == []
