"""Canary analysis statistics, classification, verdicts and state (core/canary.py).

The rank statistics are checked against scipy on binned data; the confidence sequences by simulation
under the null over many looks (seeded, with a binomial bound on the false-rejection rate).
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from jsonschema import Draft202012Validator
from scipy import stats

from stream_monitor.core.alerts import DetectorState, StateFormatError
from stream_monitor.core.canary import CanaryAnalyzer, CanaryStateError, MetricResult, score_verdict
from stream_monitor.core.stats.ranks import hodges_lehmann, mann_whitney
from stream_monitor.core.stats.sequential import diff_cs, mixture_halfwidth, ratio_cs
from stream_monitor.core.topology import CanaryRule, Topology
from stream_monitor.core.windows import WindowSpec
from stream_monitor.topology import TopologyError, load_topology, parse_topology

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "schemas" / "health.schema.json").read_text(encoding="utf-8"))


def _hist(values: np.ndarray) -> dict[float, float]:
    uniq, counts = np.unique(values, return_counts=True)
    return {float(v): float(c) for v, c in zip(uniq, counts, strict=True)}


# --- Mann-Whitney and Hodges-Lehmann against scipy / brute force ------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_mann_whitney_on_binned_data_matches_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Binned: few distinct values, so nearly every observation is tied with others.
    a = np.round(rng.lognormal(3.0 + 0.05 * seed, 0.4, size=300 + 50 * seed) / 5) * 5
    b = np.round(rng.lognormal(3.0, 0.4, size=400) / 5) * 5
    mw = mann_whitney(_hist(a), _hist(b))
    ref = stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic", use_continuity=True)
    assert mw.u == pytest.approx(float(ref.statistic), rel=1e-12)
    assert mw.p_value == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-15)


def test_mann_whitney_of_an_empty_sample_is_neutral() -> None:
    mw = mann_whitney({}, {1.0: 5})
    assert (mw.p_value, mw.theta) == (1.0, 0.5)


@pytest.mark.parametrize("seed", range(4))
def test_hodges_lehmann_matches_the_brute_force_median_of_pair_differences(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 40, size=120).astype(float)
    b = rng.integers(3, 45, size=90).astype(float)
    diffs = np.sort((a[:, None] - b[None, :]).ravel())
    mw = mann_whitney(_hist(a), _hist(b))
    shift, lo, hi = hodges_lehmann(_hist(a), _hist(b), 1.96, mw.var_u)
    assert shift == float(np.median(diffs)) or shift in (diffs[len(diffs) // 2 - 1], diffs[len(diffs) // 2])
    k = math.floor(len(diffs) / 2 - 1.96 * math.sqrt(mw.var_u))
    assert (lo, hi) == (diffs[k - 1], diffs[len(diffs) - k])


def test_hodges_lehmann_interval_covers_the_true_shift() -> None:
    """95 % Moses interval of a shift of 3 on integer data: coverage near 95 % over 300 seeded samples."""
    covered = 0
    runs = 300
    for seed in range(runs):
        rng = np.random.default_rng([seed, 5])
        b = rng.integers(0, 60, size=80).astype(float)
        a = rng.integers(0, 60, size=70).astype(float) + 3.0
        mw = mann_whitney(_hist(a), _hist(b))
        _, lo, hi = hodges_lehmann(_hist(a), _hist(b), 1.96, mw.var_u)
        covered += lo <= 3.0 <= hi
    # Binomial(300, 0.95): mean 285, sd 3.8; discreteness makes the interval a bit conservative.
    assert 272 <= covered <= runs


# --- confidence sequences -------------------------------------------------------------------------


def test_mixture_boundary_is_wider_than_a_fixed_sample_interval_and_shrinks() -> None:
    widths = [mixture_halfwidth(v, 0.03, 0.05) for v in (1e-3, 1e-4, 1e-5, 1e-6)]
    assert widths == sorted(widths, reverse=True)
    assert all(w > 1.96 * math.sqrt(v) for w, v in zip(widths, (1e-3, 1e-4, 1e-5, 1e-6), strict=True))
    assert mixture_halfwidth(0.0, 0.03, 0.05) == 0.0
    assert mixture_halfwidth(-1.0, 0.03, 0.05) == math.inf


def test_ratio_cs_false_rejections_over_many_looks_stay_below_alpha() -> None:
    """A/A proportions looked at after every batch: the share of runs whose CS ever excludes 0 is <= alpha."""
    alpha, runs, looks, batch, p = 0.05, 400, 60, 2_000, 0.03
    rng = np.random.default_rng(2026)
    ever = 0
    for _ in range(runs):
        hits_c = np.cumsum(rng.binomial(batch, p, size=looks))
        hits_b = np.cumsum(rng.binomial(batch, p, size=looks))
        n = batch * np.arange(1, looks + 1)
        for k in range(looks):
            _, lo, hi = ratio_cs(float(hits_c[k]), float(n[k]), float(hits_b[k]), float(n[k]), 0.03, alpha)
            if lo > 0 or hi < 0:
                ever += 1
                break
    # alpha + 3 binomial standard deviations; a fixed-sample 95 % test looked at 60 times would
    # reject in roughly a quarter of the runs.
    assert ever <= alpha * runs + 3 * math.sqrt(runs * alpha * (1 - alpha))


def test_ratio_cs_detects_a_three_percent_drop() -> None:
    est, lo, hi = ratio_cs(0.97 * 0.03 * 2e6, 2e6, 0.03 * 2e6, 2e6, 0.03, 0.05 / 15)
    assert est == pytest.approx(-0.03)
    assert lo < est < hi < 0


def test_diff_cs_handles_zero_counts() -> None:
    est, lo, hi = diff_cs(0, 1000, 0, 1000, 0.005, 0.05)
    assert est == 0.0 and lo < 0 < hi


# --- classification, score and verdict tables ----------------------------------------------------


def _m(
    name: str,
    cls: str,
    critical: bool = True,
    direction: str = "decrease",
    group: str = "engagement",
    ni: bool = True,
) -> MetricResult:
    return MetricResult(
        name, group, critical, direction, cls, 0.0, 0.0, 0.0, "relative", 10, 10, non_inferior=ni
    )


@pytest.mark.parametrize(
    ("cls", "direction", "bad"),
    [
        ("LOW", "decrease", True),
        ("HIGH", "decrease", False),
        ("HIGH", "increase", True),
        ("LOW", "increase", False),
        ("HIGH", "either", True),
        ("LOW", "either", True),
        ("PASS", "either", False),
        ("NODATA", "decrease", False),
    ],
)
def test_which_classifications_are_bad(cls: str, direction: str, bad: bool) -> None:
    assert _m("x", cls, direction=direction).bad is bad


@pytest.mark.parametrize(
    ("metrics", "enough", "verdict"),
    [
        ([_m("ctr", "PASS")], True, "PASS"),
        ([_m("ctr", "PASS")], False, "INCONCLUSIVE"),
        ([_m("ctr", "PASS", ni=False)], True, "INCONCLUSIVE"),
        ([_m("ctr", "LOW")], True, "FAIL"),
        ([_m("ctr", "LOW")], False, "FAIL"),  # a confident regression needs no minimum duration
        ([_m("ctr", "HIGH")], True, "PASS"),  # better is not a failure
        ([_m("ctr", "PASS"), _m("s", "HIGH", False, "either", "scores")], True, "MARGINAL"),
        (
            [
                _m("ctr", "PASS", group="a"),
                _m("x", "LOW", False, group="b"),
                _m("y", "LOW", False, group="c"),
            ],
            True,
            "FAIL",  # score 33 < fail_score 50
        ),
        ([_m("ctr", "NODATA", ni=False)], True, "INCONCLUSIVE"),
    ],
)
def test_verdict_table(metrics: list[MetricResult], enough: bool, verdict: str) -> None:
    _score, got, reason = score_verdict(metrics, CanaryRule(), enough)
    assert got == verdict
    assert reason.endswith(".") and "\n" not in reason


def test_score_weights_groups() -> None:
    rule = CanaryRule(weights=(("engagement", 3.0), ("latency", 1.0)))
    metrics = [_m("ctr", "PASS"), _m("lat", "HIGH", False, "increase", "latency")]
    assert score_verdict(metrics, rule, True)[0] == pytest.approx(75.0)


# --- the analyzer on synthetic window sums -------------------------------------------------------

DEPS = {
    "m": {
        "canary": {"ts": 0, "model_version": "v2", "traffic": 0.5, "lineage": {"code_commit": "abc"}},
        "control": {"ts": 0, "model_version": "v1", "traffic": 0.5, "lineage": {"code_commit": "def"}},
    }
}


def _topology(**canary: Any) -> Topology:
    return parse_topology(
        {
            "name": "t",
            "segment_dims": ["region"],
            "canary": {"min_windows": 2, "min_impressions": 1000, **canary},
            "signals": {"latency": {"sla_ms": {"total": {"p99": 300}}}},
        }
    )


def _window(rng: np.random.Generator, ctr_c: float = 0.03, lat_c: float = 1.0) -> tuple[dict, dict]:
    fields: dict[str, float] = {}
    labels: dict[str, float] = {}
    for arm, version, ctr, lat in (("canary", "v2", ctr_c, lat_c), ("control", "v1", 0.03, 1.0)):
        for region in ("eu", "us"):
            s = f"m|{version}|{arm}|home|{region}"
            n = 5_000
            fields[f"{s}#n"] = n
            fields[f"{s}#err"] = float(rng.binomial(n, 0.002))
            buckets = np.ceil(np.log(rng.lognormal(math.log(80 * lat), 0.3, size=n)) / math.log(1.02 / 0.98))
            for b, c in _hist(buckets).items():
                fields[f"{s}#lat.total.{int(b)}"] = c
            imp = 3 * n
            labels[f"{s}#imp"] = imp
            labels[f"{s}#click"] = float(rng.binomial(imp, ctr))
            labels[f"{s}#play"] = float(rng.binomial(imp, 0.01))
    return fields, labels


def _run(az: CanaryAnalyzer, state: dict, windows: int, **kw: float) -> list:
    rng = np.random.default_rng(7)
    out = []
    for w in range(windows):
        fields, labels = _window(rng, **kw)
        out += az.update(state, DEPS, fields, labels, (w * 60_000, (w + 1) * 60_000), (w + 1) * 60_000)
    return out


def test_analyzer_promotes_a_healthy_canary_and_the_verdict_validates() -> None:
    az = CanaryAnalyzer(_topology(margin=0.1))
    state: dict[str, Any] = {}
    verdicts = _run(az, state, 12)
    assert [v.decision for v in verdicts][:1] == ["HOLD"]  # min_windows first
    assert verdicts[-1].decision == "PROMOTE"
    assert "ROLLBACK" not in {v.decision for v in verdicts}
    doc = verdicts[-1].to_json_dict()
    assert list(Draft202012Validator(SCHEMA).iter_errors(doc)) == []
    assert doc["candidate"] == {"version": "v2", "arm": "canary", "lineage": {"code_commit": "abc"}}
    assert doc["baseline"]["version"] == "v1" and doc["deployment"] == "v2@0"
    assert doc["window"] == {"start": 0, "end": 12 * 60_000}
    assert doc["valid_until"] == doc["emitted_at"] + 180_000
    assert verdicts[-1].key == "m/v2@0"
    # The state is plain JSON and survives a round trip through the detector checkpoint.
    restored = DetectorState.from_json_dict(
        orjson.loads(orjson.dumps(DetectorState(canary=state).to_json_dict()))
    )
    assert restored.canary == json.loads(json.dumps(state))


def test_analyzer_rolls_back_a_slower_canary_naming_the_metric() -> None:
    az = CanaryAnalyzer(_topology())
    verdicts = _run(az, {}, 1, lat_c=1.3)
    v = verdicts[0]
    assert v.decision == "ROLLBACK"
    lat = next(m for m in v.metrics if m.name == "latency.total")
    assert lat.classification == "HIGH" and lat.lower is not None and lat.lower > 0.2
    assert v.suspects[0].name == "latency.total"
    assert list(Draft202012Validator(SCHEMA).iter_errors(v.to_json_dict())) == []


def test_analyzer_rolls_back_a_ctr_drop_and_stays_rolled_back() -> None:
    az = CanaryAnalyzer(_topology())
    state: dict[str, Any] = {}
    verdicts = _run(az, state, 20, ctr_c=0.027)
    decisions = [v.decision for v in verdicts]
    first = decisions.index("ROLLBACK")
    assert set(decisions[first:]) == {"ROLLBACK"}
    assert state["models"]["m"]["decided"]["windows"] == first + 1
    ctr = next(m for m in verdicts[first].metrics if m.name == "ctr")
    assert ctr.classification == "LOW" and ctr.upper is not None and ctr.upper < 0


def test_a_new_deployment_resets_the_analysis() -> None:
    az = CanaryAnalyzer(_topology())
    state: dict[str, Any] = {}
    _run(az, state, 3)
    deps = copy.deepcopy(DEPS)
    deps["m"]["canary"]["ts"] = 5 * 60_000
    [v] = az.update(state, deps, {}, {}, (5 * 60_000, 6 * 60_000), 6 * 60_000)
    assert v.deployment == "v2@300000" and state["models"]["m"]["windows"] == 1
    assert state["models"]["m"]["arms"]["canary"]["c"] == {}
    # The canary ends (traffic 0): its analysis is forgotten and nothing is emitted.
    deps["m"]["canary"]["traffic"] = 0.0
    assert az.update(state, deps, {}, {}, (6 * 60_000, 7 * 60_000), 7 * 60_000) == []
    assert state["models"] == {}


def test_only_the_deployed_versions_series_count() -> None:
    az = CanaryAnalyzer(_topology())
    state: dict[str, Any] = {}
    az.update(
        state, DEPS, {"m|old|canary|home|eu#n": 50, "m|v2|canary|home|eu#n": 7}, {}, (0, 60_000), 60_000
    )
    assert state["models"]["m"]["arms"]["canary"]["c"] == {"n": 7}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(version=2), "canary state version 2 is not 1"),
        (lambda d: d.update(models=[]), "canary state models must be a JSON object"),
        (lambda d: d["models"]["m"].update(windows="3"), "models.m.windows must be an integer"),
        (
            lambda d: d["models"]["m"]["arms"]["canary"]["c"].update(n="x"),
            "arms.canary.c values must be numbers",
        ),
        (lambda d: d["models"]["m"]["arms"].pop("control"), "arms.control must be a JSON object"),
        (
            lambda d: d["models"]["m"]["arms"]["canary"]["h"].update({"lat.total": {"3": [1]}}),
            "arms.canary.h.lat.total must map to numbers",
        ),
    ],
)
def test_corrupt_canary_states_are_rejected_precisely(mutate: Any, message: str) -> None:
    az = CanaryAnalyzer(_topology())
    state: dict[str, Any] = {}
    _run(az, state, 1)
    doc = json.loads(json.dumps(state))
    mutate(doc)
    with pytest.raises(CanaryStateError, match=re.escape(message)):
        CanaryAnalyzer.check_state(doc)
    checkpoint = {**DetectorState().to_json_dict(), "canary": doc}
    with pytest.raises(StateFormatError, match=re.escape(message)):
        DetectorState.from_json_dict(checkpoint)


def test_version_3_checkpoints_still_load() -> None:
    doc = DetectorState().to_json_dict()
    doc["version"] = 3
    del doc["canary"]
    assert DetectorState.from_json_dict(doc).canary == {}


# --- config ---------------------------------------------------------------------------------------


def test_default_topology_has_the_canary_section() -> None:
    rule = load_topology().canary
    assert rule == CanaryRule(min_impressions=5000, min_requests=1000)  # the YAML restates the defaults


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"alpha": 1.5}, "canary.alpha must be in"),
        ({"bogus": 1}, "canary: unknown keys"),
        ({"weights": {"engagement": "x"}}, "canary.weights"),
        ({"valid_for": "soon"}, "canary.valid_for"),
        ({"pass_score": 40, "fail_score": 60}, "fail_score <= pass_score"),
    ],
)
def test_bad_canary_config_is_rejected(section: dict[str, Any], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        parse_topology({"name": "x", "canary": section})


def test_analyzer_metric_list_follows_the_topology() -> None:
    az = CanaryAnalyzer(Topology("t", WindowSpec(60_000)))
    assert az.metric_names[:3] == ["ctr", "play_rate", "latency.total"]
    assert az.alpha == pytest.approx(0.05 / len(az.metric_names))
    assert az.is_critical("feature_invalid.country") and not az.is_critical("latency.ranking")


def test_health_schema_is_valid_draft_2020_12_and_allows_extra_fields() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(SCHEMA)
    example = json.loads(
        _DOC_EXAMPLE.search((ROOT / "docs" / "canary.md").read_text(encoding="utf-8")).group(1)
    )
    validator = Draft202012Validator(SCHEMA)
    assert list(validator.iter_errors(example)) == []
    assert list(validator.iter_errors({**example, "x_new": 1})) == []
    assert list(validator.iter_errors({**example, "decision": "PROMOTE"}))  # FAIL must map to ROLLBACK


_DOC_EXAMPLE = re.compile(r"<!-- schema: health -->\s*```json\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_rank_metrics_with_every_value_tied_do_not_crash() -> None:
    """A constant latency or a collapsed score (one bin on both arms) has no rank variance."""
    shift, lo, hi = hodges_lehmann({5.0: 300}, {5.0: 400}, 3.0, 0.0)
    assert (shift, lo, hi) == (0.0, 0.0, 0.0)
    az = CanaryAnalyzer(_topology())
    state: dict[str, Any] = {}
    fields = {"m|v2|canary|home|eu#n": 500, "m|v1|control|home|eu#n": 500}
    fields |= {"m|v2|canary|home|eu#lat.total.100": 500, "m|v1|control|home|eu#lat.total.100": 500}
    [v] = az.update(state, DEPS, fields, {}, (0, 60_000), 60_000)
    lat = next(m for m in v.metrics if m.name == "latency.total")
    assert lat.classification == "PASS" and lat.estimate == 0.0
