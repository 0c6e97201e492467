"""Signals from the window profiles: feature drift and quality, score drift and collapse, slate diversity,
popularity concentration and position/score order.

Two kinds, as in :mod:`stream_monitor.core.signals`:

- *rates against a ceiling* (``feature_quality`` null / invalid / default-value rates, ``score_collapse``
  constant-score slates, ``diversity`` duplicates, ``position_score`` inversions): alert when the Wilson
  lower bound of the rate is above the ceiling, and are localised like the request rates (the slice
  that explains the breach is kept, see ``WindowEvaluator.explain_away``);
- *comparisons with a reference* (``feature_drift`` and ``score_drift``: PSI with a significance test
  across all tests of the window; ``score_collapse`` entropy and ``diversity`` distinct items against
  their trailing medians; ``popularity``: the long tail's share of exposure against the slice's item
  exposure reference): localised by dimension like volume, after slices that another slice's residual
  explains are dropped.

References live in the evaluator state (``profiles``, checkpointed as JSON with the detector state):
per (histogram, series) an exponentially decayed sum of the windows that did not breach, and per
(histogram, series without the version) the profile of the current and the previous model version, which
gives the release-over-release comparison.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stream_monitor.core.fields import ALL, join_series
from stream_monitor.core.profiler import feature_bins, score_bins
from stream_monitor.core.series import Breach, SeriesStats, SignalValue, matches_slice, merged, touch_history
from stream_monitor.core.stats.distributions import (
    benjamini_hochberg,
    drift_pvalue,
    effective_count,
    gini,
    jensen_shannon,
    linear_count,
    normalised_entropy,
    psi,
    top_share,
    wasserstein,
)
from stream_monitor.core.stats.proportions import wilson_lower_bound
from stream_monitor.core.topology import KEY_DIMS, Topology

__all__ = ["PROFILE_RATE_SIGNALS", "ProfileEvaluator", "RateSpec"]

PROFILE_RATE_SIGNALS = frozenset({"feature_quality", "score_collapse", "diversity", "position_score"})
MAX_PROFILES = 5_000
_VERSION = KEY_DIMS.index("model_version")


@dataclass(frozen=True, slots=True)
class RateSpec:
    """One profile rate: flagged / total counters, its ceiling and minimum evidence."""

    signal: str
    metric: str
    flagged: str
    total: str
    threshold: float
    min_total: float
    min_counter: str
    z: float
    clear_ratio: float
    what: str


class ProfileEvaluator:
    """Evaluates the profile signals of one window; see the module docstring.

    >>> from stream_monitor.core.topology import FeatureRule, FeatureSpec
    >>> from stream_monitor.core.windows import WindowSpec
    >>> rule = FeatureRule(features=(FeatureSpec("x"),), min_count=10)
    >>> topo = Topology("t", WindowSpec(60_000), features=rule)
    >>> evaluator = ProfileEvaluator(topo)
    >>> stats = SeriesStats(n=100, counters={"prof": 100, "fnull.x": 30}, hists={"fv.x": {"5": 70}})
    >>> values, ceiling, floor = [], [], []
    >>> evaluator.evaluate({("m", "v", "control", "home"): stats}, {}, {}, values, ceiling, floor)
    >>> [(b.signal, b.metric, round(b.observed, 2)) for b in ceiling]
    [('feature_quality', 'null_rate.x', 0.3)]
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.features = topology.features
        self.ranking = topology.ranking
        self._bins = feature_bins(topology)
        self._score_bins = score_bins(topology)
        self._decay = 0.5 ** (1.0 / max(self.features.half_life_windows, 1e-9))
        self.rates: dict[tuple[str, str], RateSpec] = {}
        rule = self.features
        for spec in rule.features:
            f = spec.name
            self._rate(
                "feature_quality", f"null_rate.{f}", f"fnull.{f}", "prof", rule.max_null_rate, f"{f} is null"
            )
            self._rate(
                "feature_quality",
                f"invalid_rate.{f}",
                f"fbad.{f}",
                "prof",
                rule.max_invalid_rate,
                f"{f} has the wrong type",
            )
            if spec.max_default_rate is not None:
                self._rate(
                    "feature_quality",
                    f"default_rate.{f}",
                    f"fdef.{f}",
                    "prof",
                    spec.max_default_rate,
                    f"{f} holds its default value {spec.default!r}",
                )
        if self.ranking.enabled:
            rk = self.ranking
            self._rate(
                "score_collapse",
                "constant_slate_rate",
                "rk.const",
                "rk.multi",
                rk.max_constant_slate_rate,
                "slates have one score for every item",
                ranking=True,
            )
            self._rate(
                "diversity",
                "duplicate_rate",
                "rk.dup",
                "rk.items",
                rk.max_duplicate_rate,
                "served items repeat within their slate",
                ranking=True,
            )
            self._rate(
                "position_score",
                "inversion_rate",
                "rk.inv",
                "rk.pairs",
                rk.max_inversion_rate,
                "adjacent items are ranked against their scores",
                ranking=True,
            )

    def _rate(
        self,
        signal: str,
        metric: str,
        flagged: str,
        total: str,
        threshold: float,
        what: str,
        ranking: bool = False,
    ) -> None:
        if ranking:
            rk = self.ranking
            spec = RateSpec(
                signal,
                metric,
                flagged,
                total,
                threshold,
                rk.min_slates,
                "rk.slates",
                rk.z,
                rk.clear_ratio,
                what,
            )
        else:
            rule = self.features
            spec = RateSpec(
                signal,
                metric,
                flagged,
                total,
                threshold,
                rule.min_count,
                "prof",
                rule.z,
                rule.clear_ratio,
                what,
            )
        self.rates[(signal, metric)] = spec

    # -- rates (the ceiling kind; WindowEvaluator localises them) ------------------------------------

    def rate(self, stats: SeriesStats, signal: str, metric: str) -> tuple[float, float] | None:
        """(flagged, total) of a profile rate on ``stats``; None with too little evidence."""
        spec = self.rates.get((signal, metric))
        if spec is None or stats.counters.get(spec.min_counter, 0) < spec.min_total:
            return None
        total = stats.counters.get(spec.total, 0)
        if total <= 0:
            return None
        return stats.counters.get(spec.flagged, 0), total

    def evaluate(
        self,
        levels: Mapping[tuple[str, ...], SeriesStats],
        profiles: dict[str, Any],
        baselines: dict[str, list[float]],
        values: list[SignalValue],
        ceiling: list[Breach],
        floor: list[Breach],
        series: Mapping[tuple[str, ...], SeriesStats] | None = None,
    ) -> None:
        """Append this window's profile values and breaches (ceiling and floor kinds).

        ``series`` (the window's finest series) lets slice breaches that only show an incident of another
        slice be explained away (see :meth:`_explain_slices`).
        """
        for key, stats in levels.items():
            for spec in self.rates.values():
                counts = self.rate(stats, spec.signal, spec.metric)
                if counts is None:
                    continue
                flagged, total = counts
                rate = flagged / total
                values.append(SignalValue(spec.signal, spec.metric, key, rate, trials=total))
                if rate > spec.threshold and wilson_lower_bound(flagged, total, spec.z) > spec.threshold:
                    ceiling.append(
                        Breach(
                            spec.signal,
                            spec.metric,
                            key,
                            rate,
                            None,
                            spec.threshold,
                            "ratio",
                            "critical" if rate > 4 * spec.threshold else "warning",
                            f"{rate:.1%} of {_noun(spec.total)}: {spec.what} (limit {spec.threshold:.1%})",
                        )
                    )
        mine: list[Breach] = []
        references: dict[tuple[tuple[str, ...], str], dict[str, float]] = {}
        self._drift(levels, profiles, values, mine, references)
        if self.ranking.enabled:
            self._slate_baselines(levels, profiles, baselines, values, mine, references)
        # A collapse explains the symptoms it causes: constant scores are also a score drift and an entropy
        # drop, a popularity collapse also shrinks coverage. Report the cause only.
        causes = {b.key for b in ceiling if (b.signal, b.metric) == ("score_collapse", "constant_slate_rate")}
        # Items repeated within slates pile impressions onto few items: that is not a popularity shift.
        repeated = {b.key for b in ceiling if (b.signal, b.metric) == ("diversity", "duplicate_rate")}
        concentrated = {b.key for b in mine if b.signal == "popularity"}
        # Traffic lost in a slice changes the mix, and so the distribution of every segment-dependent
        # feature, of each roll-up that contains it: the volume alert says what happened.
        lost = [b.key for b in floor if b.signal == "volume"]
        # Slices explain each other first (the cause's slice also explains what shows through elsewhere),
        # then the symptoms of a cause in the same slice go.
        mine = [
            b
            for b in self._explain_slices(mine, series or {}, references)
            if not (b.key in causes and b.signal in ("score_drift", "score_collapse"))
            and not (b.key in concentrated and b.metric == "distinct_items")
            and not (b.key in repeated and b.signal == "popularity")
            and not (b.signal in ("feature_drift", "score_drift") and any(_contains(b.key, s) for s in lost))
        ]
        floor.extend(mine)

    # -- drift against a reference --------------------------------------------------------------------

    def _histograms(self) -> list[tuple[str, str, str, bool]]:
        """(histogram, signal, metric suffix, numeric) of every distribution tested for drift."""
        out = [
            (
                f"fv.{s.name}" if s.kind == "numeric" else f"fc.{s.name}",
                "feature_drift",
                f".{s.name}",
                s.kind == "numeric",
            )
            for s in self.features.features
        ]
        if self.ranking.enabled:
            out.append(("sc", "score_drift", "", True))
        return out

    def _drift(
        self,
        levels: Mapping[tuple[str, ...], SeriesStats],
        profiles: dict[str, Any],
        values: list[SignalValue],
        floor: list[Breach],
        references: dict[tuple[tuple[str, ...], str], dict[str, float]],
    ) -> None:
        rule = self.features
        tests: dict[tuple[tuple[str, ...], str], float] = {}
        pending: list[tuple[tuple[str, ...], str, str, str, dict[str, float], dict[str, float], float]] = []
        unseen_breaches: list[Breach] = []
        for key, stats in levels.items():
            series = join_series(key)
            for hist_name, signal, suffix, numeric in self._histograms():
                current = stats.hists.get(hist_name)
                if not current:
                    continue
                n = sum(current.values())
                if n < rule.min_count:
                    continue
                release = self._release(profiles, hist_name, key, current)
                trailing = _touch(profiles, f"ref|{hist_name}|{series}")
                reference: dict[str, float] | None = None
                if rule.reference == "pinned":
                    reference = rule.pinned.reference(key, hist_name) if rule.pinned else None
                elif rule.reference == "previous_version" and release is not None:
                    reference = release
                elif trailing.get("w", 0) >= rule.min_reference_windows:
                    reference = trailing["c"]
                if release is not None:
                    values.append(SignalValue("release", f"psi.{hist_name}", key, psi(current, release)))
                if reference is None or sum(reference.values()) < rule.min_count:
                    _decay_add(trailing, current, self._decay)
                    continue
                drift = psi(current, reference)
                values.append(SignalValue(signal, f"psi{suffix}", key, drift))
                values.append(SignalValue(signal, f"js{suffix}", key, jensen_shannon(current, reference)))
                if numeric:
                    bins = (
                        self._bins.get(hist_name[3:], self._score_bins)
                        if hist_name != "sc"
                        else self._score_bins
                    )
                    values.append(
                        SignalValue(
                            signal,
                            f"wasserstein{suffix}",
                            key,
                            wasserstein(_int_keys(current), _int_keys(reference), bins.value_of),
                        )
                    )
                else:
                    unseen = sum(c for v, c in current.items() if not reference.get(v)) / n
                    values.append(SignalValue(signal, f"unseen_share{suffix}", key, unseen))
                    if unseen > rule.max_unseen_share:
                        unseen_breaches.append(
                            Breach(
                                signal,
                                f"unseen_share{suffix}",
                                key,
                                unseen,
                                None,
                                rule.max_unseen_share,
                                "ratio",
                                "warning",
                                f"{unseen:.1%} of {suffix[1:]} values were never seen in the reference",
                            )
                        )
                tests[(key, hist_name)] = drift_pvalue(current, reference)
                references[(key, hist_name)] = reference
                pending.append((key, hist_name, signal, suffix, current, reference, drift))
        # Thousands of (slice, feature) tests per window: control the false discovery rate across all of
        # them, and ask for a material effect (PSI) on top of significance.
        significant = benjamini_hochberg(tests, rule.fdr) if tests else set()
        breached: set[tuple[tuple[str, ...], str]] = set()
        for key, hist_name, signal, suffix, current, _reference, drift in pending:
            if (key, hist_name) in significant and drift >= rule.psi_threshold:
                breached.add((key, hist_name))
                what = "item scores" if hist_name == "sc" else f"feature {suffix[1:]}"
                floor.append(
                    Breach(
                        signal,
                        f"psi{suffix}",
                        key,
                        drift,
                        None,
                        rule.psi_threshold,
                        "psi",
                        "critical" if drift >= 2 * rule.psi_threshold else "warning",
                        f"{what} drifted: PSI {drift:.2f} against the {rule.reference.replace('_', ' ')} "
                        f"reference (p={tests[(key, hist_name)]:.1g}, {sum(current.values()):.0f} values)",
                    )
                )
        floor.extend(unseen_breaches)
        # The reference learns only from windows that did not drift: a drift must not become the new normal.
        for key, hist_name, *_ in pending:
            if (key, hist_name) not in breached:
                series = join_series(key)
                _decay_add(profiles[f"ref|{hist_name}|{series}"], levels[key].hists[hist_name], self._decay)

    def _explain_slices(
        self,
        breaches: list[Breach],
        series: Mapping[tuple[str, ...], SeriesStats],
        references: Mapping[tuple[tuple[str, ...], str], dict[str, float]],
    ) -> list[Breach]:
        """Drop slice breaches that another, stronger slice breach explains.

        An incident on region=eu shows through in every platform (each holds some eu traffic); a platform
        breach is explained when the platform's traffic outside eu no longer breaches (drift: its PSI
        against the platform's reference; concentration: its top-k share against the platform's limit).
        What is left goes on to the dimension localisation that every floor signal gets.
        """
        n_base = len(KEY_DIMS)

        def dim_of(key: tuple[str, ...]) -> int | None:
            fixed = [i for i in range(n_base, len(key)) if key[i] != ALL]
            return fixed[0] if len(fixed) == 1 else None

        def still_breaches(breach: Breach, rest: SeriesStats) -> bool:
            if breach.signal == "popularity":
                items = rest.hists.get("it", {})
                if rest.counters.get("rk.slates", 0) < self.ranking.min_slates or not items:
                    return False
                # Does the slice's traffic outside the other slice still miss the long tail?
                reference = references.get((breach.key, "it"))
                if not reference or sum(items.values()) < 50:
                    return False
                _usual, now = _tail_share(items, reference, self.ranking.head_share)
                return breach.threshold is not None and now < breach.threshold
            hist_name = "sc" if breach.signal == "score_drift" else _hist_of(breach.metric, self.features)
            current = rest.hists.get(hist_name or "", {})
            reference = references.get((breach.key, hist_name or ""))
            if reference is None or sum(current.values()) < self.features.min_count:
                return False
            return psi(current, reference) >= self.features.psi_threshold

        explainable = {"feature_drift", "score_drift", "popularity"}
        groups: dict[tuple[object, ...], list[Breach]] = {}
        kept: list[Breach] = []
        for breach in breaches:
            if (
                breach.signal in explainable
                and dim_of(breach.key) is not None
                and breach.metric.startswith(("psi", "tail"))
            ):
                groups.setdefault((breach.signal, breach.metric, breach.key[:n_base]), []).append(breach)
            else:
                kept.append(breach)
        for group in groups.values():
            chosen: list[Breach] = []
            for breach in sorted(group, key=lambda b: -_strength(b)):
                explained = False
                for by in chosen:
                    if dim_of(by.key) == dim_of(breach.key):
                        continue
                    rest = merged(
                        st
                        for k, st in series.items()
                        if matches_slice(k, breach.key) and not matches_slice(k, by.key)
                    )
                    if not still_breaches(breach, rest):
                        explained = True
                        break
                if not explained:
                    chosen.append(breach)
            kept.extend(chosen)
        return kept

    def _release(
        self, profiles: dict[str, Any], hist_name: str, key: tuple[str, ...], current: dict[str, float]
    ) -> dict[str, float] | None:
        """Track the profile of each (slice without version)'s current and previous model version; return
        the previous version's profile when ``key`` is the current version and one exists."""
        version = key[_VERSION]
        slot = _touch(profiles, f"ver|{hist_name}|{join_series(key[:_VERSION] + key[_VERSION + 1 :])}")
        if not slot:
            slot.update({"cur": version, "c": {}, "w": 0})
        if slot["cur"] != version:
            if slot.get("prev") == version:
                return None  # the previous version still serving some traffic: no comparison for it
            # A new version: the one serving until now becomes the reference.
            slot.update({"prev": slot["cur"], "p": slot["c"], "cur": version, "c": {}, "w": 0})
        _decay_add(slot, current, self._decay)
        return slot.get("p") or None

    # -- slate statistics against their trailing medians ---------------------------------------------

    def _slate_baselines(
        self,
        levels: Mapping[tuple[str, ...], SeriesStats],
        profiles: dict[str, Any],
        baselines: dict[str, list[float]],
        values: list[SignalValue],
        floor: list[Breach],
        references: dict[tuple[tuple[str, ...], str], dict[str, float]],
    ) -> None:
        rk = self.ranking
        n_score_bins = rk.score_bins + 2
        for key, stats in levels.items():
            slates = stats.counters.get("rk.slates", 0)
            if slates < rk.min_slates:
                continue
            series = join_series(key)
            items = stats.hists.get("it", {})
            served = sum(items.values())
            buckets = _int_keys(items)
            checks: list[tuple[str, str, float | None]] = [
                (
                    "score_collapse",
                    "entropy",
                    normalised_entropy(stats.hists.get("sc", {}), n_score_bins),
                ),
                (
                    "diversity",
                    "distinct_items",
                    linear_count(buckets, rk.item_buckets) * rk.item_sample if served else None,
                ),
            ]
            if served:
                values.append(
                    SignalValue("popularity", f"top{rk.top_k}_share", key, top_share(buckets, rk.top_k))
                )
                values.append(
                    SignalValue(
                        "popularity", "effective_items", key, effective_count(buckets) * rk.item_sample
                    )
                )
            volume = touch_history(baselines, f"diversity|served_items|{series}")
            usual_volume = statistics.median(volume) if len(volume) >= rk.min_history else None
            for signal, metric, value in checks:
                if value is None or math.isinf(value):
                    continue
                values.append(SignalValue(signal, metric, key, value))
                past = touch_history(baselines, f"{signal}|{metric}|{series}")
                breached = False
                if len(past) >= rk.min_history:
                    expected = statistics.median(past)
                    if metric == "entropy":
                        limit = expected * (1.0 - rk.entropy_drop_ratio)
                        breached = value < limit
                        text = (
                            f"score entropy {value:.2f} against a trailing median of {expected:.2f}: "
                            "scores collapsed"
                        )
                    else:
                        limit = expected * (1.0 - rk.coverage_drop_ratio)
                        breached = value < limit
                        text = (
                            f"about {value:.0f} distinct items served against a trailing median of "
                            f"{expected:.0f}"
                        )
                    # Coverage depends on how many items were served: fewer requests serve fewer distinct
                    # items. It is judged only at (at least 70 % of) the usual volume.
                    if metric == "distinct_items" and (usual_volume is None or served < 0.7 * usual_volume):
                        breached = False
                    if breached:
                        floor.append(
                            Breach(
                                signal,
                                metric,
                                key,
                                value,
                                expected,
                                limit,
                                "items" if metric == "distinct_items" else "ratio",
                                "warning",
                                text,
                            )
                        )
                if not breached:
                    past.append(value)
                    del past[: -rk.baseline_windows]
            if served:
                values.append(SignalValue("popularity", "gini", key, gini(buckets, rk.item_buckets)))
                # Popularity bias: the long tail's share of exposure (items outside those that usually take
                # head_share of it) against the slice's own item-exposure reference. A ratio, so it does
                # not depend on the volume, unlike Gini or distinct counts.
                exposure = _touch(profiles, f"ref|it|{series}")
                reference = dict(exposure.get("c", {}))
                references[(key, "it")] = reference
                collapsed = False
                warm = exposure.get("w", 0) >= self.features.min_reference_windows
                if warm and sum(reference.values()) >= self.features.min_count:
                    usual, now = _tail_share(items, reference, rk.head_share)
                    values.append(SignalValue("popularity", "tail_share", key, now))
                    limit = usual * (1.0 - rk.tail_drop_ratio)
                    # Items of one slate are not independent draws: the slates are the sample size.
                    upper = 1.0 - wilson_lower_bound((1.0 - now) * slates, slates, rk.z)
                    if now < limit and upper < limit:
                        collapsed = True
                        floor.append(
                            Breach(
                                "popularity",
                                "tail_share",
                                key,
                                now,
                                usual,
                                limit,
                                "ratio",
                                "warning",
                                f"{now:.1%} of served items come from the long tail (outside the items "
                                f"that usually take {rk.head_share:.0%} of exposure), against {usual:.1%} "
                                "usually: recommendations collapsed onto popular items",
                            )
                        )
                if not collapsed:
                    _decay_add(exposure, items, self._decay)
                volume.append(served)
                del volume[: -rk.baseline_windows]


def _tail_share(
    items: Mapping[str, float], reference: Mapping[str, float], head: float
) -> tuple[float, float]:
    """(usual, current) share of exposure outside the reference's head: its fullest buckets that together
    hold ``head`` of its counts."""
    total = sum(reference.values())
    served = sum(items.values())
    if total <= 0 or served <= 0:
        return 0.0, 0.0
    top: set[str] = set()
    held = 0.0
    for bucket, count in sorted(reference.items(), key=lambda kv: -kv[1]):
        if held >= head * total:
            break
        top.add(bucket)
        held += count
    return 1.0 - held / total, sum(c for b, c in items.items() if b not in top) / served


def _strength(breach: Breach) -> float:
    """How far past its limit a breach is (above a ceiling, or below a floor)."""
    if not breach.threshold:
        return 0.0
    if breach.signal == "popularity":  # the tail share falls: lower is worse
        return breach.threshold / breach.observed if breach.observed > 0 else math.inf
    return breach.observed / breach.threshold


def _contains(key: tuple[str, ...], slice_key: tuple[str, ...]) -> bool:
    """Whether roll-up ``key`` (with a version) strictly contains the versionless ``slice_key``."""
    n_base = len(KEY_DIMS)
    if any(key[i] != slice_key[i] for i in range(n_base) if i != _VERSION and slice_key[i] != ALL):
        return False
    segment, other = key[n_base:], slice_key[n_base:]
    return segment != other and all(
        mine in (ALL, theirs) for mine, theirs in zip(segment, other, strict=True)
    )


def _hist_of(metric: str, rule: Any) -> str | None:
    """The histogram a ``psi.<feature>`` metric was computed on."""
    feature = metric.partition(".")[2]
    for spec in rule.features:
        if spec.name == feature:
            return f"fv.{feature}" if spec.kind == "numeric" else f"fc.{feature}"
    return None


def _noun(counter: str) -> str:
    return {
        "prof": "requests",
        "rk.multi": "slates",
        "rk.items": "served items",
        "rk.pairs": "adjacent pairs",
    }.get(counter, counter)


def _int_keys(hist: Mapping[str, float]) -> dict[int, float]:
    return {int(b): c for b, c in hist.items()}


def _touch(profiles: dict[str, Any], key: str) -> dict[str, Any]:
    """The entry under ``key`` (created empty), moved to the end so the least recently used go first."""
    entry: dict[str, Any] = profiles.pop(key, None) or {}
    profiles[key] = entry
    while len(profiles) > MAX_PROFILES:
        del profiles[next(iter(profiles))]
    return entry


def _decay_add(entry: dict[str, Any], current: Mapping[str, float], decay: float) -> None:
    """entry["c"] = decay * entry["c"] + current (counts under 0.01 dropped); entry["w"] += 1."""
    counts: dict[str, float] = entry.setdefault("c", {})
    for b in list(counts):
        kept = round(counts[b] * decay, 2)
        if kept < 0.01:
            del counts[b]
        else:
            counts[b] = kept
    for b, c in current.items():
        counts[b] = counts.get(b, 0.0) + c
    entry["w"] = entry.get("w", 0) + 1
