"""Canary analysis: the canary arm of a model against its control arm, judged continuously.

Every closed window adds the window's sums (and the label sums that matured in it) of both arms to a
cumulative, JSON-safe state; then every metric is classified and the whole scored into a
:class:`Verdict` (PASS / MARGINAL / FAIL / INCONCLUSIVE -> PROMOTE / HOLD / ROLLBACK). See docs/canary.md.

The statistics, and why looking at every window does not inflate false rollbacks:

* Each comparison is a *confidence sequence* (CS): the normal-mixture boundary of Robbins, which is the
  mSPRT of Johari et al. (2017) inverted and the asymptotic CS of Waudby-Smith et al. (2023) in
  "intrinsic time" ``V`` (the variance of the estimate). With mixing variance ``tau**2`` the set
  ``estimate +/- sqrt(2 V (V + tau^2) / tau^2 * log(sqrt((V + tau^2) / V) / alpha))`` covers the truth at
  every look simultaneously with probability ``>= 1 - alpha`` (asymptotically). ``tau`` is the effect size
  at which the sequence is tightest (``canary.mixture_scale``).
* ``alpha`` is split evenly over the metrics (Bonferroni), so an A/A canary has at most ``alpha`` chance
  that *any* metric is ever classified bad, and so of ever being rolled back.
* Engagement (CTR, play rate): the CS of ``log(p_canary / p_control)`` (delta method), reported as a
  relative difference. Bad (ROLLBACK) when the whole CS is below 0 (canary confidently worse); good enough
  for PROMOTE when the CS is above ``-margin`` (confidently non-inferior).
* Latency and score distributions: Mann-Whitney U from the binned histograms (exact for binned data,
  ties corrected), as the probability of superiority ``theta = P(canary > control) + P(=)/2`` with the same
  mixture CS on ``theta`` (its Hajek projection is a sum of independent terms); the Hodges-Lehmann shift
  and its interval (by inverting the rank test at the CS's effective z) give the effect. Bad when the CS
  excludes 1/2 *and* the shift passes an effect-size floor (+10 % latency, |theta - 1/2| >= 0.05 scores).
* Guardrails: error, fallback and empty-slate rates and each declared feature's null/invalid/default
  rate, as the CS of the absolute difference with Agresti-Caffo smoothing (rare events), bad beyond a
  floor; feature freshness: the canary's age quantile against the SLA (only when control meets it).

Pure: standard library only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Final, cast

from stream_monitor.core.fields import split_field, split_series
from stream_monitor.core.profile import LinearBins
from stream_monitor.core.sketch import ZERO_BUCKET, LogBuckets
from stream_monitor.core.stats.ranks import MannWhitney, hodges_lehmann, mann_whitney, quantile_bounds
from stream_monitor.core.stats.sequential import diff_cs, mixture_halfwidth, ratio_cs
from stream_monitor.core.topology import CanaryRule, Topology

__all__ = [
    "CLASSIFICATIONS",
    "DECISIONS",
    "SCHEMA",
    "VERDICTS",
    "CanaryAnalyzer",
    "CanaryStateError",
    "MetricResult",
    "Suspect",
    "Verdict",
    "decoded_deployments",
    "score_verdict",
]

SCHEMA: Final = "stream-monitor.health/v1"
CLASSIFICATIONS: Final = ("PASS", "HIGH", "LOW", "NODATA")
VERDICTS: Final = ("PASS", "MARGINAL", "FAIL", "INCONCLUSIVE")
DECISIONS: Final = {"PASS": "PROMOTE", "MARGINAL": "HOLD", "FAIL": "ROLLBACK", "INCONCLUSIVE": "HOLD"}
STATE_VERSION: Final = 1
CANDIDATE, BASELINE = "canary", "control"
_N = NormalDist()


class CanaryStateError(ValueError):
    """A canary state document that this version cannot load."""


# -- results --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class MetricResult:
    """One metric of a canary verdict.

    ``direction`` says which way is bad (``increase``, ``decrease`` or ``either``); ``classification``
    is HIGH / LOW when the canary is confidently above / below the control (beyond the effect floor),
    PASS when not, NODATA before the minimum data. ``estimate`` / ``lower`` / ``upper`` are in ``unit``;
    ``non_inferior`` tells whether the interval rules out a regression beyond ``margin``.

    >>> m = MetricResult("ctr", "engagement", True, "decrease", "LOW", -0.05, -0.08, -0.02, "relative")
    >>> m.bad, m.non_inferior
    (True, False)
    """

    name: str
    group: str
    critical: bool
    direction: str
    classification: str
    estimate: float | None = None
    lower: float | None = None
    upper: float | None = None
    unit: str = ""
    n_candidate: float = 0
    n_baseline: float = 0
    detail: str = ""
    margin: float | None = None
    non_inferior: bool = False

    @property
    def bad(self) -> bool:
        c, d = self.classification, self.direction
        return (c == "HIGH" and d in ("increase", "either")) or (c == "LOW" and d in ("decrease", "either"))

    def to_json_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        for name in ("estimate", "lower", "upper", "margin"):
            value = doc[name]
            if value is not None and not math.isfinite(value):
                doc[name] = None
        return doc


@dataclass(frozen=True, slots=True)
class Suspect:
    """What most likely explains a regression: a segment, a feature, a stage or the metric itself."""

    kind: str
    name: str
    evidence: str


@dataclass(slots=True)
class Verdict:
    """One canary verdict (the ``stream-monitor.health/v1`` document; docs/schemas/health.schema.json).

    >>> v = Verdict("home-ranker", "v2@1000", {"version": "v2", "arm": "canary", "lineage": {}},
    ...             {"version": "v1", "arm": "control", "lineage": {}}, 1000, 61_000, 61_000, [], 0.0,
    ...             "INCONCLUSIVE", "no data yet", [], 241_000)
    >>> v.key, v.decision, sorted(v.to_json_dict())[:3]
    ('home-ranker/v2@1000', 'HOLD', ['baseline', 'candidate', 'decision'])
    """

    model: str
    deployment: str
    candidate: dict[str, Any]
    baseline: dict[str, Any]
    window_start: int
    window_end: int
    emitted_at: int
    metrics: list[MetricResult]
    score: float
    verdict: str
    reason: str
    suspects: list[Suspect]
    valid_until: int
    kind: str = "canary"

    @property
    def decision(self) -> str:
        return DECISIONS[self.verdict]

    @property
    def key(self) -> str:
        return f"{self.model}/{self.deployment}"

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "model": self.model,
            "deployment": self.deployment,
            "kind": self.kind,
            "candidate": self.candidate,
            "baseline": self.baseline,
            "window": {"start": self.window_start, "end": self.window_end},
            "emitted_at": self.emitted_at,
            "metrics": [m.to_json_dict() for m in self.metrics],
            "score": round(self.score, 2),
            "verdict": self.verdict,
            "decision": self.decision,
            "reason": self.reason,
            "suspects": [asdict(s) for s in self.suspects],
            "valid_until": self.valid_until,
        }


def score_verdict(metrics: Sequence[MetricResult], rule: CanaryRule, enough: bool) -> tuple[float, str, str]:
    """(score 0..100, verdict, one-sentence reason) of classified metrics.

    Score: per group the share of classified metrics that are not bad, averaged with the group weights
    (NODATA left out). FAIL: a critical metric is bad or the score is below ``fail_score``; MARGINAL:
    below ``pass_score``; INCONCLUSIVE: not ``enough`` (duration, impressions) or a critical metric not yet
    confidently non-inferior; else PASS.

    >>> from stream_monitor.core.topology import CanaryRule
    >>> ok = MetricResult("ctr", "engagement", True, "decrease", "PASS", non_inferior=True)
    >>> low = MetricResult("ctr", "engagement", True, "decrease", "LOW")
    >>> score_verdict([ok], CanaryRule(), True)[:2], score_verdict([low], CanaryRule(), True)[:2]
    ((100.0, 'PASS'), (0.0, 'FAIL'))
    >>> score_verdict([ok], CanaryRule(), False)[1]
    'INCONCLUSIVE'
    """
    weights = dict(rule.weights)
    groups: dict[str, list[MetricResult]] = {}
    for m in metrics:
        if m.classification != "NODATA":
            groups.setdefault(m.group, []).append(m)
    total_w = sum(weights.get(g, 1.0) for g in groups)
    score = (
        100.0
        * sum(weights.get(g, 1.0) * sum(not m.bad for m in ms) / len(ms) for g, ms in groups.items())
        / total_w
        if total_w > 0
        else 0.0
    )
    critical_bad = [m for m in metrics if m.critical and m.bad]
    if critical_bad:
        names = ", ".join(f"{m.name} {_effect(m)}" for m in critical_bad)
        return score, "FAIL", f"Critical metrics regressed on the canary: {names}."
    if groups and score < rule.fail_score:
        return score, "FAIL", f"The canary scores {score:.0f}, below the fail score {rule.fail_score:.0f}."
    if groups and score < rule.pass_score:
        names = ", ".join(m.name for m in metrics if m.bad)
        return score, "MARGINAL", f"Non-critical metrics regressed ({names}); score {score:.0f}."
    if not enough:
        return (
            score,
            "INCONCLUSIVE",
            "Not enough canary data yet (minimum windows or impressions not reached).",
        )
    # A critical metric never observed on either arm (e.g. a feature no request carries) cannot block.
    pending = [
        m.name
        for m in metrics
        if m.critical and not m.non_inferior and (m.n_candidate > 0 or m.n_baseline > 0)
    ]
    if pending:
        return (
            score,
            "INCONCLUSIVE",
            f"No regression seen, but not yet shown non-inferior: {', '.join(pending)}.",
        )
    return score, "PASS", f"All critical metrics are confidently non-inferior; score {score:.0f}."


def _effect(m: MetricResult) -> str:
    if m.estimate is None:
        return m.classification
    if m.unit == "relative":
        return f"{m.estimate:+.1%} [{m.lower:+.1%}, {m.upper:+.1%}]"
    if m.unit == "ratio":
        return f"{m.estimate * 100:+.2f} pt"
    return f"{m.estimate:.3g} {m.unit}"


# -- the analyzer ---------------------------------------------------------------------------------------

# Per-arm cumulative counters taken from the serving window fields and the label fields.
_SERVING_COUNTERS: Final = ("n", "err", "fb", "empty", "prof")
_LABEL_COUNTERS: Final = ("imp", "click", "play", "req")
_RATE_METRICS: Final = (("error_rate", "err"), ("fallback_rate", "fb"), ("empty_slate_rate", "empty"))
_ENGAGEMENT: Final = (("ctr", "click"), ("play_rate", "play"))
_MAX_SLICES: Final = 256


class CanaryAnalyzer:
    """Cumulative canary-vs-control analysis per model, one update per closed window.

    Its state is a plain JSON document (kept in the engine's detector checkpoint): per model the
    deployment being judged, both arms' cumulative counters, histograms and per-segment counters, and a
    sticky ROLLBACK once decided. A new canary deployment (other version or deploy time) starts afresh.

    >>> from stream_monitor.core.windows import WindowSpec
    >>> from stream_monitor.core.topology import Topology
    >>> az = CanaryAnalyzer(Topology("t", WindowSpec(60_000)))
    >>> deps = {"m": {"canary": {"ts": 0, "model_version": "v2", "traffic": 0.1, "lineage": {}},
    ...               "control": {"ts": 0, "model_version": "v1", "traffic": 0.9, "lineage": {}}}}
    >>> state: dict = {}
    >>> [v] = az.update(state, deps, {"m|v2|canary|home#n": 100, "m|v1|control|home#n": 900}, {},
    ...                 (0, 60_000), now_ms=60_000)
    >>> v.deployment, v.verdict, v.decision, state["models"]["m"]["windows"]
    ('v2@0', 'INCONCLUSIVE', 'HOLD', 1)
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.rule = topology.canary
        self.dims = topology.key_dims
        self.segment_dims = topology.segment_dims
        self.stages = topology.latency.stages
        self.features = tuple(s.name for s in topology.features.features)
        self.freshness = {f: max(q.items()) for f, q in topology.freshness.slas_s.items() if q}
        self.buckets = LogBuckets(topology.relative_accuracy)
        lo, hi = topology.ranking.score_range
        self.score_bins = LinearBins(lo, hi, topology.ranking.score_bins)
        self._zero = math.ceil(math.log(self.buckets.min_value) / math.log(self.buckets.gamma))
        self.metric_names = self._metric_names()
        # Bonferroni: every metric that can be classified bad shares alpha.
        self.alpha = self.rule.alpha / max(1, len(self.metric_names))

    def _metric_names(self) -> list[str]:
        names = [m for m, _ in _ENGAGEMENT]
        names += [f"latency.{s}" for s in self.stages]
        if self.topology.ranking.enabled:
            names.append("score")
        names += [m for m, _ in _RATE_METRICS]
        names += [f"feature_invalid.{f}" for f in self.features]
        names += [f"freshness.{f}" for f in self.freshness]
        return names

    def is_critical(self, name: str) -> bool:
        return any(name == c or name.startswith(c + ".") for c in self.rule.critical)

    # -- state ------------------------------------------------------------------------------------------

    @staticmethod
    def check_state(doc: object) -> dict[str, Any]:
        """Validate a stored canary state; raises :class:`CanaryStateError` naming what is wrong.

        >>> CanaryAnalyzer.check_state({"version": 1, "models": {"m": {"deployment": 3}}})
        Traceback (most recent call last):
        ...
        stream_monitor.core.canary.CanaryStateError: canary state models.m.deployment must be a string
        """
        for where, entry in rollout_entries(doc, "canary", STATE_VERSION, CanaryStateError, ("arms",)):
            for arm in (CANDIDATE, BASELINE):
                acc = entry["arms"].get(arm)
                if not isinstance(acc, dict):
                    raise CanaryStateError(f"{where}.arms.{arm} must be a JSON object")
                for part in ("c", "h", "s"):
                    if not isinstance(acc.get(part), dict):
                        raise CanaryStateError(f"{where}.arms.{arm}.{part} must be a JSON object")
                if not all(_is_num(v) for v in acc["c"].values()):
                    raise CanaryStateError(f"{where}.arms.{arm}.c values must be numbers")
                for inner in ("h", "s"):
                    for name, sub in acc[inner].items():
                        if not isinstance(sub, dict) or not all(_is_num(v) for v in sub.values()):
                            raise CanaryStateError(f"{where}.arms.{arm}.{inner}.{name} must map to numbers")
        return cast(dict[str, Any], doc)

    # -- update ----------------------------------------------------------------------------------------

    def update(
        self,
        state: dict[str, Any],
        deployments: Mapping[str, Mapping[str, Mapping[str, Any]]],
        fields: Mapping[str, float],
        label_fields: Mapping[str, float],
        window: tuple[int, int],
        now_ms: int,
    ) -> list[Verdict]:
        """Add one closed window to ``state`` (in place) and return a verdict per model in canary.

        ``deployments`` is the latest deployment record per model and arm (decoded JSON, as the engine
        stores them); ``fields`` the window's sums, ``label_fields`` the label sums that matured in it.
        """
        if not self.rule.enabled:
            return []
        state.setdefault("version", STATE_VERSION)
        models: dict[str, Any] = state.setdefault("models", {})
        start, end = window
        active: dict[str, tuple[Mapping[str, Any], Mapping[str, Any] | None]] = {}
        for model, arms in deployments.items():
            cand = arms.get(CANDIDATE)
            if cand is None or not _is_num(cand.get("traffic")) or not cand["traffic"] > 0:
                continue
            if not isinstance(cand.get("ts"), int) or end <= cand["ts"]:
                continue
            active[model] = (cand, arms.get(BASELINE))
        for model in list(models):
            if model not in active:
                del models[model]  # the canary ended (promoted or rolled back): forget it
        if not active:
            return []
        by_model = self._split(fields, label_fields, active)
        verdicts: list[Verdict] = []
        for model, (cand, base) in sorted(active.items()):
            deployment = f"{cand.get('model_version')}@{cand['ts']}"
            entry = models.get(model)
            if entry is None or entry.get("deployment") != deployment:
                entry = models[model] = self._new_entry(deployment, cand, base)
            entry["windows"] += 1
            for arm, parts in by_model.get(model, {}).items():
                _merge_arm(entry["arms"][arm], parts)
            verdicts.append(self._verdict(model, entry, start, end, now_ms))
        return verdicts

    def _new_entry(
        self, deployment: str, cand: Mapping[str, Any], base: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        base_version = (base or {}).get("model_version") or cand.get("baseline_version")
        return {
            "deployment": deployment,
            "start": int(cand["ts"]),
            "windows": 0,
            "candidate": {
                "version": str(cand.get("model_version")),
                "arm": CANDIDATE,
                "lineage": dict(cand.get("lineage") or {}),
            },
            "baseline": {
                "version": str(base_version),
                "arm": BASELINE,
                "lineage": dict((base or {}).get("lineage") or {}),
            },
            "arms": {arm: {"c": {}, "h": {}, "s": {}} for arm in (CANDIDATE, BASELINE)},
            "decided": None,
        }

    def _split(
        self,
        fields: Mapping[str, float],
        label_fields: Mapping[str, float],
        active: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any] | None]],
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """This window's sums per model and arm, of the series serving the deployed versions only."""
        versions: dict[tuple[str, str], str] = {}
        for model, (cand, base) in active.items():
            versions[(model, CANDIDATE)] = str(cand.get("model_version"))
            base_version = (base or {}).get("model_version") or cand.get("baseline_version")
            versions[(model, BASELINE)] = str(base_version)
        n_dims = len(self.dims)
        seg = self.segment_dims
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for source, counters in ((fields, _SERVING_COUNTERS), (label_fields, _LABEL_COUNTERS)):
            for name, value in source.items():
                series, metric = split_field(name)
                if not metric:
                    continue
                key = split_series(series)
                if len(key) != n_dims:
                    continue
                model, version, arm = key[0], key[1], key[2]
                if versions.get((model, arm)) != version:
                    continue
                parts = out.setdefault(model, {}).setdefault(arm, {"c": {}, "h": {}, "s": {}})
                if metric in counters:
                    _bump(parts["c"], metric, value)
                    for dim, val in zip(seg, key[4:], strict=True):
                        _bump(parts["s"].setdefault(f"{dim}={val}", {}), metric, value)
                    continue
                if source is label_fields:
                    continue
                if metric.startswith(("fnull.", "fbad.", "fdef.")):
                    # A feature's invalid values: null, wrong type or the declared default.
                    _bump(parts["c"], "inv." + metric.split(".", 1)[1], value)
                    continue
                head, _, tail = metric.rpartition(".")
                if head.startswith(("lat.", "age.")) or head == "sc":
                    _bump(parts["h"].setdefault(head, {}), tail, value)
        return out

    # -- judging ---------------------------------------------------------------------------------------

    def _verdict(self, model: str, entry: dict[str, Any], start: int, end: int, now: int) -> Verdict:
        rule = self.rule
        cand, base = entry["arms"][CANDIDATE], entry["arms"][BASELINE]
        metrics = self.classify(cand, base)
        imp_c, imp_b = cand["c"].get("imp", 0.0), base["c"].get("imp", 0.0)
        enough = entry["windows"] >= rule.min_windows and min(imp_c, imp_b) >= rule.min_impressions
        score, verdict, reason = score_verdict(metrics, rule, enough)
        suspects = self._suspects(metrics, cand, base) if verdict in ("FAIL", "MARGINAL") else []
        decided = entry.get("decided")
        if decided is None and verdict == "FAIL":
            decided = entry["decided"] = {
                "verdict": "FAIL",
                "reason": reason,
                "windows": entry["windows"],
                "impressions": imp_c + imp_b,
                "requests": cand["c"].get("n", 0.0) + base["c"].get("n", 0.0),
                "at": end,
            }
        elif decided is not None and verdict != "FAIL":
            # A rollback, once decided on an anytime-valid bound, stands for this deployment.
            verdict = "FAIL"
            reason = f"{decided['reason'].rstrip('.')} (decided at window {decided['windows']})."
        return Verdict(
            model=model,
            deployment=entry["deployment"],
            candidate=entry["candidate"],
            baseline=entry["baseline"],
            window_start=entry["start"],
            window_end=end,
            emitted_at=now,
            metrics=metrics,
            score=score,
            verdict=verdict,
            reason=reason,
            suspects=suspects,
            valid_until=now + rule.valid_for_ms,
        )

    def classify(self, cand: Mapping[str, Any], base: Mapping[str, Any]) -> list[MetricResult]:
        """Every metric of one canary/control pair of cumulative arm states."""
        out: list[MetricResult] = []
        for name, counter in _ENGAGEMENT:
            out.append(self._engagement(name, cand["c"], base["c"], counter))
        for stage in self.stages:
            out.append(
                self._latency(
                    f"latency.{stage}", cand["h"].get(f"lat.{stage}", {}), base["h"].get(f"lat.{stage}", {})
                )
            )
        if self.topology.ranking.enabled:
            out.append(self._scores(cand["h"].get("sc", {}), base["h"].get("sc", {})))
        for name, counter in _RATE_METRICS:
            out.append(self._rate(name, cand["c"], base["c"], counter, "n", self.rule.rate_floor))
        for feature in self.features:
            out.append(
                self._rate(
                    f"feature_invalid.{feature}",
                    cand["c"],
                    base["c"],
                    f"inv.{feature}",
                    "prof",
                    self.rule.feature_floor,
                )
            )
        for feature, (q, sla) in self.freshness.items():
            out.append(
                self._freshness(
                    feature, q, sla, cand["h"].get(f"age.{feature}", {}), base["h"].get(f"age.{feature}", {})
                )
            )
        return out

    def _engagement(
        self, name: str, c: Mapping[str, float], b: Mapping[str, float], counter: str
    ) -> MetricResult:
        rule = self.rule
        n_c, n_b = c.get("imp", 0.0), b.get("imp", 0.0)
        result = self._unjudged(
            name,
            "engagement",
            "decrease",
            "relative",
            (n_c, n_b),
            rule.margin,
            rule.min_impressions,
            what="matured impressions",
        )
        if not result.detail and b.get(counter, 0.0) <= 0:
            # No event of the counter on the control arm yet: no ratio to judge, whatever the impressions.
            result.detail = f"{min(n_c, n_b):.0f} of {rule.min_impressions} matured impressions per arm"
        if result.detail:
            return result
        est, lo, hi = ratio_cs(
            c.get(counter, 0.0), n_c, b.get(counter, 0.0), n_b, rule.mixture_scale, self.alpha
        )
        result.estimate, result.lower, result.upper = est, lo, hi
        result.classification = "LOW" if hi < 0 else "HIGH" if lo > 0 else "PASS"
        result.non_inferior = lo > -rule.margin
        result.detail = (
            f"canary {c.get(counter, 0.0) / n_c:.4f} vs control {b.get(counter, 0.0) / n_b:.4f} "
            f"({counter} per impression)"
        )
        return result

    def _rate(
        self,
        name: str,
        c: Mapping[str, float],
        b: Mapping[str, float],
        counter: str,
        denominator: str,
        floor: float,
    ) -> MetricResult:
        rule = self.rule
        n_c, n_b = c.get(denominator, 0.0), b.get(denominator, 0.0)
        result = self._unjudged(name, "guardrail", "increase", "ratio", (n_c, n_b), floor, rule.min_requests)
        if result.detail:
            return result
        tau = max(floor, 1e-4)
        est, lo, hi = diff_cs(c.get(counter, 0.0), n_c, b.get(counter, 0.0), n_b, tau, self.alpha)
        result.estimate, result.lower, result.upper = est, lo, hi
        # The floor keeps a significant but negligible difference (0.01 points on a huge canary) a PASS.
        result.classification = (
            "HIGH" if lo > 0 and est >= floor else "LOW" if hi < 0 and est <= -floor else "PASS"
        )
        result.non_inferior = hi < floor
        result.detail = f"canary {c.get(counter, 0.0) / n_c:.4f} vs control {b.get(counter, 0.0) / n_b:.4f}"
        return result

    def _unjudged(
        self,
        name: str,
        group: str,
        direction: str,
        unit: str,
        counts: tuple[float, float],
        margin: float,
        min_n: int,
        what: str = "requests",
    ) -> MetricResult:
        """A metric still NODATA; with a detail saying why while either arm has fewer than ``min_n``
        observations (the caller judges it when the detail is empty)."""
        n_c, n_b = counts
        result = MetricResult(
            name,
            group,
            self.is_critical(name),
            direction,
            "NODATA",
            unit=unit,
            n_candidate=n_c,
            n_baseline=n_b,
            margin=margin,
        )
        if min(n_c, n_b) < min_n:
            result.detail = f"{min(n_c, n_b):.0f} of {min_n} {what} per arm"
        return result

    def _rank_test(
        self, a: Mapping[float, float], b: Mapping[float, float]
    ) -> tuple[MannWhitney, float, float, float]:
        """(MW, theta lower, theta upper, effective z) with the mixture CS on theta."""
        mw = mann_whitney(a, b)
        var = mw.var_theta
        hw = mixture_halfwidth(var, self.rule.rank_mixture_scale, self.alpha)
        z = hw / math.sqrt(var) if var > 0 and math.isfinite(var) else 0.0
        return mw, mw.theta - hw, mw.theta + hw, z

    def _latency(self, name: str, c_raw: Mapping[str, float], b_raw: Mapping[str, float]) -> MetricResult:
        rule = self.rule
        c, b = self._log_hist(c_raw), self._log_hist(b_raw)
        n_c, n_b = sum(c.values()), sum(b.values())
        result = self._unjudged(
            name, "latency", "increase", "relative", (n_c, n_b), rule.latency_floor, rule.min_count
        )
        if result.detail:
            return result
        mw, t_lo, t_hi, z = self._rank_test(c, b)
        shift, lo, hi = hodges_lehmann(c, b, z, mw.var_u)
        g = self.buckets.gamma
        # Bucket indices are log(latency) / log(gamma): a shift of d buckets is a factor gamma**d.
        result.estimate, result.lower, result.upper = g**shift - 1.0, g**lo - 1.0, g**hi - 1.0
        floor = rule.latency_floor
        if t_lo > 0.5 and result.estimate >= floor:
            result.classification = "HIGH"
        elif t_hi < 0.5 and result.estimate <= -floor:
            result.classification = "LOW"
        else:
            result.classification = "PASS"
        result.non_inferior = result.upper < floor
        result.detail = (
            f"P(canary slower) {mw.theta:.3f} [{t_lo:.3f}, {t_hi:.3f}], Mann-Whitney p {mw.p_value:.2g} "
            "(single look)"
        )
        return result

    def _scores(self, c_raw: Mapping[str, float], b_raw: Mapping[str, float]) -> MetricResult:
        rule = self.rule
        value = self.score_bins.value_of
        c = {value(int(k)): v for k, v in c_raw.items()}
        b = {value(int(k)): v for k, v in b_raw.items()}
        n_c, n_b = sum(c.values()), sum(b.values())
        result = self._unjudged(
            "score",
            "scores",
            "either",
            "probability",
            (n_c, n_b),
            rule.score_floor,
            rule.min_count,
            what="scored items",
        )
        if result.detail:
            return result
        mw, t_lo, t_hi, z = self._rank_test(c, b)
        shift, lo, hi = hodges_lehmann(c, b, z, mw.var_u)
        result.estimate, result.lower, result.upper = mw.theta, t_lo, t_hi
        floor = rule.score_floor
        if t_lo > 0.5 and mw.theta >= 0.5 + floor:
            result.classification = "HIGH"
        elif t_hi < 0.5 and mw.theta <= 0.5 - floor:
            result.classification = "LOW"
        else:
            result.classification = "PASS"
        result.non_inferior = t_lo > 0.5 - floor and t_hi < 0.5 + floor
        result.detail = (
            f"P(canary score higher) {mw.theta:.3f}; Hodges-Lehmann shift {shift:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        )
        return result

    def _freshness(
        self, feature: str, q: float, sla: float, c_raw: Mapping[str, float], b_raw: Mapping[str, float]
    ) -> MetricResult:
        rule = self.rule
        value = self.buckets.value_of
        c = {value(int(k)): v for k, v in c_raw.items()}
        b = {value(int(k)): v for k, v in b_raw.items()}
        n_c, n_b = sum(c.values()), sum(b.values())
        name = f"freshness.{feature}"
        result = self._unjudged(name, "guardrail", "increase", "s", (n_c, n_b), sla, rule.min_count)
        if result.detail:
            return result
        z = _N.inv_cdf(1.0 - self.alpha / 2)
        est, lo, hi = quantile_bounds(c, q, z)
        control, _, _ = quantile_bounds(b, q, z)
        result.estimate, result.lower, result.upper = est, lo, hi
        # Stale for everyone is the freshness signal's business; stale on the canary only is the canary's.
        result.classification = "HIGH" if lo > sla and control <= sla else "PASS"
        result.non_inferior = hi <= sla
        result.detail = f"canary p{q * 100:g} {est:.0f} s vs SLA {sla:.0f} s (control {control:.0f} s)"
        return result

    def _log_hist(self, raw: Mapping[str, float]) -> dict[float, float]:
        out: dict[float, float] = {}
        for k, v in raw.items():
            b = int(k)
            index = float(self._zero if b == ZERO_BUCKET else b)
            out[index] = out.get(index, 0.0) + v
        return out

    # -- suspects --------------------------------------------------------------------------------------

    def _suspects(
        self, metrics: Sequence[MetricResult], cand: Mapping[str, Any], base: Mapping[str, Any]
    ) -> list[Suspect]:
        out: list[Suspect] = []
        bad = sorted((m for m in metrics if m.bad), key=lambda m: (not m.critical, m.name))
        for m in bad:
            if m.name.startswith("feature_invalid."):
                out.append(Suspect("feature", m.name.split(".", 1)[1], f"{m.name}: {m.detail}"))
            elif m.name.startswith("latency."):
                out.append(Suspect("metric", m.name, f"{_effect(m)}; {m.detail}"))
                stage = self._worst_stage(metrics)
                if stage is not None:
                    out.append(stage)
            elif m.group == "engagement":
                out.append(Suspect("metric", m.name, f"{_effect(m)}; {m.detail}"))
                seg = self._worst_segment(m.name, dict(_ENGAGEMENT)[m.name], "imp", cand, base)
                if seg is not None:
                    out.append(seg)
            elif m.name in dict(_RATE_METRICS):
                out.append(Suspect("metric", m.name, f"{_effect(m)}; {m.detail}"))
                seg = self._worst_segment(m.name, dict(_RATE_METRICS)[m.name], "n", cand, base, worse=1.0)
                if seg is not None:
                    out.append(seg)
            else:
                out.append(Suspect("metric", m.name, f"{_effect(m)}; {m.detail}"))
        unique: list[Suspect] = []
        for s in out:
            if all((s.kind, s.name) != (u.kind, u.name) for u in unique):
                unique.append(s)
        return unique[: self.rule.max_suspects]

    @staticmethod
    def _worst_stage(metrics: Sequence[MetricResult]) -> Suspect | None:
        stages = [
            m
            for m in metrics
            if m.name.startswith("latency.") and m.name != "latency.total" and m.estimate is not None
        ]
        if not stages:
            return None
        worst = max(stages, key=lambda m: m.estimate or 0.0)
        if (worst.estimate or 0.0) <= 0:
            return None
        return Suspect(
            "stage", worst.name.split(".", 1)[1], f"{worst.name} {_effect(worst)} (largest stage shift)"
        )

    @staticmethod
    def _worst_segment(
        metric: str,
        counter: str,
        denominator: str,
        cand: Mapping[str, Any],
        base: Mapping[str, Any],
        worse: float = -1.0,
    ) -> Suspect | None:
        """The segment slice whose canary-vs-control difference is most significant in the bad way."""
        best: tuple[float, str, str] | None = None
        for name, c in cand["s"].items():
            b = base["s"].get(name, {})
            n_c, n_b = c.get(denominator, 0.0), b.get(denominator, 0.0)
            if n_c < 100 or n_b < 100:
                continue
            p_c, p_b = c.get(counter, 0.0) / n_c, b.get(counter, 0.0) / n_b
            pooled = (c.get(counter, 0.0) + b.get(counter, 0.0)) / (n_c + n_b)
            sd = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n_c + 1 / n_b))
            z = worse * (p_c - p_b) / sd
            if z > 2.0 and (best is None or z > best[0]):
                rel = p_c / p_b - 1.0 if p_b > 0 else math.inf
                best = (
                    z,
                    name,
                    f"{metric} {rel:+.1%} in {name} (canary {p_c:.4f} vs control {p_b:.4f}, z {z:.1f})",
                )
        return Suspect("segment", best[1], best[2]) if best is not None else None


def rollout_entries(
    doc: object, kind: str, version: int, error: type[Exception], objects: tuple[str, ...]
) -> list[tuple[str, dict[str, Any]]]:
    """Check what every rollout analyzer's stored state shares; its entries as ``(where, entry)``.

    The document is ``{"version", "models": {model: entry}}``; each entry has a ``deployment`` string,
    ``start`` and ``windows`` integers, ``candidate``/``baseline`` objects plus the kind's ``objects``, and
    ``decided`` (an object or null). Raises ``error`` naming the first field that is wrong.

    >>> rollout_entries({"version": 1, "models": {}}, "canary", 1, ValueError, ())
    []
    """
    if not isinstance(doc, dict):
        raise error(f"{kind} state must be a JSON object, got {type(doc).__name__}")
    if doc.get("version") != version:
        raise error(f"{kind} state version {doc.get('version')!r} is not {version}")
    models = doc.get("models")
    if not isinstance(models, dict):
        raise error(f"{kind} state models must be a JSON object")
    out = []
    for model, entry in models.items():
        where = f"{kind} state models.{model}"
        if not isinstance(entry, dict):
            raise error(f"{where} must be a JSON object")
        if not isinstance(entry.get("deployment"), str):
            raise error(f"{where}.deployment must be a string")
        for name in ("start", "windows"):
            if not isinstance(entry.get(name), int) or isinstance(entry.get(name), bool):
                raise error(f"{where}.{name} must be an integer")
        for name in ("candidate", "baseline", *objects):
            if not isinstance(entry.get(name), dict):
                raise error(f"{where}.{name} must be a JSON object")
        decided = entry.get("decided")
        if decided is not None and not isinstance(decided, dict):
            raise error(f"{where}.decided must be a JSON object or null")
        out.append((where, entry))
    return out


def _is_num(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _bump(counts: dict[str, float], name: str, by: float) -> None:
    counts[name] = counts.get(name, 0.0) + by


def _merge_arm(acc: dict[str, Any], parts: Mapping[str, Any]) -> None:
    for name, value in parts["c"].items():
        _bump(acc["c"], name, value)
    for hist, counts in parts["h"].items():
        target = acc["h"].setdefault(hist, {})
        for b, value in counts.items():
            _bump(target, b, value)
    for name, counts in parts["s"].items():
        if name not in acc["s"] and len(acc["s"]) >= _MAX_SLICES:
            continue  # bounded state: slices past the cap are not tracked for suspects
        target = acc["s"].setdefault(name, {})
        for counter, value in counts.items():
            _bump(target, counter, value)


def decoded_deployments(raw: Mapping[str, Mapping[str, bytes | str]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The store's deployment records decoded (records that are not JSON objects are left out)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model, arms in raw.items():
        for arm, record in arms.items():
            try:
                doc = json.loads(record)
            except (ValueError, TypeError):
                continue
            if isinstance(doc, dict):
                out.setdefault(model, {})[arm] = doc
    return out
