"""Per-request profiling on the hot path: feature values and slates turned into window-sum counts.

The window-sum fields it writes under a series (``<series>#<field>``), all plain counts:

=====================  ==========================================================================
``prof``               requests profiled (the denominator of the quality rates)
``fv.<f>.<bin>``       numeric feature ``f`` values per bin
``fc.<f>.<value>``     categorical feature ``f`` values (capped per feature; the rest ``other``)
``fnull.<f>``          feature missing or null
``fbad.<f>``           feature present with the wrong type (a string for a numeric feature, ...)
``fdef.<f>``           feature equal to its declared default value
``sc.<bin>``           item scores per bin (every item of every profiled slate)
``rk.slates``          profiled slates with at least one item
``rk.multi``           ... with at least two scored items (the denominator of ``rk.const``)
``rk.const``           ... whose scores are all equal (a model returning a constant)
``rk.items``           items served; ``rk.dup`` items repeating an earlier item of the same slate
``rk.pairs``           adjacent scored pairs; ``rk.inv`` pairs whose score rises with position
``it.<bucket>``        served items of the sampled part of the catalogue, per hash bucket (coverage and
                       concentration; see :class:`~stream_monitor.core.profile.ItemBuckets`)
=====================  ==========================================================================

Only one request in ``features.sample_every`` is profiled, and of those one slate in
``ranking.sample_every``, chosen by a hash of the request id (so window sums stay a function of the
input, whichever worker or replay computes them): distribution tests need hundreds of values per window,
not every request, and a slate of 20 items is the most expensive part of an event.
"""

from __future__ import annotations

import zlib
from itertools import pairwise
from typing import Any

from stream_monitor.core.events import ServingEvent
from stream_monitor.core.profile import ItemBuckets, LinearBins, SignedLogBins, ValueCap
from stream_monitor.core.topology import Topology

__all__ = ["Profiler"]

Bins = LinearBins | SignedLogBins


def feature_bins(topology: Topology) -> dict[str, Bins]:
    """The binning of each numeric feature (shared by the profiler and the evaluator)."""
    out: dict[str, Bins] = {}
    for spec in topology.features.features:
        if spec.kind == "numeric":
            out[spec.name] = (
                LinearBins(spec.range[0], spec.range[1], spec.bins)
                if spec.range is not None
                else SignedLogBins(spec.relative_width)
            )
    return out


def score_bins(topology: Topology) -> LinearBins:
    lo, hi = topology.ranking.score_range
    return LinearBins(lo, hi, topology.ranking.score_bins)


class Profiler:
    """Adds one request's profile to a window's sums.

    >>> from stream_monitor.core.topology import FeatureRule, FeatureSpec, RankingRule
    >>> from stream_monitor.core.windows import WindowSpec
    >>> topo = Topology("t", WindowSpec(60_000), features=FeatureRule(features=(
    ...     FeatureSpec("age", range=(0, 100), bins=10), FeatureSpec("country", kind="categorical"))),
    ...     ranking=RankingRule(enabled=True, item_buckets=16, item_sample=1))
    >>> ev = ServingEvent("r1", 0, "m", "v", "control", "home", {}, {},
    ...                   features={"age": 42, "country": "FR"},
    ...                   items=[{"id": "a", "score": 0.9}, {"id": "b", "score": 0.95},
    ...                          {"id": "a", "score": 0.1}])
    >>> window: dict[str, float] = {}
    >>> Profiler(topo).add(window, "s#", ev)
    >>> {k: v for k, v in window.items() if not k.startswith(("s#it.", "s#sc."))}
    {'s#prof': 1, 's#fv.age.4': 1, 's#fc.country.FR': 1, 's#rk.slates': 1, 's#rk.items': 3, 's#rk.dup': 1, \
's#rk.multi': 1, 's#rk.pairs': 2, 's#rk.inv': 1}
    """

    def __init__(self, topology: Topology) -> None:
        rule = topology.features
        bins = feature_bins(topology)
        # (name, bins or None for categorical, default) in declaration order.
        self._features = [(s.name, bins.get(s.name), s.default) for s in rule.features]
        self._cap = ValueCap(rule.max_values)
        self.ranking = topology.ranking.enabled
        self.ranking_every = topology.ranking.sample_every
        self._scores = score_bins(topology)
        self._items = ItemBuckets(topology.ranking.item_buckets, topology.ranking.item_sample)
        self.sample_every = rule.sample_every

    @property
    def enabled(self) -> bool:
        return bool(self._features) or self.ranking

    def add(self, window: dict[str, float], prefix: str, event: ServingEvent) -> None:
        """Profile ``event`` if it is in the sample (chosen by a hash of its request id, so that the
        window sums are a function of the input: every worker, replay and restart picks the same)."""
        if self.sample_every == 1 and self.ranking_every == 1:
            self._add(window, prefix, event, True)
            return
        h = zlib.crc32(event.request_id.encode())
        if h % self.sample_every == 0:
            self._add(window, prefix, event, (h // self.sample_every) % self.ranking_every == 0)

    def _add(self, window: dict[str, float], prefix: str, event: ServingEvent, slate: bool) -> None:
        get = window.get
        name = prefix + "prof"
        window[name] = get(name, 0) + 1
        values = event.features
        for feature, bins, default in self._features:
            value = values.get(feature)
            if value is None:
                name = f"{prefix}fnull.{feature}"
            elif bins is not None:
                if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
                    if default is not None and value == default:
                        name = f"{prefix}fdef.{feature}"
                        window[name] = get(name, 0) + 1
                    name = f"{prefix}fv.{feature}.{bins.bin(value)}"
                else:
                    name = f"{prefix}fbad.{feature}"
            elif isinstance(value, str | int | bool) and not isinstance(value, float):
                text = value if isinstance(value, str) else str(value).lower()
                if default is not None and text == str(default):
                    name = f"{prefix}fdef.{feature}"
                    window[name] = get(name, 0) + 1
                name = f"{prefix}fc.{feature}.{self._cap.value(feature, text)}"
            else:
                name = f"{prefix}fbad.{feature}"
            window[name] = get(name, 0) + 1
        # A fallback serves a fixed list, not the model's ranking: its own rate signal watches it.
        if slate and self.ranking and event.items and not event.fallback:
            self._slate(window, prefix, event.items)

    def _slate(self, window: dict[str, float], prefix: str, items: list[Any]) -> None:
        # The hot loop of the profiler (20 items a slate): exact type checks, no method lookups per item.
        get = window.get
        score_bin = self._scores.bin
        buckets = self._items
        cached = buckets.cache
        seen: set[str] = set()
        scores: list[float] = []
        dup = 0
        for item in items:
            if type(item) is not dict:
                continue
            item_id = item.get("id")
            if type(item_id) is str:
                if item_id in seen:
                    dup += 1
                else:
                    seen.add(item_id)
                bucket = cached.get(item_id)
                if bucket is None:
                    bucket = buckets.bucket(item_id)
                if bucket >= 0:
                    name = f"{prefix}it.{bucket}"
                    window[name] = get(name, 0) + 1
            score = item.get("score")
            if type(score) is float or type(score) is int:
                scores.append(score)
        n_items = len(seen) + dup
        if not n_items and not scores:
            return
        for score in scores:
            name = f"{prefix}sc.{score_bin(score)}"
            window[name] = get(name, 0) + 1
        for field, count in (("slates", 1), ("items", n_items), ("dup", dup)):
            if count:
                name = f"{prefix}rk.{field}"
                window[name] = get(name, 0) + count
        if len(scores) >= 2:
            inversions = sum(1 for a, b in pairwise(scores) if b > a)
            for field, count in (
                ("multi", 1),
                ("const", 1 if min(scores) == max(scores) else 0),
                ("pairs", len(scores) - 1),
                ("inv", inversions),
            ):
                if count:
                    name = f"{prefix}rk.{field}"
                    window[name] = get(name, 0) + count
