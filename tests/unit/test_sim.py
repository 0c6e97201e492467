"""Traffic simulator and incident library: determinism, the event contract, rates, and incident ground truth.

Incident tests lean on a property of the simulator: its random draws never depend on the incidents, so a
run with an incident equals the run without it everywhere outside the incident's slice and window. That
lets them check "changes the target slice after onset, and nothing else" event by event, not only on
aggregates.
"""

from __future__ import annotations

import argparse
import ast
import math
import sys
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from stream_monitor.cli import simulate
from stream_monitor.sim import (
    INCIDENT_KINDS,
    GroundTruth,
    Incident,
    SimConfig,
    TrafficSimulator,
    parse_incident,
)
from stream_monitor.sim.incidents import FRESHNESS_FEATURES, PLATFORMS, REGIONS, SOURCES, STAGES, TENURES

pytestmark = pytest.mark.unit

START = 1_764_028_800_000  # 2026-11-25T00:00:00Z
SIM_DIR = Path(__file__).resolve().parents[2] / "stream_monitor" / "sim"

# Small runs keep the file fast; serving-only config where engagement is irrelevant halves the cost.
NO_ENGAGEMENT = SimConfig(engagement=False)
INCIDENT_RATE = 30.0
INCIDENT_RUN_S = 400
ONSET = START + 200_000


def _run(seed: int = 3, rate: float = 50.0, duration_s: float = 60, **kw: Any) -> list[tuple[str, Any, Any]]:
    return list(TrafficSimulator(seed, START, rate, **kw).events(duration_s))


def _serving(events: list[tuple[str, Any, Any]]) -> list[dict[str, Any]]:
    return [e for kind, _, e in events if kind == "serving"]


@pytest.fixture(scope="module")
def full_run() -> list[tuple[str, Any, Any]]:
    """Two minutes with engagement and a canary: the contract and ordering tests share it."""
    return _run(seed=5, rate=150, duration_s=120, config=SimConfig(canary_share=0.1))


@pytest.fixture(scope="module")
def baseline() -> list[dict[str, Any]]:
    """Serving events of the incident-free twin of every incident run."""
    return _serving(_run(seed=9, rate=INCIDENT_RATE, duration_s=INCIDENT_RUN_S, config=NO_ENGAGEMENT))


@pytest.fixture(scope="module")
def engaged_baseline() -> list[tuple[str, Any, Any]]:
    """The incident-free twin of the engagement incident runs (with engagement)."""
    return _run(seed=9, rate=INCIDENT_RATE, duration_s=INCIDENT_RUN_S)


# --- determinism and ordering -----------------------------------------------------------------------


def test_same_seed_same_events_other_seed_other_events() -> None:
    a, b, c = _run(seed=1), _run(seed=1), _run(seed=2)
    assert orjson.dumps([e for _, _, e in a]) == orjson.dumps([e for _, _, e in b])
    assert [e["request_id"] for e in _serving(a)] != [e["request_id"] for e in _serving(c)]


@pytest.mark.parametrize(("rate", "duration_s"), [(50.0, 90), (3000.0, 2)])
def test_chunked_pulls_equal_one_pull(rate: float, duration_s: int) -> None:
    whole = _run(seed=4, rate=rate, duration_s=duration_s)
    sim = TrafficSimulator(4, START, rate)
    end = START + duration_s * 1000
    pieces: list[tuple[str, Any, Any]] = []
    rng = np.random.default_rng(0)
    t = START
    while t < end:
        t = min(t + int(rng.integers(1, duration_s * 80)), end)
        pieces.extend(sim.events_until(t))
        assert sim.now_ms == t
    assert pieces == whole
    ts = [e["ts"] for _, _, e in whole]
    assert all(a <= b for a, b in pairwise(ts))
    # High rates generate in shorter blocks of event time, which must not change any of the above.
    assert sim.block_ms == (1000 if rate <= 250 else 50)


def test_abandoned_pull_resumes_where_it_stopped() -> None:
    whole = _run(seed=4, duration_s=30)
    sim = TrafficSimulator(4, START, 50.0)
    got = []
    for i, event in enumerate(sim.events(30)):
        got.append(event)
        if i == 100:
            break
    got.extend(sim.events(30))
    assert got == whole


def test_events_are_in_non_decreasing_ts(full_run: list[tuple[str, Any, Any]]) -> None:
    ts = [e["ts"] for _, _, e in full_run]
    assert all(a <= b for a, b in pairwise(ts))
    assert ts[0] == START and ts[-1] < START + 120_000
    assert {kind for kind, _, _ in full_run} == {"serving", "engagement", "deployment"}


# --- the event contract -----------------------------------------------------------------------------


def test_serving_events_follow_the_contract(full_run: list[tuple[str, Any, Any]]) -> None:
    serving = [(key, e) for kind, key, e in full_run if kind == "serving"]
    ids = [e["request_id"] for _, e in serving]
    assert len(set(ids)) == len(ids)
    status: Counter[str] = Counter()
    for key, e in serving:
        assert key == e["request_id"].encode()
        assert set(e) == {
            "type", "request_id", "ts", "model", "model_version", "arm", "surface", "segment", "latency_ms",
            "funnel", "sources", "items", "features", "feature_ts", "fallback", "error",
        }  # fmt: skip
        assert e["type"] == "serving" and type(e["ts"]) is int
        assert (e["model"], e["surface"]) == ("home-ranker", "home")
        assert (e["arm"], e["model_version"]) in {("control", "2026.11.20-3"), ("canary", "2026.11.27-1")}
        seg = e["segment"]
        assert seg["platform"] in PLATFORMS and seg["region"] in REGIONS and seg["tenure"] in TENURES
        lat = e["latency_ms"]
        assert set(lat) == {"total", *STAGES} and all(type(v) is float and v > 0 for v in lat.values())
        assert 0 < lat["total"] - sum(lat[s] for s in STAGES) <= 6.1
        funnel, sources = e["funnel"], e["sources"]
        assert all(type(v) is int for v in (*funnel.values(), *sources.values()))
        feats = e["features"]
        assert type(feats["watch_minutes_7d"]) is float and type(feats["days_since_signup"]) is int
        assert type(feats["country"]) is str
        assert 2 * 60_000 <= e["ts"] - e["feature_ts"]["watch_minutes_7d"] <= 6 * 3_600_000
        assert type(e["fallback"]) is bool
        items = e["items"]
        if e["error"] is not None:
            status["error"] += 1
            assert type(e["error"]) is str and items == [] and funnel["returned"] == 0
            continue
        assert sum(sources.values()) == funnel["retrieved"] and 1000 <= funnel["retrieved"] <= 1500
        if not items:
            status["empty"] += 1
            assert funnel["returned"] == 0 and not e["fallback"]
            continue
        status["fallback" if e["fallback"] else "ok"] += 1
        assert (
            funnel["retrieved"]
            > funnel["filtered"]
            > funnel["ranked"]
            > funnel["returned"]
            == len(items)
            == 20
        )
        assert len({it["id"] for it in items}) == 20
        scores = [it["score"] for it in items]
        assert all(0 < s < 1 and type(s) is float for s in scores)
        assert all(a > b for a, b in pairwise(scores))
        assert {it["source"] for it in items} <= {"collab", "trending", "continue_watching"}
    n = len(serving)
    # 18k requests: the rare statuses land near their configured rates (0.2 %, 1 %, 0.3 %).
    assert 0.0005 < status["error"] / n < 0.005
    assert 0.006 < status["fallback"] / n < 0.015
    assert 0.001 < status["empty"] / n < 0.006


def test_engagement_and_deployment_events_follow_the_contract(full_run: list[tuple[str, Any, Any]]) -> None:
    deployments = [(key, e) for kind, key, e in full_run if kind == "deployment"]
    assert [(key, e["arm"], e["traffic"]) for key, e in deployments] == [
        (b"home-ranker", "control", 0.9),
        (b"home-ranker", "canary", 0.1),
    ]
    canary = deployments[1][1]
    assert canary["baseline_version"] == deployments[0][1]["model_version"]
    assert canary["lineage"]["artifact_digest"].startswith("sha256:")
    assert set(canary["lineage"]) == {
        "training_data",
        "feature_set",
        "code_commit",
        "artifact_digest",
        "validation",
    }
    for kind, key, e in full_run:
        if kind != "engagement":
            continue
        assert set(e) == {"type", "request_id", "ts", "item_id", "position", "action", "value"}
        assert key == e["request_id"].encode() and type(e["ts"]) is int
        assert e["action"] in {"impression", "click", "play", "complete"}
        assert type(e["position"]) is int and 0 <= e["position"] < 3 and type(e["value"]) is float


def test_events_validate_against_the_published_schemas(full_run: list[tuple[str, Any, Any]]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schemas = Path(__file__).resolve().parents[2] / "docs" / "schemas"
    validators = {}
    for kind in ("serving", "engagement", "deployment"):
        path = schemas / f"{kind}.schema.json"
        if not path.is_file():
            pytest.skip(f"{path} not present")
        validators[kind] = jsonschema.Draft202012Validator(orjson.loads(path.read_bytes()))
    # Validating all 60k events costs seconds; every shape is covered by the first events of each kind plus
    # every serving event that is not a plain success.
    seen: Counter[str] = Counter()
    sample = []
    for kind, _, e in full_run:
        seen[kind] += 1
        if seen[kind] <= 200 or (kind == "serving" and (e["error"] or e["fallback"] or not e["items"])):
            sample.append((kind, e))
    for kind, e in sample:
        errors = [f"{err.json_path}: {err.message}" for err in validators[kind].iter_errors(e)]
        assert not errors, (kind, errors)


def test_events_of_the_new_incident_kinds_validate_against_the_schemas() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schemas = Path(__file__).resolve().parents[2] / "docs" / "schemas"
    if not (schemas / "serving.schema.json").is_file():
        pytest.skip("schemas not present")
    validators = {
        kind: jsonschema.Draft202012Validator(orjson.loads((schemas / f"{kind}.schema.json").read_bytes()))
        for kind in ("serving", "engagement", "deployment")
    }
    # The largest staleness still leaves feature_ts a valid (post-2000) timestamp.
    specs = (
        "stale_feature:onset=0,magnitude=31536000",
        "source_outage:onset=0",
        "engagement_logging_break:onset=0",
    )
    events = _run(seed=2, rate=40.0, duration_s=20, incidents=[parse_incident(s, START) for s in specs])
    for kind, _, e in events:
        errors = [f"{err.json_path}: {err.message}" for err in validators[kind].iter_errors(e)]
        assert not errors, (kind, errors)


def test_engagement_follows_serving(full_run: list[tuple[str, Any, Any]]) -> None:
    serving = {e["request_id"]: e for e in _serving(full_run)}
    chains: dict[str, list[dict[str, Any]]] = {}
    for kind, _, e in full_run:
        if kind == "engagement":
            chains.setdefault(e["request_id"], []).append(e)
    assert chains and set(chains) <= set(serving)
    horizon = max(e["ts"] for e in serving.values())
    clicks = 0
    for rid, chain in chains.items():
        req = serving[rid]
        assert req["error"] is None and req["items"], "only served slates get engagement"
        for e in chain:
            assert e["ts"] >= req["ts"] + 1000
            assert e["item_id"] == req["items"][e["position"]]["id"]
        if req["ts"] > horizon - 5000:
            continue  # the run ended before this request's impressions were all due
        actions = [e["action"] for e in chain]
        assert actions[:3] == ["impression"] * 3 and [e["position"] for e in chain[:3]] == [0, 1, 2]
        # click -> play -> complete, each only after the previous one, all on the clicked item.
        assert actions[3:] in ([], ["click"], ["click", "play"], ["click", "play", "complete"])
        if len(chain) > 3:
            clicks += 1
            assert len({e["item_id"] for e in chain[3:]}) == 1
            assert all(a["ts"] <= b["ts"] for a, b in pairwise(chain[3:]))
    # Requests of the last seconds have not had their impressions yet; the click rate is still ~8 %.
    assert 0.06 < clicks / len(chains) < 0.10


# --- rates and shapes -------------------------------------------------------------------------------


def _diurnal(ts_ms: float, amplitude: float = 0.3, peak_hour: float = 20.0) -> float:
    hour = (ts_ms / 3_600_000) % 24
    return 1 + amplitude * math.cos(2 * math.pi * (hour - peak_hour) / 24)


@pytest.mark.parametrize("amplitude", [0.0, 0.3])
def test_rate_matches_over_ten_minutes(amplitude: float) -> None:
    rate = 20.0
    cfg = SimConfig(engagement=False, diurnal_amplitude=amplitude)
    n = len(_serving(_run(seed=6, rate=rate, duration_s=600, config=cfg)))
    expected = sum(rate * _diurnal(START + s * 1000 + 500, amplitude) for s in range(600))
    assert abs(n / expected - 1) < 0.10
    if amplitude:
        # At midnight UTC the default curve (peak 20:00) runs 15 % above the mean.
        assert abs(n / (rate * 600) - 1.15) < 0.05


def test_diurnal_peak_and_trough() -> None:
    cfg = SimConfig(engagement=False)
    peak = TrafficSimulator(1, START + 20 * 3_600_000, 100.0, config=cfg)
    trough = TrafficSimulator(1, START + 8 * 3_600_000, 100.0, config=cfg)
    ratio = len(_serving(list(peak.events(60)))) / len(_serving(list(trough.events(60))))
    assert abs(ratio - 1.3 / 0.7) < 0.15


def test_diurnal_start_hour_makes_a_run_independent_of_when_it_starts() -> None:
    """With ``diurnal_start_hour`` the events of a seed are the same at any start (timestamps shifted)."""

    def shape(start_ms: int) -> list[tuple[object, ...]]:
        cfg = SimConfig(diurnal_start_hour=8.0)
        sim = TrafficSimulator(4, start_ms, 30.0, config=cfg)
        return [
            (kind, key, e["ts"] - start_ms, e.get("request_id"), orjson.dumps(e.get("items")))
            for kind, key, e in sim.events(300)
        ]

    at_eight = shape(START + 8 * 3_600_000)
    assert at_eight == shape(START + 13 * 3_600_000 + 17 * 60_000)
    # And it is the curve at 08:00 UTC (trough near 08:00 with the default peak at 20:00).
    plain = TrafficSimulator(4, START + 8 * 3_600_000, 30.0)
    assert [(k, e["ts"]) for k, _, e in plain.events(300)] == [
        (k, t + START + 8 * 3_600_000) for k, _, t, _, _ in at_eight
    ]
    with pytest.raises(ValueError, match="diurnal_start_hour"):
        SimConfig(diurnal_start_hour=24.0)


def test_segments_have_non_uniform_shares(baseline: list[dict[str, Any]]) -> None:
    cfg = SimConfig()
    for dim, shares in (("platform", cfg.platforms), ("region", cfg.regions), ("tenure", cfg.tenures)):
        counts = Counter(e["segment"][dim] for e in baseline)
        for value, share in shares:
            assert abs(counts[value] / len(baseline) - share) < 0.02, (dim, value)


def test_baseline_latency_p99_is_about_150ms(baseline: list[dict[str, Any]]) -> None:
    p99 = float(np.percentile([e["latency_ms"]["total"] for e in baseline], 99))
    assert 125 < p99 < 175


def test_catalogue_popularity_is_long_tailed(baseline: list[dict[str, Any]]) -> None:
    counts = Counter(it["id"] for e in baseline[:3000] for it in e["items"])
    top = counts.most_common()
    assert len(counts) > 2000  # the tail gets shown
    assert top[0][1] > 20 * top[len(top) // 2][1]  # the head dominates


def test_clean_feature_ages_are_minutes_to_an_hour(baseline: list[dict[str, Any]]) -> None:
    assert all(set(e["feature_ts"]) == set(FRESHNESS_FEATURES) for e in baseline)
    assert len(FRESHNESS_FEATURES) >= 2
    for feature, p50_min, p99_max in (("watch_minutes_7d", (8, 16), 60), ("days_since_signup", (25, 40), 70)):
        ages_min = np.array([e["ts"] - e["feature_ts"][feature] for e in baseline]) / 60_000
        assert all(type(e["feature_ts"][feature]) is int for e in baseline[:100])
        assert ages_min.min() >= 1, feature
        assert ages_min.max() <= 120, feature  # a 2 h tail at most: a stale feature stands out
        p50, p99 = np.percentile(ages_min, [50, 99])
        assert p50_min[0] < p50 < p50_min[1] and p99 < p99_max, (feature, p50, p99)


# --- incidents --------------------------------------------------------------------------------------


def _slice_after(e: dict[str, Any], inc: Incident) -> bool:
    in_slice = all(e["segment"].get(d, e.get(d)) == v for d, v in inc.target.items())
    return in_slice and inc.active(e["ts"])


def _incident_run(inc: Incident) -> list[dict[str, Any]]:
    sim = TrafficSimulator(9, START, INCIDENT_RATE, [inc], config=NO_ENGAGEMENT)
    return _serving(list(sim.events(INCIDENT_RUN_S)))


def _split(
    events: list[dict[str, Any]], baseline: list[dict[str, Any]], inc: Incident
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Assert events outside the incident's slice and window equal the baseline's; return the hit pairs.

    A pair is (event with the incident, same request without it); the first is ``{}`` when it was dropped.
    """
    by_id = {e["request_id"]: e for e in events}
    hit = []
    for base in baseline:
        if _slice_after(base, inc):
            hit.append((by_id.pop(base["request_id"], {}), base))
        else:
            assert by_id.pop(base["request_id"]) == base
    assert not by_id, "the incident run has requests the baseline does not"
    return hit


def _rate(events: list[dict[str, Any]], pred: Any) -> float:
    return sum(1 for e in events if pred(e)) / max(len(events), 1)


def test_latency_regression_multiplies_the_stage_in_the_slice_only(baseline: list[dict[str, Any]]) -> None:
    inc = Incident("latency_regression", ONSET, magnitude=4.0, target={"region": "eu"})
    events = _incident_run(inc)
    hit = _split(events, baseline, inc)
    assert len(hit) > 1000
    for new, old in hit:
        assert abs(new["latency_ms"]["ranking"] - 4 * old["latency_ms"]["ranking"]) <= 0.25 + 1e-9
        assert new["latency_ms"]["retrieval"] == old["latency_ms"]["retrieval"]

    def p99(region: str, after: bool) -> float:
        vals = [
            e["latency_ms"]["ranking"]
            for e in events
            if e["segment"]["region"] == region and (e["ts"] >= ONSET) == after
        ]
        return float(np.percentile(vals, 99))

    assert 3.2 < p99("eu", True) / p99("eu", False) < 5.0
    assert 0.8 < p99("us", True) / p99("us", False) < 1.25


def test_traffic_drop_silences_the_slice(baseline: list[dict[str, Any]]) -> None:
    inc = Incident("traffic_drop", ONSET, target={"region": "eu"})
    events = _incident_run(inc)
    hit = _split(events, baseline, inc)
    assert hit and all(new == {} for new, _ in hit)
    assert not [e for e in events if e["segment"]["region"] == "eu" and e["ts"] >= ONSET]


def test_partial_traffic_drop_removes_that_fraction(baseline: list[dict[str, Any]]) -> None:
    inc = Incident(
        "traffic_drop", ONSET, magnitude=0.5, target={"platform": "android", "tenure": "established"}
    )
    hit = _split(_incident_run(inc), baseline, inc)
    kept = sum(1 for new, _ in hit if new) / len(hit)
    assert 0.4 < kept < 0.6


@pytest.mark.parametrize(
    ("kind", "check", "base_rate"),
    [
        ("error_spike", lambda e: e["error"] is not None, 0.002),
        ("fallback_spike", lambda e: e["fallback"], 0.01),
        ("empty_slates", lambda e: e["error"] is None and e["funnel"]["returned"] == 0, 0.003),
    ],
)
def test_rate_incidents_set_the_slice_rate_for_their_window(
    baseline: list[dict[str, Any]], kind: str, check: Any, base_rate: float
) -> None:
    magnitude = INCIDENT_KINDS[kind].default_magnitude
    inc = Incident(kind, ONSET, duration_ms=120_000, target={"region": "eu"})
    events = _incident_run(inc)
    hit = _split(events, baseline, inc)  # also proves: before onset, after the end, other regions unchanged
    new = [n for n, _ in hit]
    assert abs(_rate(new, check) - magnitude) < 0.05
    outside = [e for e in events if not _slice_after(e, inc)]
    assert _rate(outside, check) < 3 * base_rate
    # The other status rates of the slice stay put: one fault, one signal.
    for other in ("error", "fallback"):
        if other not in kind:
            assert _rate(new, lambda e, o=other: bool(e[o])) < 0.05


@pytest.mark.parametrize(
    ("feature", "magnitude", "duration_ms"),
    [(None, None, None), ("days_since_signup", 900.0, 120_000)],
)
def test_stale_feature_ages_one_feature_in_the_slice_only(
    baseline: list[dict[str, Any]], feature: str | None, magnitude: float | None, duration_ms: int | None
) -> None:
    inc = Incident("stale_feature", ONSET, duration_ms, magnitude, {"region": "eu"}, feature=feature)
    assert inc.feature == (feature or "watch_minutes_7d")
    assert inc.magnitude == (magnitude or 21_600.0)
    hit = _split(_incident_run(inc), baseline, inc)
    assert len(hit) > 1000
    shift_ms = round(inc.factor * 1000)
    for new, old in hit:
        for f in FRESHNESS_FEATURES:
            expected = old["feature_ts"][f] - (shift_ms if f == inc.feature else 0)
            assert new["feature_ts"][f] == expected
        assert {k: v for k, v in new.items() if k != "feature_ts"} == {
            k: v for k, v in old.items() if k != "feature_ts"
        }
    if inc.feature == "watch_minutes_7d":
        # 6 h older: every request of the slice is past the clean 2 h ceiling.
        assert min(new["ts"] - new["feature_ts"][inc.feature] for new, _ in hit) >= 6 * 3_600_000


def _source_of_items(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(it["source"] for e in events if not e["fallback"] for it in e["items"])


@pytest.mark.parametrize("source", ["trending", "collab", "continue_watching"])
def test_source_outage_empties_one_source_in_the_slice_only(
    baseline: list[dict[str, Any]], source: str
) -> None:
    inc = Incident("source_outage", ONSET, 120_000, target={"region": "eu"}, source=source)
    hit = _split(_incident_run(inc), baseline, inc)
    assert len(hit) > 500
    others = [s for s in SOURCES if s != source]
    for new, old in hit:
        assert new["sources"][source] == 0
        assert sum(new["sources"].values()) == sum(old["sources"].values())
        if old["error"] is None:
            assert sum(new["sources"].values()) == new["funnel"]["retrieved"]
            # Its candidates went to the others: none of them lost any.
            assert all(new["sources"][s] >= old["sources"][s] for s in others)
        assert {k: v for k, v in new.items() if k not in ("sources", "items")} == {
            k: v for k, v in old.items() if k not in ("sources", "items")
        }
        # Slates stay full: same ids, scores and order; only the dead source's items are re-labelled.
        assert [(it["id"], it["score"]) for it in new["items"]] == [
            (it["id"], it["score"]) for it in old["items"]
        ]
        for it_new, it_old in zip(new["items"], old["items"], strict=True):
            if new["fallback"]:
                assert it_new == it_old  # the precomputed fallback list is not the live source
            elif it_old["source"] == source:
                assert it_new["source"] in others
            else:
                assert it_new == it_old
    served = [new for new, _ in hit]
    new_mix, old_mix = _source_of_items(served), _source_of_items([old for _, old in hit])
    assert new_mix[source] == 0 and old_mix[source] > 100
    assert sum(new_mix.values()) == sum(old_mix.values())
    # The re-labelled items follow the remaining sources' mix rather than all landing on one of them.
    assert all(new_mix[s] > old_mix[s] for s in others)


def test_partial_source_outage_hits_that_fraction(baseline: list[dict[str, Any]]) -> None:
    inc = Incident("source_outage", ONSET, magnitude=0.5, target={"tenure": "new"})
    assert inc.source == "trending"
    hit = _split(_incident_run(inc), baseline, inc)
    out = sum(1 for new, _ in hit if new["sources"]["trending"] == 0) / len(hit)
    assert 0.4 < out < 0.6


def test_source_outage_of_every_source_leaves_nothing_to_serve(baseline: list[dict[str, Any]]) -> None:
    incs = [Incident("source_outage", ONSET, target={"region": "eu"}, source=s) for s in SOURCES]
    sim = TrafficSimulator(9, START, INCIDENT_RATE, incs, config=NO_ENGAGEMENT)
    hit = _split(_serving(list(sim.events(INCIDENT_RUN_S))), baseline, incs[0])
    for new, old in hit:
        assert set(new["sources"].values()) == {0}
        if old["error"] is not None:
            assert new == old  # an error retrieved nothing anyway
        elif old["fallback"]:
            # Nothing retrieved, the precomputed fallback list still served.
            assert new["items"] == old["items"] and new["funnel"]["returned"] == 20
            assert new["funnel"]["retrieved"] == 0 == sum(new["sources"].values())
        else:
            assert new["items"] == [] and set(new["funnel"].values()) == {0} and new["error"] is None


def _engagement_id(e: dict[str, Any]) -> tuple[Any, ...]:
    return (e["request_id"], e["action"], e["position"], e["ts"])


def _in_target(region: str, target: dict[str, str]) -> bool:
    """Whether a request of ``region`` is in ``target`` (the engagement tests target at most a region)."""
    assert set(target) <= {"region"}
    return target.get("region", region) == region


@pytest.mark.parametrize(
    ("target", "magnitude", "duration_ms"),
    [({}, None, None), ({"region": "eu"}, 1.0, 120_000)],
)
def test_engagement_logging_break_drops_engagement_in_its_window_only(
    engaged_baseline: list[tuple[str, Any, Any]],
    target: dict[str, str],
    magnitude: float | None,
    duration_ms: int | None,
) -> None:
    inc = Incident("engagement_logging_break", ONSET, duration_ms, magnitude, target)
    assert inc.ground_truth.key == {}  # engagement carries no segment: the monitor sees it only globally
    events = _run(seed=9, rate=INCIDENT_RATE, duration_s=INCIDENT_RUN_S, incidents=[inc])
    # Serving and deployments are untouched.
    assert [e for kind, _, e in events if kind != "engagement"] == [
        e for kind, _, e in engaged_baseline if kind != "engagement"
    ]
    region = {e["request_id"]: e["segment"]["region"] for e in _serving(engaged_baseline)}
    kept_ids = {_engagement_id(e) for kind, _, e in events if kind == "engagement"}
    base = [e for kind, _, e in engaged_baseline if kind == "engagement"]
    # Nothing new, the order kept: the run is the baseline with some engagement events removed.
    assert [e for e in base if _engagement_id(e) in kept_ids] == [
        e for kind, _, e in events if kind == "engagement"
    ]
    in_window = [inc.active(e["ts"]) and _in_target(region[e["request_id"]], target) for e in base]
    hit = [e for e, h in zip(base, in_window, strict=True) if h]
    assert len(hit) > 3000
    # Outside the window (and, when targeted, outside the slice) every engagement event is still there.
    assert all(_engagement_id(e) in kept_ids for e, h in zip(base, in_window, strict=True) if not h)
    lost = Counter(e["action"] for e in hit if _engagement_id(e) not in kept_ids)
    total = Counter(e["action"] for e in hit)
    assert abs(sum(lost.values()) / len(hit) - inc.factor) < 0.02
    for action in ("impression", "click", "play"):
        assert abs(lost[action] / total[action] - inc.factor) < 0.1, action


def test_incidents_targeting_arm_and_model() -> None:
    cfg = SimConfig(engagement=False, canary_share=0.2)
    inc = Incident("error_spike", START, magnitude=1.0, target={"arm": "canary", "model": "home-ranker"})
    events = _serving(list(TrafficSimulator(2, START, 50.0, [inc], config=cfg).events(30)))
    canary = [e for e in events if e["arm"] == "canary"]
    control = [e for e in events if e["arm"] == "control"]
    assert canary and all(e["error"] for e in canary)
    assert _rate(control, lambda e: e["error"] is not None) < 0.02


def test_simulator_rejects_incidents_on_slices_without_traffic() -> None:
    with pytest.raises(ValueError, match=r"arm='canary'.*no traffic"):
        TrafficSimulator(1, START, 10.0, [Incident("error_spike", START, target={"arm": "canary"})])
    with pytest.raises(ValueError, match=r"model='other'"):
        TrafficSimulator(1, START, 10.0, [Incident("error_spike", START, target={"model": "other"})])


@pytest.mark.parametrize(
    ("kind", "signal", "stage"),
    [
        ("latency_regression", "latency", "ranking"),
        ("traffic_drop", "volume", None),
        ("error_spike", "error_rate", None),
        ("fallback_spike", "fallback_rate", None),
        ("empty_slates", "empty_slate_rate", None),
    ],
)
def test_ground_truth_names_signal_key_and_stage(kind: str, signal: str, stage: str | None) -> None:
    inc = Incident(kind, ONSET, 60_000, target={"tenure": "new", "region": "eu"})
    assert inc.ground_truth == GroundTruth(
        signal, {"region": "eu", "tenure": "new"}, ONSET, stage, ONSET + 60_000
    )
    sim = TrafficSimulator(1, START, 1.0, [inc])
    assert sim.ground_truth == [inc.ground_truth]


@pytest.mark.parametrize(
    ("inc", "expected"),
    [
        (
            Incident("stale_feature", ONSET, 60_000, target={"tenure": "new", "region": "eu"}),
            GroundTruth(
                "freshness",
                {"region": "eu", "tenure": "new"},
                ONSET,
                None,
                ONSET + 60_000,
                "watch_minutes_7d",
            ),
        ),
        (
            Incident("stale_feature", ONSET, target={"platform": "tv"}, feature="days_since_signup"),
            GroundTruth("freshness", {"platform": "tv"}, ONSET, detail="days_since_signup"),
        ),
        (
            Incident("source_outage", ONSET, 60_000, target={"region": "eu"}),
            GroundTruth("candidate_source", {"region": "eu"}, ONSET, None, ONSET + 60_000, "trending"),
        ),
        (
            Incident("source_outage", ONSET, target={"arm": "control"}, source="collab"),
            GroundTruth("candidate_source", {"arm": "control"}, ONSET, detail="collab"),
        ),
        (
            Incident("engagement_logging_break", ONSET, 60_000),
            GroundTruth("engagement_ratio", {}, ONSET, None, ONSET + 60_000),
        ),
        # Injected on a slice, still reported globally: engagement events carry no segment.
        (
            Incident("engagement_logging_break", ONSET, target={"region": "eu"}),
            GroundTruth("engagement_ratio", {}, ONSET),
        ),
    ],
)
def test_ground_truth_of_new_kinds_names_signal_key_and_detail(inc: Incident, expected: GroundTruth) -> None:
    assert inc.ground_truth == expected
    assert TrafficSimulator(1, START, 1.0, [inc]).ground_truth == [expected]


def test_existing_kinds_have_no_detail_and_keep_their_defaults() -> None:
    expected = {
        "latency_regression": ("latency", 4.0),
        "traffic_drop": ("volume", 1.0),
        "error_spike": ("error_rate", 0.2),
        "fallback_spike": ("fallback_rate", 0.3),
        "empty_slates": ("empty_slate_rate", 0.2),
        "stale_feature": ("freshness", 21_600.0),
        "source_outage": ("candidate_source", 1.0),
        "engagement_logging_break": ("engagement_ratio", 0.9),
    }
    # Kinds added later (ctr_drop_after_release, tests/unit/test_labels_sim.py) are checked where added.
    assert {
        k: (v.signal, v.default_magnitude) for k, v in INCIDENT_KINDS.items() if k in expected
    } == expected
    for kind in list(expected)[:5]:
        inc = parse_incident(kind, START)
        assert inc.target == {"region": "eu"} and inc.ground_truth.detail is None
        assert inc.feature is None and inc.source is None


def test_incident_validation() -> None:
    with pytest.raises(ValueError, match="unknown incident kind 'meltdown'"):
        Incident("meltdown", 0)
    with pytest.raises(ValueError, match="unknown stage 'gpu'"):
        Incident("latency_regression", 0, stage="gpu")
    with pytest.raises(ValueError, match="stage applies only to latency_regression"):
        Incident("error_spike", 0, stage="ranking")
    with pytest.raises(ValueError, match="unknown target dimension 'city'"):
        Incident("error_spike", 0, target={"city": "paris"})
    with pytest.raises(ValueError, match=r"magnitude 1\.5 out of range for traffic_drop"):
        Incident("traffic_drop", 0, magnitude=1.5)
    with pytest.raises(ValueError, match="duration_ms must be positive"):
        Incident("traffic_drop", 0, duration_ms=0)
    with pytest.raises(ValueError, match=r"feature applies only to stale_feature, .*not error_spike"):
        Incident("error_spike", 0, feature="watch_minutes_7d")
    with pytest.raises(ValueError, match="source applies only to source_outage, not stale_feature"):
        Incident("stale_feature", 0, source="trending")
    with pytest.raises(ValueError, match=r"unknown feature 'country'; expected one of \['watch_minutes_7d'"):
        Incident("stale_feature", 0, feature="country")
    with pytest.raises(ValueError, match="unknown source 'search'"):
        Incident("source_outage", 0, source="search")
    with pytest.raises(
        ValueError, match=r"magnitude 0\.0 out of range for stale_feature: expected \(0, 3\.1536e\+07\]"
    ):
        Incident("stale_feature", 0, magnitude=0)
    with pytest.raises(ValueError, match=r"out of range for engagement_logging_break: expected \(0, 1\]"):
        Incident("engagement_logging_break", 0, magnitude=1.2)
    target = {"region": "eu"}
    inc = Incident("error_spike", 0, target=target)
    target["region"] = "us"
    assert inc.target == {"region": "eu"}  # copied, so a running incident cannot be changed under it


# --- parse_incident ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("latency_regression", Incident("latency_regression", START + 900_000, target={"region": "eu"})),
        (
            "latency_regression:region=eu,stage=ranking,magnitude=4,onset=900",
            Incident("latency_regression", START + 900_000, None, 4.0, {"region": "eu"}, "ranking"),
        ),
        (
            " traffic_drop : platform=tv , tenure=new, magnitude=0.5, onset=0, duration=60.5 ",
            Incident("traffic_drop", START, 60_500, 0.5, {"platform": "tv", "tenure": "new"}),
        ),
        (
            "error_spike:arm=canary,onset=30",
            Incident("error_spike", START + 30_000, None, 0.2, {"arm": "canary"}),
        ),
        (
            "fallback_spike:magnitude=1",
            Incident("fallback_spike", START + 900_000, None, 1.0, {"region": "eu"}),
        ),
        (
            "empty_slates:model=home-ranker,surface=home",
            Incident("empty_slates", START + 900_000, target={"model": "home-ranker", "surface": "home"}),
        ),
        (
            "latency_regression:stage=features,region=apac",
            Incident("latency_regression", START + 900_000, target={"region": "apac"}, stage="features"),
        ),
        (
            "stale_feature",
            Incident(
                "stale_feature", START + 900_000, None, 21_600.0, {"region": "eu"}, None, "watch_minutes_7d"
            ),
        ),
        (
            "stale_feature:feature=days_since_signup,magnitude=3600,platform=ios,onset=60,duration=300",
            Incident(
                "stale_feature",
                START + 60_000,
                300_000,
                3600.0,
                {"platform": "ios"},
                feature="days_since_signup",
            ),
        ),
        (
            "source_outage",
            Incident("source_outage", START + 900_000, target={"region": "eu"}, source="trending"),
        ),
        (
            "source_outage:source=collab,magnitude=0.5,tenure=new",
            Incident("source_outage", START + 900_000, None, 0.5, {"tenure": "new"}, source="collab"),
        ),
        ("engagement_logging_break", Incident("engagement_logging_break", START + 900_000, None, 0.9, {})),
        (
            "engagement_logging_break:region=eu,magnitude=1,onset=0",
            Incident("engagement_logging_break", START, None, 1.0, {"region": "eu"}),
        ),
    ],
)
def test_parse_incident_accepts_good_specs(spec: str, expected: Incident) -> None:
    assert parse_incident(spec, START) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "unknown kind ''"),
        ("meltdown:region=eu", "unknown kind 'meltdown'"),
        ("latency_regression:", "nothing after ':'"),
        ("latency_regression:regioneu", "expected key=value, got 'regioneu'"),
        ("latency_regression:region=", "expected key=value, got 'region='"),
        ("latency_regression:region=eu,,onset=1", "expected key=value, got ''"),
        ("latency_regression:region=eu,region=us", "region given twice"),
        ("latency_regression:region=mars", "unknown region 'mars'"),
        ("latency_regression:platform=fridge", "unknown platform 'fridge'"),
        ("latency_regression:arm=beta", "unknown arm 'beta'"),
        ("latency_regression:stage=gpu", "unknown stage 'gpu'"),
        ("error_spike:stage=ranking", "stage applies only to latency_regression"),
        ("latency_regression:magnitude=x4", "magnitude='x4' is not a number"),
        ("latency_regression:magnitude=0", "magnitude 0.0 out of range for latency_regression"),
        ("latency_regression:magnitude=nan", "magnitude='nan' is not finite"),
        ("traffic_drop:magnitude=2", "magnitude 2.0 out of range for traffic_drop: expected (0, 1]"),
        ("error_spike:magnitude=-0.1", "out of range for error_spike: expected [0, 1]"),
        ("error_spike:onset=-5", "onset='-5' must be >= 0 seconds"),
        ("error_spike:onset=soon", "onset='soon' is not a number"),
        ("error_spike:duration=0", "duration='0' must be > 0 seconds"),
        ("error_spike:colour=red", "unknown key 'colour'"),
        ("error_spike:feature=watch_minutes_7d", "feature applies only to stale_feature"),
        ("engagement_logging_break:feature=watch_minutes_7d", "feature applies only to stale_feature"),
        ("stale_feature:source=trending", "source applies only to source_outage"),
        ("latency_regression:source=collab", "source applies only to source_outage"),
        ("stale_feature:stage=ranking", "stage applies only to latency_regression"),
        ("stale_feature:feature=country", "unknown feature 'country'; expected one of ['watch_minutes_7d'"),
        ("source_outage:source=search", "unknown source 'search'; expected one of ['collab', 'trending'"),
        ("stale_feature:feature=", "expected key=value, got 'feature='"),
        (
            "stale_feature:magnitude=0",
            "magnitude 0.0 out of range for stale_feature: expected (0, 3.1536e+07]",
        ),
        ("stale_feature:magnitude=-60", "out of range for stale_feature"),
        ("stale_feature:magnitude=4e7", "magnitude 40000000.0 out of range for stale_feature"),
        ("source_outage:magnitude=0", "out of range for source_outage: expected (0, 1]"),
        (
            "engagement_logging_break:magnitude=1.5",
            "out of range for engagement_logging_break: expected (0, 1]",
        ),
        ("source_outage:source=collab,source=trending", "source given twice"),
        ("error_spike:colour=red", "'feature', 'source', 'magnitude'"),
    ],
)
def test_parse_incident_rejects_bad_specs_precisely(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_incident(spec, START)
    assert message in str(info.value)
    assert repr(spec.strip()) in str(info.value) or spec.strip() == ""


# --- output -----------------------------------------------------------------------------------------


def test_to_jsonl_writes_the_stream(tmp_path: Path) -> None:
    path = tmp_path / "sim.jsonl"
    counts = TrafficSimulator(8, START, 30.0).to_jsonl(path, 20)
    lines = path.read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == [e for _, _, e in _run(seed=8, rate=30.0, duration_s=20)]
    assert counts["serving"] > 400 and sum(counts.values()) == len(lines)


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    simulate.add_parser(parser.add_subparsers())
    args = parser.parse_args(["simulate", *argv])
    assert args.func is simulate.run
    return int(args.func(args))


def test_simulate_out_writes_valid_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    rc = _cli(
        "--out", str(out), "--speed", "0", "--duration", "30", "--rate", "40", "--seed", "3",
        "--start-ms", str(START), "--incident", "error_spike:region=us,onset=10",
    )  # fmt: skip
    assert rc == 0
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert events == [e for _, _, e in _run(seed=3, rate=40.0, duration_s=30, incidents=[
        parse_incident("error_spike:region=us,onset=10", START)
    ])]  # fmt: skip
    kinds = Counter(e["type"] for e in events)
    err = capsys.readouterr().err
    assert "ground truth: error_spike: signal=error_rate key={region=us}" in err
    assert f"serving={kinds['serving']} engagement={kinds['engagement']} deployment=1" in err


def test_simulate_reports_global_ground_truth_for_a_logging_break(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.jsonl"
    rc = _cli(
        "--out", str(out), "--speed", "0", "--duration", "20", "--rate", "20", "--seed", "3",
        "--start-ms", str(START), "--incident", "engagement_logging_break:onset=5",
        "--incident", "stale_feature:feature=days_since_signup,region=us,onset=5",
    )  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    assert "ground truth: engagement_logging_break: signal=engagement_ratio key={global} magnitude=0.9" in err
    assert "stale_feature: signal=freshness key={region=us} feature=days_since_signup magnitude=21600" in err


def test_simulate_count_and_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    assert _cli("--out", str(out), "--speed", "0", "--count", "25") == 0
    kinds = Counter(orjson.loads(line)["type"] for line in out.read_bytes().splitlines())
    assert kinds["serving"] == 25
    assert (
        _cli("--out", str(out), "--speed", "0", "--count", "5", "--incident", "error_spike:region=mars") == 2
    )
    assert "unknown region 'mars'" in capsys.readouterr().err
    assert _cli("--out", str(out), "--speed", "0") == 2
    assert "needs --duration or --count" in capsys.readouterr().err


def test_simulate_paces_event_time_against_the_wall_clock(tmp_path: Path) -> None:
    import time

    t0 = time.monotonic()
    assert _cli("--out", str(tmp_path / "o.jsonl"), "--speed", "10", "--duration", "3", "--rate", "20") == 0
    assert 0.25 < time.monotonic() - t0 < 2.0


# --- purity -----------------------------------------------------------------------------------------


def test_sim_package_imports_only_stdlib_and_numpy() -> None:
    allowed = set(sys.stdlib_module_names) | {"numpy", "stream_monitor"}
    for path in SIM_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            # orjson is imported lazily inside to_jsonl (a project dependency used only for writing files).
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top == "orjson", f"{path.name} imports {name}"
                if top == "stream_monitor":
                    assert name.startswith("stream_monitor.sim"), f"{path.name} imports {name}"
