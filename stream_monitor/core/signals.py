"""Signals computed from one closed window: volume, latency quantiles and flagged-request rates.

A closed window arrives as the flat sums the workers flushed (``"<series>#<metric>" -> number``). It is
parsed into per-series statistics, rolled up to the topology's ``group_by`` levels, and checked against
the rules. A breach that shows at several levels is reported where it is localised: if one value of a
segment dimension breaches while its siblings do not, the breach belongs to that value, and the roll-ups
above it (which breach only because they contain it) are not reported separately.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stream_monitor.core.fields import ALL, join_series, split_series
from stream_monitor.core.profile_signals import PROFILE_RATE_SIGNALS, ProfileEvaluator
from stream_monitor.core.series import (
    Breach,
    SeriesStats,
    SignalValue,
    matches_slice,
    merged,
    parse_window,
    rollup,
    touch_history,
)
from stream_monitor.core.sketch import LogBuckets
from stream_monitor.core.slo import BurnRateTracker
from stream_monitor.core.stats.proportions import poisson_cdf, wilson_lower_bound
from stream_monitor.core.topology import KEY_DIMS, Topology

__all__ = ["WindowEvaluation", "WindowEvaluator", "localise"]


@dataclass(frozen=True, slots=True)
class WindowEvaluation:
    """What :meth:`WindowEvaluator.evaluate` finds in one window.

    ``values`` are the window's own signals and ``slo_values`` the error-budget burn rates (both are
    exported); ``breaches`` are localised (and hold the burn alerts), ``raw_breaches`` the window's own
    signal breaches before localisation; ``engagement`` the window's engagement counts per action.
    """

    values: list[SignalValue]
    slo_values: list[SignalValue]
    breaches: list[Breach]
    raw_breaches: tuple[Breach, ...]
    engagement: dict[str, float]

    @property
    def all_values(self) -> list[SignalValue]:
        return [*self.values, *self.slo_values]


class WindowEvaluator:
    """Computes signal values and breaches for one closed window (stateless but for volume history).

    Volume history lives in the caller-owned ``volume_history`` map so it can be checkpointed.
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.buckets = LogBuckets(topology.relative_accuracy)
        self._key_dims = topology.key_dims
        self._rate_rules = {rule.signal: rule for rule in topology.rates}
        self.profile = ProfileEvaluator(topology)
        self._profile_rates = PROFILE_RATE_SIGNALS
        self.slo = BurnRateTracker(topology.slo, topology.window.size_ms, self.buckets)

    def levels(
        self, series: Mapping[tuple[str, ...], SeriesStats], with_version: bool
    ) -> dict[tuple[str, ...], SeriesStats]:
        """All roll-up levels of the window's series."""
        base = KEY_DIMS if with_version else tuple(d for d in KEY_DIMS if d != "model_version")
        out: dict[tuple[str, ...], SeriesStats] = {}
        for group in self.topology.group_by:
            out.update(rollup(series, self._key_dims, (*base, *group)))
        return out

    def evaluate(
        self,
        fields: Mapping[str, float],
        volume_history: dict[str, list[float]],
        volume_absent: dict[str, int],
        baselines: dict[str, list[float]] | None = None,
        profiles: dict[str, Any] | None = None,
        slo_history: dict[str, list[int]] | None = None,
    ) -> WindowEvaluation:
        """Signal values, breaches (localised, and before localisation) and engagement counts of a window.

        ``baselines`` holds the trailing history of the baseline-relative signals (candidate-source
        shares, engagement ratio, slate statistics), keyed ``signal|metric|series``; ``profiles`` the
        drift references (see :mod:`stream_monitor.core.profile_signals`); ``slo_history`` the per-window
        SLO counts behind the error-budget burn rates (core/slo.py; without it no burn rate is computed).
        All are updated in place.
        """
        series, engagement = parse_window(fields, len(self._key_dims))
        history = {} if baselines is None else baselines
        values: list[SignalValue] = []
        ceiling: list[Breach] = []
        by_version = self.levels(series, with_version=True)
        self._rates(by_version, values, ceiling)
        self._latency(by_version, values, ceiling)
        self._freshness(by_version, values, ceiling)
        self._funnel(by_version, values)
        floor: list[Breach] = []
        self._volume(self.levels(series, with_version=False), volume_history, volume_absent, values, floor)
        self._sources(by_version, history, values, floor)
        self._engagement_ratio(series, engagement, history, values, floor)
        self.profile.evaluate(
            by_version, {} if profiles is None else profiles, history, values, ceiling, floor, series
        )
        raw = (*ceiling, *floor)
        kept = self.explain_away(ceiling, series) + localise(floor, values, self._key_dims)
        slo_values: list[SignalValue] = []
        if slo_history is not None and self.topology.slo.objectives:
            # Burn alerts are symptoms on whole series, not localised: appended as they are.
            slo_values, slo_breaches = self.slo.update(by_version, slo_history)
            kept.extend(slo_breaches)
        return WindowEvaluation(values, slo_values, kept, raw, engagement)

    def clear_ratios(self) -> dict[str, float]:
        """Per ceiling signal, the share of its threshold a value must fall under to resolve an alert."""
        ratios = {rule.signal: rule.clear_ratio for rule in self.topology.rates}
        ratios["latency"] = self.topology.latency.clear_ratio
        ratios["freshness"] = self.topology.freshness.clear_ratio
        ratios["error_budget_burn"] = self.topology.slo.clear_ratio
        for spec in self.profile.rates.values():
            ratios[spec.signal] = spec.clear_ratio
        return ratios

    def measure(self, stats: SeriesStats, signal: str, metric: str) -> float | None:
        """The value of a ceiling signal (rate or latency quantile) on ``stats``; None below min_count."""
        if signal == "latency":
            quantile, stage = metric.split(".", 1)
            buckets = stats.latency.get(stage)
            if stats.n < self.topology.latency.min_count or not buckets:
                return None
            return self.buckets.quantile(buckets, int(quantile[1:]) / 100)
        if signal == "freshness":
            quantile, feature = metric.split(".", 1)
            buckets = stats.ages.get(feature)
            if not buckets or sum(buckets.values()) < self.topology.freshness.min_count:
                return None
            return self.buckets.quantile(buckets, int(quantile[1:].removesuffix("_age_s")) / 100)
        if signal in self._profile_rates:
            counts = self.profile.rate(stats, signal, metric)
            return None if counts is None else counts[0] / counts[1]
        rule = self._rate_rules[signal]
        if stats.n < rule.min_count:
            return None
        return stats.counters.get(rule.counter, 0) / stats.n

    def explain_away(
        self, breaches: list[Breach], series: Mapping[tuple[str, ...], SeriesStats]
    ) -> list[Breach]:
        """Keep the breaches that say where the problem is.

        A tail quantile or a rate that breaches in one slice (region=eu) also breaches in every roll-up
        that contains enough of that slice (the platforms, the total). Within each (signal, metric, model,
        version, arm, surface) group:

        1. a segment dimension *localises* the breach when some, not all, of its values breach and the
           rest of the traffic (its other values together) does not; when no dimension does on its own,
           the dimensions with breaching values localise it together if the traffic outside all of
           those values does not breach (two independent problems, e.g. eu and android);
        2. the breaching values of localising dimensions are taken strongest first (observed /
           threshold), then narrowest; one is kept unless a kept one *explains* it, i.e. the statistic
           over its slice without the kept slice no longer breaches or has too little data to show a
           breach of its own (two slices that clearly explain each other, each back below its clearing
           level without the other, are both kept: the problem sits in their intersection);
        3. the top-level roll-up is kept when nothing localises it, or when it still breaches without the
           kept slices (a global problem on top of a local one);
        4. with no top-level breach, slice breaches are kept strongest first unless explained.
        """
        n_base = len(KEY_DIMS)
        groups: dict[tuple[object, ...], list[Breach]] = {}
        for breach in breaches:
            groups.setdefault((breach.signal, breach.metric, breach.key[:n_base]), []).append(breach)
        kept: list[Breach] = []
        for (_, _, base), group in groups.items():
            members = {k: v for k, v in series.items() if k[:n_base] == base}
            kept.extend(self._localise_group(group, members, n_base))
        return kept

    def _localise_group(
        self, group: list[Breach], members: Mapping[tuple[str, ...], SeriesStats], n_base: int
    ) -> list[Breach]:
        top = next((b for b in group if all(v == ALL for v in b.key[n_base:])), None)
        exemplar = group[0]

        def breaches(stats: SeriesStats) -> bool:
            value = self._evidence(stats, exemplar.signal, exemplar.metric)
            return value is not None and exemplar.threshold is not None and value > exemplar.threshold

        # Dimensions where some, not all, values breach, with the breaching values.
        partial: dict[int, set[str]] = {}
        for dim in range(n_base, len(self._key_dims)):
            breaching = {b.key[dim] for b in group if _only_dim(b.key, n_base) == dim}
            if breaching and len(breaching) < len({k[dim] for k in members}):
                partial[dim] = breaching
        localising = [
            dim
            for dim, values in partial.items()
            if not breaches(merged(st for k, st in members.items() if k[dim] not in values))
        ]
        if not localising and partial:
            # No single dimension explains it, but maybe several together (eu and android at once).
            rest = merged(
                st for k, st in members.items() if not any(k[d] in values for d, values in partial.items())
            )
            if rest.n and not breaches(rest):
                localising = list(partial)
        slices = [b for b in group if _only_dim(b.key, n_base) in localising]
        share = {id(b): sum(st.n for k, st in members.items() if matches_slice(k, b.key)) for b in slices}
        chosen: list[Breach] = []
        # Strongest first (the source of a tail problem has the worst tail), then the narrowest slice.
        for breach in sorted(slices, key=lambda b: (-_strength(b), share[id(b)])):
            if not any(
                self._explained(breach, by, members) is not False
                and self._explained(by, breach, members, clearly=True) is not True
                for by in chosen
            ):
                chosen.append(breach)
        # A slice chosen early (a tie, or noise) may turn out to be explained by one chosen later.
        pruned = True
        while pruned:
            pruned = False
            for breach in chosen:
                if any(
                    other is not breach
                    and self._explained(breach, other, members) is not False
                    and self._explained(other, breach, members, clearly=True) is not True
                    for other in chosen
                ):
                    chosen.remove(breach)
                    pruned = True
                    break
        if chosen:
            if top is not None and breaches(
                merged(st for k, st in members.items() if not any(matches_slice(k, c.key) for c in chosen))
            ):
                chosen.append(top)  # a global problem on top of the local ones
            return chosen
        if top is not None:
            return [top]
        for breach in sorted(group, key=_strength, reverse=True):
            if not any(self._explained(breach, by, members) is not False for by in chosen):
                chosen.append(breach)
        return chosen

    def _explained(
        self,
        breach: Breach,
        by: Breach,
        series: Mapping[tuple[str, ...], SeriesStats],
        clearly: bool = False,
    ) -> bool | None:
        """Whether ``breach`` no longer breaches once the slice of ``by`` is taken out of it.

        None when what is left has too little data to say either way. ``clearly`` asks for what is left
        to be back below the alert's clearing level (threshold x clear_ratio), not just the threshold:
        it takes that much to claim a slice's whole problem sits inside another slice.
        """
        residual = merged(
            s for k, s in series.items() if matches_slice(k, breach.key) and not matches_slice(k, by.key)
        )
        # Whether what is left still breaches is judged like an alert (with confidence for rates);
        # "clearly" below the clearing level is judged on the plain value.
        value = (self.measure if clearly else self._evidence)(residual, breach.signal, breach.metric)
        if value is None or breach.threshold is None:
            return None if residual.n else True
        return value <= breach.threshold * (
            self._clear_ratio(breach.signal, breach.metric) if clearly else 1.0
        )

    def _evidence(self, stats: SeriesStats, signal: str, metric: str) -> float | None:
        """The value compared with a ceiling to decide a breach: for rates, the Wilson lower bound."""
        if signal in self._profile_rates:
            counts = self.profile.rate(stats, signal, metric)
            spec = self.profile.rates[(signal, metric)]
            return None if counts is None else wilson_lower_bound(counts[0], counts[1], spec.z)
        rule = self._rate_rules.get(signal)
        if rule is None:
            return self.measure(stats, signal, metric)
        if stats.n < rule.min_count:
            return None
        return wilson_lower_bound(stats.counters.get(rule.counter, 0), stats.n, rule.z)

    def _clear_ratio(self, signal: str, metric: str = "") -> float:
        if signal in self._profile_rates:
            return self.profile.rates[(signal, metric)].clear_ratio
        if signal == "latency":
            return self.topology.latency.clear_ratio
        if signal == "freshness":
            return self.topology.freshness.clear_ratio
        return self._rate_rules[signal].clear_ratio

    def _rates(
        self, levels: Mapping[tuple[str, ...], SeriesStats], values: list[SignalValue], breaches: list[Breach]
    ) -> None:
        for rule in self.topology.rates:
            for key, stats in levels.items():
                if stats.n < rule.min_count:
                    continue
                flagged = stats.counters.get(rule.counter, 0)
                rate = flagged / stats.n
                values.append(SignalValue(rule.signal, "ratio", key, rate, trials=stats.n))
                # Alert only when the rate is above the ceiling with confidence, not when a small slice
                # happens to catch a few unlucky requests (4 of 198 is 2.02 %, but says little).
                if rate > rule.threshold and wilson_lower_bound(flagged, stats.n, rule.z) > rule.threshold:
                    severity = "critical" if rate > rule.threshold * rule.critical_factor else "warning"
                    breaches.append(
                        Breach(
                            rule.signal,
                            "ratio",
                            key,
                            rate,
                            None,
                            rule.threshold,
                            "ratio",
                            severity,
                            f"{rule.signal.replace('_', ' ')} is {rate:.1%} over {int(stats.n)} requests, "
                            f"above the {rule.threshold:.1%} limit",
                        )
                    )

    def _latency(
        self, levels: Mapping[tuple[str, ...], SeriesStats], values: list[SignalValue], breaches: list[Breach]
    ) -> None:
        rule = self.topology.latency
        for key, stats in levels.items():
            if stats.n < rule.min_count:
                continue
            for stage, slas in rule.slas_ms.items():
                buckets = stats.latency.get(stage)
                if not buckets:
                    continue
                for q in (0.5, 0.95, 0.99):
                    observed = self.buckets.quantile(buckets, q)
                    metric = f"p{round(q * 100)}.{stage}"
                    values.append(SignalValue("latency", metric, key, observed))
                    sla = slas.get(q)
                    if sla is not None and observed > sla:
                        severity = "critical" if observed > sla * rule.critical_factor else "warning"
                        breaches.append(
                            Breach(
                                "latency",
                                metric,
                                key,
                                observed,
                                None,
                                sla,
                                "ms",
                                severity,
                                f"{stage} latency p{round(q * 100)} is {observed:.0f} ms over "
                                f"{int(stats.n)} requests, above the {sla:.0f} ms SLA",
                            )
                        )

    def _freshness(
        self, levels: Mapping[tuple[str, ...], SeriesStats], values: list[SignalValue], breaches: list[Breach]
    ) -> None:
        rule = self.topology.freshness
        for key, stats in levels.items():
            for feature, slas in rule.slas_s.items():
                for q, sla in slas.items():
                    metric = f"p{round(q * 100)}_age_s.{feature}"
                    observed = self.measure(stats, "freshness", metric)
                    if observed is None:
                        continue
                    values.append(SignalValue("freshness", metric, key, observed))
                    if observed > sla:
                        breaches.append(
                            Breach(
                                "freshness",
                                metric,
                                key,
                                observed,
                                None,
                                sla,
                                "s",
                                "critical" if observed > sla * rule.critical_factor else "warning",
                                f"feature {feature} is stale: p{round(q * 100)} age {_age(observed)}, "
                                f"above the {_age(sla)} freshness SLA",
                            )
                        )

    def _funnel(self, levels: Mapping[tuple[str, ...], SeriesStats], values: list[SignalValue]) -> None:
        # Stage-to-stage pass rates: exported for dashboards and diagnosis; no alert rule of their own yet.
        for key, stats in levels.items():
            retrieved = stats.counters.get("fun.retrieved", 0)
            if not retrieved:
                continue
            for stage in ("filtered", "ranked", "returned"):
                values.append(
                    SignalValue(
                        "funnel",
                        f"{stage}_per_retrieved",
                        key,
                        stats.counters.get(f"fun.{stage}", 0) / retrieved,
                        trials=stats.n,
                    )
                )

    def _sources(
        self,
        levels: Mapping[tuple[str, ...], SeriesStats],
        history: dict[str, list[float]],
        values: list[SignalValue],
        breaches: list[Breach],
    ) -> None:
        rule = self.topology.sources
        if not rule.sources:
            return
        for key, stats in levels.items():
            total = sum(v for k, v in stats.counters.items() if k.startswith("src."))
            if stats.n < rule.min_count or total <= 0:
                continue
            series = join_series(key)
            for source in rule.sources:
                share = stats.counters.get(f"src.{source}", 0) / total
                metric = f"share.{source}"
                # Candidates of one request come together: the requests are the independent trials.
                values.append(SignalValue("candidate_source", metric, key, share, trials=stats.n))
                past = touch_history(history, f"candidate_source|{metric}|{series}")
                breached = False
                if len(past) >= rule.min_history:
                    expected = statistics.median(past)
                    floor = expected * (1.0 - rule.drop_ratio)
                    if expected >= rule.min_share and share < floor:
                        breached = True
                        breaches.append(
                            Breach(
                                "candidate_source",
                                metric,
                                key,
                                share,
                                expected,
                                floor,
                                "ratio",
                                "critical" if share == 0 else "warning",
                                f"candidate source {source} supplies {share:.1%} of candidates, against "
                                f"a trailing median of {expected:.1%}",
                            )
                        )
                if not breached:
                    past.append(share)
                    del past[: -rule.baseline_windows]

    def _engagement_ratio(
        self,
        series: Mapping[tuple[str, ...], SeriesStats],
        engagement: Mapping[str, float],
        history: dict[str, list[float]],
        values: list[SignalValue],
        breaches: list[Breach],
    ) -> None:
        # Engagement events carry only a request id, so without the serving join this is one global ratio.
        rule = self.topology.engagement
        # A shadow's serving events re-score requests users were served once already (no engagement).
        requests = sum(s.n for key, s in series.items() if key[2] != "shadow")
        if requests < rule.min_requests:
            return
        key = (ALL,) * len(self._key_dims)
        metric = f"{rule.action}s_per_request"
        ratio = engagement.get(rule.action, 0) / requests
        values.append(SignalValue("engagement_ratio", metric, key, ratio, trials=requests))
        past = touch_history(history, f"engagement_ratio|{metric}|*")
        if len(past) >= rule.min_history:
            expected = statistics.median(past)
            floor = expected * (1.0 - rule.drop_ratio)
            if ratio < floor:
                breaches.append(
                    Breach(
                        "engagement_ratio",
                        metric,
                        key,
                        ratio,
                        expected,
                        floor,
                        "ratio",
                        "critical",
                        f"{ratio:.2f} {rule.action} events logged per serving request against a trailing "
                        f"median of {expected:.2f}: engagement logging looks broken",
                    )
                )
                return
        past.append(ratio)
        del past[: -rule.baseline_windows]

    def _volume(
        self,
        levels: Mapping[tuple[str, ...], SeriesStats],
        history: dict[str, list[float]],
        absent: dict[str, int],
        values: list[SignalValue],
        breaches: list[Breach],
    ) -> None:
        rule = self.topology.volume
        counts = {join_series(k): s.n for k, s in levels.items()}
        for name in set(history) | set(counts):
            count = counts.get(name, 0.0)
            key = split_series(name)
            past = history.setdefault(name, [])
            absent[name] = 0 if count else absent.get(name, 0) + 1
            if absent[name] > rule.forget_after_windows:
                del history[name], absent[name]
                continue
            values.append(SignalValue("volume", "count", key, count))
            breached = False
            if len(past) >= rule.min_history:
                expected = statistics.median(past)
                floor = expected * (1.0 - rule.drop_ratio)
                if expected >= rule.min_expected and count < floor and poisson_cdf(count, floor) < rule.alpha:
                    breached = True
                    drop = 1.0 - count / expected
                    what = "no events (silent)" if count == 0 else f"{count:.0f} events, {drop:.0%} below"
                    breaches.append(
                        Breach(
                            "volume",
                            "count",
                            key,
                            count,
                            expected,
                            floor,
                            "events",
                            "critical" if count == 0 else "warning",
                            f"{what} against a trailing median of {expected:.0f} per window",
                        )
                    )
            # Windows that breach do not teach the baseline: an outage must not become the new normal.
            if not breached:
                past.append(count)
                del past[: -rule.baseline_windows]


def _age(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def _strength(breach: Breach) -> float:
    return breach.observed / breach.threshold if breach.threshold else 0.0


def _only_dim(key: tuple[str, ...], n_base: int) -> int | None:
    """The one segment dimension a roll-up key fixes (None for the top level or several dimensions)."""
    fixed = [i for i in range(n_base, len(key)) if key[i] != ALL]
    return fixed[0] if len(fixed) == 1 else None


def localise(breaches: list[Breach], values: list[SignalValue], key_dims: tuple[str, ...]) -> list[Breach]:
    """Keep each breach at the level that explains it.

    Breaches are compared within one (signal, metric, model, version, arm, surface) group. A segment
    dimension *localises* the group when some, but not all, of the values evaluated for it breach; then
    the breaching values of localising dimensions are kept and the roll-ups above them are dropped. When
    no dimension localises, the top-level roll-up is kept.

    >>> dims = ("model", "model_version", "arm", "surface", "region")
    >>> vals = [SignalValue("latency", "p99.total", ("m", "v", "c", "h", r), 0) for r in ("eu", "us", "*")]
    >>> b = lambda r: Breach("latency", "p99.total", ("m", "v", "c", "h", r), 9, None, 1, "ms", "warning", "")
    >>> [x.key[-1] for x in localise([b("eu"), b("*")], vals, dims)]
    ['eu']
    >>> [x.key[-1] for x in localise([b("eu"), b("us"), b("*")], vals, dims)]
    ['*']
    """
    n_base = len(KEY_DIMS)
    n_dims = len(key_dims)

    def group_of(signal: str, metric: str, key: tuple[str, ...]) -> tuple[object, ...]:
        return (signal, metric, key[:n_base])

    def single_dim(key: tuple[str, ...]) -> int | None:
        set_dims = [i for i in range(n_base, n_dims) if key[i] != ALL]
        return set_dims[0] if len(set_dims) == 1 else None

    evaluated: dict[tuple[object, ...], dict[int, set[str]]] = {}
    for value in values:
        dim = single_dim(value.key)
        if dim is not None:
            per_dim = evaluated.setdefault(group_of(value.signal, value.metric, value.key), {})
            per_dim.setdefault(dim, set()).add(value.key[dim])

    groups: dict[tuple[object, ...], list[Breach]] = {}
    for breach in breaches:
        groups.setdefault(group_of(breach.signal, breach.metric, breach.key), []).append(breach)
    kept: list[Breach] = []
    for group_key, group in groups.items():
        localising: set[int] = set()
        for dim, seen in evaluated.get(group_key, {}).items():
            breaching = {b.key[dim] for b in group if single_dim(b.key) == dim}
            if breaching and len(breaching) < len(seen):
                localising.add(dim)
        if localising:
            kept.extend(
                b
                for b in group
                if any(b.key[i] != ALL for i in range(n_base, n_dims))
                and all(b.key[i] == ALL or i in localising for i in range(n_base, n_dims))
            )
        else:
            kept.extend(b for b in group if all(b.key[i] == ALL for i in range(n_base, n_dims)))
    return kept
