"""Shadow analysis, the pure parts: overlap measures, the pairing buffer, the analyzer and its config."""

from __future__ import annotations

import itertools
import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_monitor.core.alerts import DetectorState, StateFormatError
from stream_monitor.core.shadow import (
    OK,
    ShadowAnalyzer,
    ShadowPairs,
    ShadowStateError,
    jaccard_at_k,
    rank_biased_overlap,
)
from stream_monitor.core.topology import ShadowRule, Topology
from stream_monitor.core.windows import WindowSpec
from stream_monitor.topology import TopologyError, load_topology, parse_topology

pytestmark = pytest.mark.unit

MINUTE = 60_000
S = "~shadow|m|v2#"


# -- overlap measures ---------------------------------------------------------------------------------


def _rbo_by_definition(a: list[str], b: list[str], p: float, k: int) -> float:
    """RBO_ext written straight from Webber et al. (2010), eq. 32, for lists cut at depth k."""
    agreements = [len(set(a[:d]) & set(b[:d])) / d for d in range(1, k + 1)]
    return (1 - p) / p * sum(x * p**d for d, x in enumerate(agreements, 1)) + agreements[-1] * p**k


def test_identical_lists_overlap_fully_and_disjoint_ones_not_at_all() -> None:
    a = [f"i{n}" for n in range(10)]
    b = [f"j{n}" for n in range(10)]
    assert jaccard_at_k(a, a, 10) == 1.0 and rank_biased_overlap(a, a, 0.9) == pytest.approx(1.0)
    assert jaccard_at_k(a, b, 10) == 0.0 and rank_biased_overlap(a, b, 0.9) == 0.0


def test_a_worked_rbo_example() -> None:
    # Agreement at depths 1..4: 0, 1, 2/3, 3/4 -> (1-p)/p * (0 + p^2 + 2/3 p^3 + 3/4 p^4) + 3/4 p^4.
    a, b, p = ["a", "b", "c", "d"], ["b", "a", "e", "c"], 0.9
    expected = (0.1 / 0.9) * (0.81 + 2 / 3 * 0.729 + 0.75 * 0.6561) + 0.75 * 0.6561
    assert rank_biased_overlap(a, b, p) == pytest.approx(expected)
    assert round(expected, 4) == 0.6908  # 0.19868 + 0.49208
    assert jaccard_at_k(a, b, 4) == pytest.approx(3 / 5)


def test_rbo_weighs_the_top_more_than_the_bottom() -> None:
    base = [f"i{n}" for n in range(10)]
    top_swap = [base[1], base[0], *base[2:]]
    bottom_swap = [*base[:8], base[9], base[8]]
    assert rank_biased_overlap(base, top_swap, 0.9) < rank_biased_overlap(base, bottom_swap, 0.9) < 1.0
    # Jaccard ignores the order inside the top k.
    assert jaccard_at_k(base, top_swap, 10) == jaccard_at_k(base, bottom_swap, 10) == 1.0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=1, max_size=15, unique=True),
    st.lists(st.integers(0, 30), min_size=1, max_size=15, unique=True),
    st.sampled_from([0.5, 0.8, 0.9, 0.98]),
)
def test_rbo_matches_its_definition_and_is_symmetric_and_bounded(
    xs: list[int], ys: list[int], p: float
) -> None:
    a, b = [str(x) for x in xs], [str(y) for y in ys]
    k = min(len(a), len(b))
    value = rank_biased_overlap(a, b, p)
    assert value == pytest.approx(_rbo_by_definition(a, b, p, k), abs=1e-12)
    assert value == pytest.approx(rank_biased_overlap(b, a, p), abs=1e-12)
    assert 0.0 <= value <= 1.0
    assert 0.0 <= jaccard_at_k(a, b, k) <= 1.0


# -- pairing ---------------------------------------------------------------------------------------------


def _pairs(**rule: object) -> ShadowPairs:
    return ShadowPairs(ShadowRule(**rule), window_ms=MINUTE)  # type: ignore[arg-type]


def _sum(deltas: list[dict[int, dict[str, int]]]) -> dict[tuple[int, str], int]:
    out: dict[tuple[int, str], int] = {}
    for sums in deltas:
        for window, fields in sums.items():
            for name, value in fields.items():
                out[(window, name)] = out.get((window, name), 0) + value
    return out


@pytest.mark.parametrize("shadow_first", [True, False])
def test_a_pair_is_found_whichever_arm_comes_first(shadow_first: bool) -> None:
    pairs = _pairs()
    pairs.add("r0", "shadow", "m", "v2", 500, OK, ["x"])  # marks the model's shadow as active
    events = [
        ("shadow", "v2", 1_000, ["a", "b", "c"]),
        ("control", "v1", 1_030, ["c", "b", "a"]),
    ]
    for arm, version, ts, items in events if shadow_first else events[::-1]:
        pairs.add("r1", arm, "m", version, ts, OK, items)
    sums = pairs.take("shadow:s/0", ["s/0"], {"s/0": 1}).sums[0]
    assert sums[S + "pairs"] == 1 and sums[S + "jac_u"] == 1_000_000
    assert sums[S + "rbo_u"] == round(rank_biased_overlap(["a", "b", "c"], ["c", "b", "a"], 0.9) * 1e6)
    assert pairs.pending == 1  # r0's shadow still waits


def test_control_events_wait_only_while_a_shadow_of_their_model_is_around() -> None:
    pairs = _pairs(active_ms=MINUTE)
    pairs.add("r1", "control", "m", "v1", 1_000, OK, ["a"])
    assert pairs.pending == 0  # no shadow seen yet: nothing to pair with
    pairs.add("r2", "shadow", "m", "v2", 2_000, OK, ["a"])
    pairs.add("r3", "control", "m", "v1", 3_000, OK, ["a"])
    pairs.add("r4", "control", "other", "v1", 3_000, OK, ["a"])
    assert pairs.pending == 2  # r2 (shadow) and r3; the other model has no shadow
    pairs.add("r5", "control", "m", "v1", 2_000 + MINUTE + 1, OK, ["a"])
    assert pairs.pending == 2  # the shadow has not been seen for longer than active_ms


def test_a_partner_past_the_pairing_window_leaves_both_unpaired() -> None:
    pairs = _pairs(pairing_ms=10_000)
    pairs.add("r1", "shadow", "m", "v2", 1_000, OK, ["a"])
    pairs.add("r1", "control", "m", "v1", 11_000, OK, ["a"])  # 10 s later: too late
    pairs.add("z", "shadow", "m", "v2", 200_000, OK, ["a"])  # moves the partition's time on
    total = _sum([pairs.take("g", ["s/0"], {"s/0": 1}).sums])
    assert total.get((0, S + "pairs"), 0) == 0
    assert total[(0, S + "unpaired_s")] == 1  # in the window of its deadline (11 s)
    assert total[(0, "~shadow|m|*#unpaired_c")] == 1
    assert pairs.pending == 1  # only "z"


def test_a_repeated_event_of_the_same_arm_counts_as_duplicate() -> None:
    pairs = _pairs()
    pairs.add("r1", "shadow", "m", "v2", 1_000, OK, ["a"])
    pairs.add("r1", "shadow", "m", "v2", 1_001, OK, ["a"])
    assert pairs.take("g", ["s/0"], {"s/0": 1}).sums[0][S + "dup"] == 1


def test_memory_is_bounded_by_max_pending() -> None:
    pairs = _pairs(max_pending=100)
    for n in range(1_000):
        pairs.add(f"r{n}", "shadow", "m", "v2", 1_000 + n, OK, ["a"])
    assert pairs.pending == 100
    sums = pairs.take("g", ["s/0"], {"s/0": 1}).sums[0]
    assert sums[S + "capped"] == 900


def test_entries_keep_only_the_top_k_items() -> None:
    pairs = _pairs(k=3)
    pairs.add("r1", "shadow", "m", "v2", 1_000, OK, [f"i{n}" for n in range(50)])
    delta = pairs.take("g", ["s/0"], {"s/0": 1})
    assert orjson.loads(delta.put["r:r1"])[-1] == ["i0", "i1", "i2"]
    assert delta.put["a:m"] == b"1000"  # the model's shadow-last-seen mark, kept with the entries


def test_a_request_id_that_looks_like_a_mark_is_still_an_entry() -> None:
    pairs = _pairs()
    pairs.add("a:m", "shadow", "m", "v2", 1_000, OK, ["x"])
    stored = pairs.take("g", ["s/0"], {"s/0": 1}).put
    restarted = _pairs()
    restarted.load(stored, 1_000)
    assert restarted.pending == 1
    restarted.add("a:m", "control", "m", "v1", 1_010, OK, ["x"])
    assert restarted.take("g", ["s/0"], {"s/0": 1}).sums[0][S + "pairs"] == 1


def _stream(seed: int, n: int = 400) -> list[tuple[str, str, str, int, list[str]]]:
    """Control and shadow events of n requests on one partition, in event-time order."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = 1_000 + i * 400
        items = [f"i{rng.randrange(40)}" for _ in range(5)]
        out.append((f"r{i}", "control", "v1", ts, items))
        if rng.random() < 0.6:
            shadow_items = items if rng.random() < 0.7 else [f"i{rng.randrange(40)}" for _ in range(5)]
            out.append((f"r{i}", "shadow", "v2", ts + rng.randrange(1, 20_000), shadow_items))
    out.sort(key=lambda e: e[3])
    return out


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 50), st.lists(st.integers(1, 60), min_size=1, max_size=12))
def test_any_batching_and_restart_give_the_same_sums(seed: int, cuts: list[int]) -> None:
    """Taking deltas at any points, and reloading the buffer from what was taken (a restart from the
    store), gives exactly the sums of one uninterrupted run."""
    events = _stream(seed)
    rule = ShadowRule(pairing_ms=10_000)
    straight = ShadowPairs(rule, MINUTE)
    for rid, arm, version, ts, items in events:
        straight.add(rid, arm, "m", version, ts, OK, items)
    expected = _sum([straight.take("g", ["s/0"], {"s/0": 1}).sums])

    stored: dict[str, bytes] = {}
    taken: list[dict[int, dict[str, int]]] = []
    buf = ShadowPairs(rule, MINUTE)
    positions = sorted({sum(cuts[: i + 1]) * 7 % len(events) for i in range(len(cuts))})
    start = 0
    for cut in [*positions, len(events)]:
        for rid, arm, version, ts, items in events[start:cut]:
            buf.add(rid, arm, "m", version, ts, OK, items)
        start = max(start, cut)
        delta = buf.take("g", ["s/0"], {"s/0": 1})
        stored.update(delta.put)
        for key in delta.delete:
            stored.pop(key, None)
        taken.append(delta.sums)
        restarted = ShadowPairs(rule, MINUTE)  # a new worker: state only from the store
        restarted.load(stored, buf.max_ts)
        buf = restarted
    taken.append(buf.take("g", ["s/0"], {"s/0": 1}).sums)
    assert _sum(taken) == expected
    names = {name for _, name in expected}
    assert {S + "pairs", S + "unpaired_s", "~shadow|m|*#unpaired_c"} <= names


# -- the analyzer --------------------------------------------------------------------------------------


DEPS = {
    "m": {
        "shadow": {"ts": 0, "model_version": "v2", "traffic": 0.5, "lineage": {"code_commit": "abc"}},
        "control": {"ts": 0, "model_version": "v1", "traffic": 1.0, "lineage": {}},
    }
}


def _window(n: int, jac: float, rbo: float, s_empty: int = 0) -> dict[str, float]:
    return {
        S + "pairs": n,
        S + "ok": n,
        S + "jac_u": jac * n * 1e6,
        S + "jac_q": jac * jac * n * 1e6,
        S + "rbo_u": rbo * n * 1e6,
        S + "rbo_q": rbo * rbo * n * 1e6,
        S + "s_empty": s_empty,
        S + "sx_empty": s_empty,  # the control's slates were never empty
    }


def _analyzer(**rule: object) -> ShadowAnalyzer:
    topo = Topology("t", WindowSpec(MINUTE), shadow=ShadowRule(**rule))  # type: ignore[arg-type]
    return ShadowAnalyzer(topo)


def test_a_close_shadow_is_promoted_after_enough_windows_and_pairs() -> None:
    az, state = _analyzer(min_windows=3), {}
    decisions = [
        az.update(state, DEPS, {}, _window(400, 0.8, 0.85), (w * MINUTE, (w + 1) * MINUTE), 0)[0].decision
        for w in range(4)
    ]
    assert decisions == ["HOLD", "HOLD", "PROMOTE", "PROMOTE"]


def test_a_divergent_shadow_is_rolled_back_and_stays_rolled_back() -> None:
    az, state = _analyzer(), {}
    [v] = az.update(state, DEPS, {}, _window(1_000, 0.3, 0.35), (0, MINUTE), 0)
    doc = v.to_json_dict()
    assert doc["kind"] == "shadow" and doc["decision"] == "ROLLBACK" and doc["verdict"] == "FAIL"
    assert doc["candidate"] == {"version": "v2", "arm": "shadow", "lineage": {"code_commit": "abc"}}
    assert doc["baseline"]["version"] == "v1" and doc["valid_until"] == ShadowRule().valid_for_ms
    assert "overlap.jaccard" in doc["reason"] and "overlap.rbo" in doc["reason"]
    rbo = next(m for m in doc["metrics"] if m["name"] == "overlap.rbo")
    assert rbo["classification"] == "LOW" and rbo["lower"] <= 0.35 <= rbo["upper"] < 0.6
    # Better windows later do not undo a rollback decided on an anytime-valid bound.
    for w in range(1, 20):
        [v] = az.update(state, DEPS, {}, _window(5_000, 0.95, 0.95), (w * MINUTE, (w + 1) * MINUTE), 0)
    assert v.decision == "ROLLBACK" and "decided at window 1" in v.reason


def test_a_shadow_with_more_empty_slates_is_rolled_back() -> None:
    az, state = _analyzer(), {}
    [v] = az.update(state, DEPS, {}, _window(2_000, 0.8, 0.85, s_empty=200), (0, MINUTE), 0)
    assert v.decision == "ROLLBACK" and "empty_slate_rate" in v.reason


def test_a_new_shadow_deployment_starts_afresh_and_a_retired_one_is_forgotten() -> None:
    az, state = _analyzer(), {}
    az.update(state, DEPS, {}, _window(1_000, 0.3, 0.3), (0, MINUTE), 0)
    redeployed = {"m": {**DEPS["m"], "shadow": {**DEPS["m"]["shadow"], "model_version": "v3", "ts": 10}}}
    [v] = az.update(state, redeployed, {}, {}, (MINUTE, 2 * MINUTE), 0)
    assert v.deployment == "v3@10" and v.decision == "HOLD" and state["models"]["m"]["windows"] == 1
    retired = {"m": {**DEPS["m"], "shadow": {**DEPS["m"]["shadow"], "traffic": 0.0}}}
    assert az.update(state, retired, {}, {}, (2 * MINUTE, 3 * MINUTE), 0) == []
    assert state["models"] == {}


def test_the_shadow_state_survives_the_detector_checkpoint() -> None:
    az, det = _analyzer(), DetectorState()
    az.update(det.shadow, DEPS, {}, _window(100, 0.8, 0.8), (0, MINUTE), 0)
    loaded = DetectorState.from_json_dict(orjson.loads(orjson.dumps(det.to_json_dict())))
    assert loaded.shadow == det.shadow
    with pytest.raises(StateFormatError, match=r"shadow state models.m.pairs values must be numbers"):
        bad = orjson.loads(orjson.dumps(det.to_json_dict()))
        bad["shadow"]["models"]["m"]["pairs"]["ok"] = "many"
        DetectorState.from_json_dict(bad)
    with pytest.raises(ShadowStateError, match="version"):
        ShadowAnalyzer.check_state({"version": 9})


# -- config -----------------------------------------------------------------------------------------------


def test_the_default_topology_has_the_shadow_section() -> None:
    rule = load_topology().shadow
    assert rule.enabled and rule.pairing_ms == 30_000 and rule.active_ms == 600_000 and rule.k == 10
    assert "overlap.rbo" in rule.critical


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"rbo_p": 1.5}, "shadow.rbo_p must be in (0, 1), got 1.5"),
        ({"min_jaccard": -0.1}, "shadow.min_jaccard must be in [0, 1], got -0.1"),
        ({"pairing": "0s"}, "shadow.pairing"),
        ({"k": "ten"}, "shadow.k: expected a number, got 'ten'"),
        ({"enabled": "yes"}, "shadow.enabled: expected true or false, got 'yes'"),
        ({"max_pending": 0}, "shadow.max_pending must be >= 1, got 0"),
        ({"critical": "overlap.rbo"}, "shadow.critical: expected a list of strings"),
        ({"pairs": 3}, "shadow: unknown keys ['pairs']"),
        ({"pairing": "5m", "active": "1m"}, "shadow.active (60000 ms) must be at least shadow.pairing"),
    ],
)
def test_bad_shadow_values_are_refused_with_a_precise_message(
    section: dict[str, object], message: str
) -> None:
    with pytest.raises(TopologyError) as err:
        parse_topology({"name": "t", "window": {"size": "1m"}, "shadow": section})
    assert message in str(err.value)


def test_every_pairing_order_of_a_request_gives_the_same_sums() -> None:
    events = [
        ("r1", "shadow", "v2", 1_000, ["a", "b"]),
        ("r1", "control", "v1", 1_005, ["a", "c"]),
        ("r2", "shadow", "v2", 1_010, ["x"]),
        ("r2", "control", "v1", 1_020, ["x"]),
    ]
    results = set()
    for order in itertools.permutations(events):
        pairs = _pairs()
        pairs.add("seed", "shadow", "m", "v2", 0, OK, ["q"])
        for rid, arm, version, ts, items in order:
            pairs.add(rid, arm, "m", version, ts, OK, items)
        sums = pairs.take("g", ["s/0"], {"s/0": 1}).sums[0]
        results.add(tuple(sorted((k, v) for k, v in sums.items() if "pairs" in k or "_u" in k)))
    assert len(results) == 1
