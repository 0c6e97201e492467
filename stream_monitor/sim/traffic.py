"""Seeded traffic simulator: a recommender's serving, engagement, deployment and dataset events, in ts order.

:class:`TrafficSimulator` produces the event contract the monitor consumes (as plain dicts ready for
``orjson.dumps``): one ``serving`` event per request, ``engagement`` events (impressions, clicks, plays,
completes) seconds to minutes after it, and a ``deployment`` event per (model, arm) at the start. Requests
arrive as a Poisson process whose rate follows a 24 h sinusoid of event time; segments, latencies, funnels,
slates and features are drawn from fixed, plausible distributions; :mod:`.incidents` bend them for a target
slice after an onset.

Design choices that callers may rely on:

* Deterministic: one ``numpy.random.Generator`` seeded from ``seed``; no global RNG, no wall clock.
* Chunk-independent: requests are generated in fixed blocks of event time (1 s, shorter at high rates; see
  :attr:`TrafficSimulator.block_ms`), so pulling events with many small
  :meth:`TrafficSimulator.events_until` calls gives exactly the same stream as one call. The stream is a
  function of (seed, start_ms, rate_per_s, incidents, config) only.
* Incident-transparent: the random draws never depend on the incidents, so a run with incidents equals the
  run without them everywhere outside the incidents' slices and windows (the tests check this). For
  ``engagement_logging_break`` the window applies to each engagement event's own ``ts``.
* Several random streams: everything the first version of the simulator drew comes from ``numpy`` generator
  ``seed`` in the same order as before; draws added later (the ``days_since_signup`` feature age, the
  per-request and per-engagement-event uniforms of ``source_outage`` and ``engagement_logging_break``)
  come from a second generator seeded ``[seed, 1]``, so adding them changed no earlier field; the draws of
  the profile incidents (null spikes, score, popularity and diversity collapses) come from another,
  seeded ``[seed, 7]``.
* Datasets (opt-in): for each ``(name, every_s, rows)`` in ``SimConfig.datasets`` a ``dataset`` event
  announces one partition per period. Partition 0 (the period just before ``start_ms``) lands at
  ``start_ms``; partition k >= 1 is due at ``start_ms + k * every`` and lands after a lognormal delay
  (median min(5 min, every / 10), at most every / 3), with ``rows`` +/- 10 %. Those draws come from a
  generator per partition, seeded ``[seed, 2, dataset index, k]``, so datasets change nothing else
  in the stream, and a ``dataset_late`` incident only moves its partitions' landing times.
* Ordered: events come out in non-decreasing ``ts``; engagement that lands later waits in a per-block
  calendar queue. A pull up to time T yields exactly the events with ``ts < T``; engagement scheduled past
  the end of a run is simply never yielded.

Status semantics: every request is exactly one of ok, error, fallback or empty, so each incident moves one
status rate only. An errored response has ``error`` set, ``items == []`` and all-zero funnel and sources;
an empty slate has ``error is None``, ``items == []`` and ``funnel["returned"] == 0`` (the monitor's
``empty_slate`` excludes errors the same way); a fallback serves the fixed trending list with ``fallback``
true. Only ok and fallback responses get engagement.

``feature_ts`` carries :data:`~stream_monitor.sim.incidents.FRESHNESS_FEATURES`: ``watch_minutes_7d``
(streaming aggregate, age median 12 min, p99 about 50 min, at most 2 h) and ``days_since_signup`` (hourly
batch, age median about 33 min, p99 about 63 min, at most 2 h).

A ``source_outage`` of source S zeroes ``sources[S]`` and hands its candidates to the remaining sources in
proportion to their counts (``retrieved`` and the rest of the funnel are unchanged, so only the source mix
moves); items of a served slate that came from S are re-labelled with another source drawn from the
remaining sources' mix (ids, scores and order unchanged; items from other sources keep their label). A
fallback response still serves the fixed trending list: it is a precomputed cache, not the live candidate
source, so with S = trending the fallback's items keep source ``trending``. If overlapping outages leave a
request with no source at all, nothing is retrieved: an ok response becomes an empty slate with an all-zero
funnel.

This module is pure: standard library and numpy only (``to_jsonl`` imports orjson lazily).
"""

from __future__ import annotations

import gc
import math
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from stream_monitor.sim.incidents import (
    ARMS,
    BROKEN_FEATURE_CLICK_FACTOR,
    FRESHNESS_FEATURES,
    INCIDENT_KINDS,
    SHADOW_INCIDENT_KINDS,
    SOURCES,
    STAGES,
    TENURES,
    GroundTruth,
    Incident,
)

__all__ = ["MAX_BLOCK_MS", "SOURCES", "Event", "SimConfig", "SimEvent", "TopicKind", "TrafficSimulator"]

TopicKind = Literal["serving", "engagement", "deployment", "dataset"]
Event = dict[str, Any]
# (topic kind, Kafka key, event): the key is request_id for serving/engagement, model for deployments and
# the dataset name for datasets.
SimEvent = tuple[TopicKind, bytes | None, Event]
# Internal queue entry: (ts, kind, key, event).
_Entry = tuple[int, TopicKind, bytes | None, Event]

# Requests are generated a block of event time at a time. A block holds about _PER_BLOCK requests: far
# more and the block's dicts outgrow the CPU caches (generation slows 2-3x at 30k/s), far fewer and the
# per-block numpy overhead dominates. Sizes come from a fixed ladder so the stream stays reproducible.
MAX_BLOCK_MS = 1000
_BLOCK_LADDER_MS = (1000, 500, 200, 100, 50, 20, 10)
_PER_BLOCK = 250
# Engagement comes at least this long after its request; it must be >= MAX_BLOCK_MS so that engagement
# never lands in the block being generated (see TrafficSimulator._load_block).
_MIN_ENGAGEMENT_DELAY_MS = 1000
_ERRORS: tuple[str, ...] = ("timeout", "feature_store_unavailable", "ranker_unavailable")
_COUNTRIES: Mapping[str, tuple[str, ...]] = {
    "us": ("US",),
    "eu": ("DE", "FR", "GB", "ES", "IT"),
    "latam": ("BR", "MX", "AR", "CO"),
    "apac": ("JP", "KR", "AU", "IN"),
}
_MS_PER_DAY = 86_400_000
_MINUTE_MS = 60_000
# Clean feature ages (ts - feature_ts). watch_minutes_7d comes from a streaming aggregate: lognormal around
# 12 min, clipped to [2 min, 2 h]. days_since_signup comes from an hourly batch job: a lognormal landing lag
# around 5 min (clipped to [1, 60] min) plus the uniform time since that run, so never above 2 h.
_WATCH_AGE_MEDIAN_MS, _WATCH_AGE_SIGMA = 12 * _MINUTE_MS, 0.6
_WATCH_AGE_RANGE_MS = (2 * _MINUTE_MS, 120 * _MINUTE_MS)
_BATCH_PERIOD_MS, _BATCH_LAG_MEDIAN_MS, _BATCH_LAG_SIGMA = 55 * _MINUTE_MS, 5 * _MINUTE_MS, 0.5
_BATCH_LAG_RANGE_MS = (1 * _MINUTE_MS, 60 * _MINUTE_MS)

# popularity_collapse fills slates from this many of the most popular items.
_POPULAR_ITEMS = 200

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Knobs of the simulated system. Defaults give a single healthy control model.

    Shares are (value, weight) pairs and need not sum to 1. ``stage_latency`` holds (stage, median ms,
    lognormal sigma); the defaults put the p99 of total latency near 150 ms.

    >>> SimConfig().canary_share, SimConfig(canary_share=0.05).arms
    (0.0, ('control', 'canary'))

    ``shadow_share`` > 0 deploys ``shadow_version`` as a shadow: that share of the control's requests is
    scored again by the shadow (a second serving event, same request id, arm ``shadow``, no engagement).
    """

    models: tuple[tuple[str, str], ...] = (("home-ranker", "home"),)
    control_version: str = "2026.11.20-3"
    canary_version: str = "2026.11.27-1"
    previous_version: str = "2026.11.13-2"
    canary_share: float = 0.0
    shadow_version: str = "2026.11.28-1"
    shadow_share: float = 0.0
    diurnal_amplitude: float = 0.3
    # Event-time hour (UTC) at which traffic peaks.
    diurnal_peak_hour: float = 20.0
    # When set, the diurnal curve reads start_ms as this hour of the day whatever its UTC hour: a run then
    # gives the same events (timestamps shifted) whenever it starts, e.g. a demo or a test "started now".
    diurnal_start_hour: float | None = None
    platforms: tuple[tuple[str, float], ...] = (("ios", 0.34), ("android", 0.36), ("web", 0.18), ("tv", 0.12))
    regions: tuple[tuple[str, float], ...] = (("us", 0.42), ("eu", 0.28), ("latam", 0.17), ("apac", 0.13))
    tenures: tuple[tuple[str, float], ...] = (("new", 0.22), ("established", 0.78))
    stage_latency: tuple[tuple[str, float, float], ...] = (
        ("retrieval", 20.0, 0.45),
        ("features", 24.0, 0.50),
        ("ranking", 22.0, 0.55),
    )
    overhead_ms: tuple[float, float] = (1.0, 6.0)
    catalogue_size: int = 5000
    zipf_exponent: float = 1.05
    slate_size: int = 20
    impressions: int = 3
    error_rate: float = 0.002
    fallback_rate: float = 0.01
    empty_slate_rate: float = 0.003
    click_rate: float = 0.08
    play_rate: float = 0.6
    complete_rate: float = 0.5
    engagement: bool = True
    # Batch datasets announced by ``dataset`` events: (name, every_s, rows per partition). None by default.
    datasets: tuple[tuple[str, float, int], ...] = ()

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("models must name at least one (model, surface)")
        if not 0.0 <= self.canary_share < 1.0:
            raise ValueError(f"canary_share must be in [0, 1), got {self.canary_share!r}")
        if not 0.0 <= self.shadow_share <= 1.0:
            raise ValueError(f"shadow_share must be in [0, 1], got {self.shadow_share!r}")
        if not 0.0 <= self.diurnal_amplitude <= 1.0:
            raise ValueError(f"diurnal_amplitude must be in [0, 1], got {self.diurnal_amplitude!r}")
        if self.diurnal_start_hour is not None and not 0.0 <= self.diurnal_start_hour < 24.0:
            raise ValueError(f"diurnal_start_hour must be in [0, 24), got {self.diurnal_start_hour!r}")
        if tuple(s for s, _, _ in self.stage_latency) != STAGES:
            raise ValueError(f"stage_latency must list the stages {STAGES} in order")
        if self.slate_size < 1 or self.catalogue_size < 2 * self.slate_size:
            raise ValueError("need slate_size >= 1 and catalogue_size >= 2 * slate_size")
        if not 0 <= self.impressions <= self.slate_size:
            raise ValueError("impressions must be in [0, slate_size]")
        for name, shares in (
            ("platforms", self.platforms),
            ("regions", self.regions),
            ("tenures", self.tenures),
        ):
            if not shares or any(w < 0 for _, w in shares) or sum(w for _, w in shares) <= 0:
                raise ValueError(f"{name} needs at least one value and non-negative weights summing > 0")
        for name, every_s, rows in self.datasets:
            if not name or not every_s > 0 or not math.isfinite(every_s) or rows < 0:
                raise ValueError(
                    f"datasets: ({name!r}, {every_s!r}, {rows!r}) needs a name, every_s > 0, rows >= 0"
                )
        if len({name for name, _, _ in self.datasets}) != len(self.datasets):
            raise ValueError("datasets: names must be unique")
        if set(dict(self.tenures)) - set(TENURES):
            raise ValueError(f"tenures must be drawn from {TENURES} (they shape features and sources)")

    @property
    def arms(self) -> tuple[str, ...]:
        """Arms that receive traffic: control, plus canary when ``canary_share > 0``."""
        return ARMS if self.canary_share > 0 else ARMS[:1]


def _cumulative(shares: tuple[tuple[str, float], ...]) -> tuple[npt.NDArray[np.object_], FloatArray]:
    names = np.array([n for n, _ in shares], dtype=object)
    weights = np.array([w for _, w in shares], dtype=np.float64)
    cum = np.cumsum(weights / weights.sum())
    cum[-1] = 1.0  # guard the last bucket against rounding so u < 1 always lands somewhere
    return names, cum


class TrafficSimulator:
    """Deterministic generator of serving, engagement and deployment events.

    Public attributes: ``seed``, ``start_ms``, ``rate_per_s``, ``config``, ``incidents``, ``block_ms`` (the
    generation block, chosen from the rate) and ``counts`` (events yielded so far, per topic kind).

    >>> sim = TrafficSimulator(seed=7, start_ms=1_764_086_400_000, rate_per_s=50)
    >>> events = list(sim.events(duration_s=10))
    >>> [kind for kind, _, _ in events[:2]]
    ['deployment', 'serving']
    >>> all(a[2]["ts"] <= b[2]["ts"] for a, b in zip(events, events[1:]))
    True
    >>> again = TrafficSimulator(seed=7, start_ms=1_764_086_400_000, rate_per_s=50)
    >>> list(again.events_until(1_764_086_405_000)) + list(again.events_until(1_764_086_410_000)) == events
    True
    """

    def __init__(
        self,
        seed: int,
        start_ms: int,
        rate_per_s: float,
        incidents: Sequence[Incident] = (),
        config: SimConfig | None = None,
    ) -> None:
        if not (rate_per_s >= 0 and math.isfinite(rate_per_s)):
            raise ValueError(f"rate_per_s must be finite and >= 0, got {rate_per_s!r}")
        self.seed = seed
        self.start_ms = int(start_ms)
        self.rate_per_s = float(rate_per_s)
        self.config = cfg = config or SimConfig()
        self.incidents: tuple[Incident, ...] = tuple(incidents)
        self._rng = np.random.default_rng(seed)
        # Draws added after the first version live on their own stream, so the original fields stay as they
        # were for a given seed (see the module docstring).
        self._rng2 = np.random.default_rng([seed, 1])
        self._rng_profile = np.random.default_rng([seed, 7])
        # Fourth stream: the bad-canary incidents' draws (one uniform per request).
        self._rng_canary = np.random.default_rng([seed, 11])
        # Fifth stream: the shadow's draws (which requests it scores, its slates and scores), so a run with
        # a shadow equals the run without one except for the added shadow events.
        self._rng_shadow = np.random.default_rng([seed, 13])
        self.block_ms = next((b for b in _BLOCK_LADDER_MS if rate_per_s * b / 1000 <= _PER_BLOCK), 10)

        self._platforms, self._platform_cum = _cumulative(cfg.platforms)
        self._regions, self._region_cum = _cumulative(cfg.regions)
        self._tenures, self._tenure_cum = _cumulative(cfg.tenures)
        self._models = np.array([m for m, _ in cfg.models], dtype=object)
        self._surfaces = np.array([s for _, s in cfg.models], dtype=object)
        self._arms = np.array(ARMS, dtype=object)
        self._versions = np.array([cfg.control_version, cfg.canary_version], dtype=object)
        self._check_incidents()

        # Countries flattened so a (region, uniform) pair picks one with pure array arithmetic.
        region_names = [str(r) for r in self._regions.tolist()]
        countries = [_COUNTRIES.get(r, (r.upper(),)) for r in region_names]
        self._country_flat = np.array([c for cs in countries for c in cs], dtype=object)
        self._country_len = np.array([len(cs) for cs in countries], dtype=np.int64)
        self._country_off = np.concatenate(([0], np.cumsum(self._country_len)[:-1])).astype(np.int64)
        tenure_names = [str(t) for t in self._tenures.tolist()]
        # Source mix by tenure: new users have little to continue watching, so trending fills in.
        mix = {"new": (0.50, 0.45, 0.05), "established": (0.55, 0.25, 0.20)}
        self._source_cum = np.cumsum(np.array([mix[t] for t in tenure_names]), axis=1)
        self._source_p = np.array([mix[t] for t in tenure_names])
        self._is_new = np.array([t == "new" for t in tenure_names])

        # Catalogue: popularity rank r has Zipf weight 1 / (r+1)^s; ids are shuffled so that "s0" is not
        # automatically the hit. Slates are drawn by inverse CDF on this long-tailed distribution.
        n_items = cfg.catalogue_size
        self._item_ids = np.array([f"s{i}" for i in self._rng.permutation(n_items).tolist()], dtype=object)
        weights = 1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** cfg.zipf_exponent
        self._item_cdf = np.cumsum(weights / weights.sum())
        self._item_cdf[-1] = 1.0
        # A fallback serves the same non-personalised trending list to everyone.
        self._fallback_ids: list[str] = self._item_ids[: cfg.slate_size].tolist()
        self._fallback_scores: list[float] = np.round(
            0.5 * np.exp(-0.05 * np.arange(cfg.slate_size)), 4
        ).tolist()

        # Calendar queue instead of a heap: events that are not generated in their own block (engagement,
        # deployments) wait in the list of the block their ts falls in. Engagement lands at least
        # a full block after its request, so a block's list is complete by the time that block is generated,
        # and one C-level sort per block replaces a Python heap pop per event.
        self._pending: defaultdict[int, list[_Entry]] = defaultdict(list)
        self._next_block = 0
        self._buf: list[_Entry] = []
        self._pos = 0
        self._now_ms = self.start_ms
        self.counts: dict[TopicKind, int] = {"serving": 0, "engagement": 0, "deployment": 0, "dataset": 0}
        for event in self._deployments():
            self._pending[0].append((event["ts"], "deployment", str(event["model"]).encode(), event))
        if cfg.shadow_share > 0:
            for event in self._shadow_deployments():
                self._pending[0].append((event["ts"], "deployment", str(event["model"]).encode(), event))
        # Next partition index to schedule, per dataset (see _schedule_datasets).
        self._next_partition = [0] * len(cfg.datasets)
        # Releases (ctr_drop_after_release): versions beyond control and canary, and their deployments.
        self._release_versions: list[str] = []
        for inc in self.incidents:
            if inc.kind in INCIDENT_KINDS and INCIDENT_KINDS[inc.kind].release:
                self._release_versions.append(str(inc.version))
                for event in self._release_deployments(inc):
                    block = max(0, (event["ts"] - self.start_ms) // self.block_ms)
                    self._pending[block].append(
                        (event["ts"], "deployment", str(event["model"]).encode(), event)
                    )

    # ----------------------------------------------------------------------------------- public API

    @property
    def now_ms(self) -> int:
        """Event time up to which (exclusive) every event has been yielded."""
        return self._now_ms

    @property
    def ground_truth(self) -> list[GroundTruth]:
        """Ground truth of every injected incident, in the order given."""
        return [inc.ground_truth for inc in self.incidents]

    def expected_rate(self, ts_ms: float) -> float:
        """Mean serving requests per second at event time ``ts_ms`` (before any traffic drop)."""
        cfg = self.config
        if cfg.diurnal_start_hour is None:
            hour = (ts_ms % _MS_PER_DAY) / 3_600_000
        else:
            hour = cfg.diurnal_start_hour + (ts_ms - self.start_ms) / 3_600_000
        return self.rate_per_s * (
            1.0 + cfg.diurnal_amplitude * math.cos(2 * math.pi * (hour - cfg.diurnal_peak_hour) / 24)
        )

    def events(self, duration_s: float) -> Iterator[SimEvent]:
        """Yield every not-yet-yielded event with ``ts < start_ms + duration_s * 1000``."""
        return self.events_until(self.start_ms + round(duration_s * 1000))

    def events_until(self, until_ms: int) -> Iterator[SimEvent]:
        """Yield every not-yet-yielded event with ``ts < until_ms``, in non-decreasing ``ts``.

        Safe to call repeatedly with growing ``until_ms`` (the demo drives it in accelerated chunks) and to
        abandon part-way: state advances before each yield, so the next call resumes where this stopped.
        """
        counts = self.counts
        while True:
            buf = self._buf
            if self._pos >= len(buf):
                if self.start_ms + self._next_block * self.block_ms >= until_ms:
                    break
                self._load_block()
                continue
            ts, kind, key, event = buf[self._pos]
            if ts >= until_ms:
                break
            self._pos += 1
            counts[kind] += 1
            self._now_ms = ts
            yield kind, key, event
        self._now_ms = max(self._now_ms, until_ms)

    def to_jsonl(self, path: str | Path, duration_s: float) -> dict[TopicKind, int]:
        """Write :meth:`events` for ``duration_s`` to ``path``, one JSON object per line; return counts."""
        # Lazy import keeps the module importable with numpy alone; orjson is a project dependency.
        import orjson

        written: dict[TopicKind, int] = {"serving": 0, "engagement": 0, "deployment": 0, "dataset": 0}
        with open(path, "wb") as fh:
            for kind, _key, event in self.events(duration_s):
                fh.write(orjson.dumps(event))
                fh.write(b"\n")
                written[kind] += 1
        return written

    # ----------------------------------------------------------------------------------- internals

    def _check_incidents(self) -> None:
        cfg = self.config
        vocab: dict[str, set[str]] = {
            "platform": {n for n, _ in cfg.platforms},
            "region": {n for n, _ in cfg.regions},
            "tenure": {n for n, _ in cfg.tenures},
            "model": {m for m, _ in cfg.models},
            "surface": {s for _, s in cfg.models},
            "arm": set(cfg.arms) | ({"shadow"} if cfg.shadow_share > 0 else set()),
        }
        datasets = {name for name, _, _ in cfg.datasets}
        for inc in self.incidents:
            if inc.dataset is not None and inc.dataset not in datasets:
                raise ValueError(
                    f"incident {inc.kind} targets dataset {inc.dataset!r}, which the simulator does not "
                    f"schedule; SimConfig.datasets has {sorted(datasets)}"
                )
            if inc.target.get("arm") == "shadow" and inc.kind not in SHADOW_INCIDENT_KINDS:
                raise ValueError(f"incident {inc.kind} cannot target the shadow arm (only shadow_* kinds)")
            for dim, value in inc.target.items():
                if value not in vocab[dim]:
                    # An incident on a slice that never receives traffic would have unreachable ground truth.
                    raise ValueError(
                        f"incident {inc.kind} targets {dim}={value!r}, which gets no traffic; "
                        f"known: {sorted(vocab[dim])}"
                    )

    def _load_block(self) -> None:
        """Make the next block current: its requests merged with the engagement that falls inside it."""
        block = self._next_block
        self._next_block += 1
        if self._next_partition:
            self._schedule_datasets(self.start_ms + (block + 1) * self.block_ms)
        # A block allocates thousands of acyclic dicts while tens of thousands more wait in the queue; letting
        # the cyclic GC rescan them every few hundred allocations costs 25-50 % of generation speed. Pausing
        # it for the block only delays collection (it resumes right after) and never affects correctness.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            serving = self._generate_block(self.start_ms + block * self.block_ms)
        finally:
            if gc_was_enabled:
                gc.enable()
        entries = self._pending.pop(block, [])
        entries.extend(serving)
        # Stable sort on ts only: queued events keep their (deterministic) insertion order among equals and
        # precede same-ts requests, so deployments at start_ms come first. Timsort merges the two runs.
        entries.sort(key=_ts_of)
        self._buf = entries
        self._pos = 0

    def _hex(self, nbytes: int) -> str:
        return self._rng.bytes(nbytes).hex()

    def _deployments(self) -> list[Event]:
        cfg = self.config
        out: list[Event] = []
        for model, surface in cfg.models:
            for arm in cfg.arms:
                canary = arm == "canary"
                version = cfg.canary_version if canary else cfg.control_version
                share = cfg.canary_share if canary else 1.0 - cfg.canary_share
                out.append(
                    {
                        "type": "deployment",
                        "ts": self.start_ms,
                        "model": model,
                        "model_version": version,
                        "arm": arm,
                        "traffic": round(share, 6),
                        "baseline_version": cfg.control_version if canary else cfg.previous_version,
                        "lineage": {
                            "training_data": f"s3://recs-data/{surface}/train/{version.split('-')[0]}/",
                            "feature_set": f"{surface}-features@v12",
                            "code_commit": self._hex(20),
                            "artifact_digest": "sha256:" + self._hex(32),
                            "validation": {"ndcg@10": round(0.40 + 0.02 * float(self._rng.random()), 4)},
                        },
                        "actor": "ci",
                        "reason": "canary rollout" if canary else "weekly retrain",
                    }
                )
        return out

    def _schedule_datasets(self, until_ms: int) -> None:
        """Queue the dataset partitions due before ``until_ms`` (each lands at or after its due time)."""
        start = self.start_ms
        for index, (name, every_s, rows) in enumerate(self.config.datasets):
            every_ms = round(every_s * 1000)
            while start + self._next_partition[index] * every_ms < until_ms:
                k = self._next_partition[index]
                self._next_partition[index] = k + 1
                due = start + k * every_ms
                # Third stream, one generator per partition: independent of everything else and of chunking.
                rng = np.random.default_rng([self.seed, 2, index, k])
                median_ms = min(300_000.0, every_ms / 10)
                delay = min(float(np.exp(np.log(median_ms) + 0.5 * rng.standard_normal())), every_ms / 3)
                count = round(rows * float(rng.uniform(0.9, 1.1)))
                landed = due + (0 if k == 0 else round(delay))
                for inc in self.incidents:
                    if inc.dataset == name and inc.active(due):
                        landed += round(inc.factor * 1000)
                period = datetime.fromtimestamp((due - every_ms) / 1000, tz=UTC)
                event: Event = {
                    "type": "dataset",
                    "name": name,
                    "partition": period.strftime("%Y-%m-%dT%H:%M"),
                    "ts": landed,
                    "rows": count,
                }
                self._pending[(landed - start) // self.block_ms].append(
                    (landed, "dataset", name.encode(), event)
                )

    def _release_deployments(self, inc: Incident) -> list[Event]:
        """Deployment events of a release incident: the new version at onset, the old one back at the end.

        No random draws (the lineage digests are hashes of the seed and version), so adding a release
        changes nothing else in the stream.
        """
        import hashlib

        cfg = self.config
        arm = inc.target.get("arm", "control")
        old = cfg.canary_version if arm == "canary" else cfg.control_version
        share = cfg.canary_share if arm == "canary" else 1.0 - cfg.canary_share
        out: list[Event] = []
        for model, surface in cfg.models:
            if inc.target.get("model", model) != model or inc.target.get("surface", surface) != surface:
                continue
            steps = [(inc.onset_ms, str(inc.version), old, "release")]
            if inc.end_ms is not None:
                steps.append((inc.end_ms, old, str(inc.version), "rollback"))
            for ts, version, baseline, reason in steps:
                digest = hashlib.sha256(f"{self.seed}|{model}|{version}".encode()).hexdigest()
                out.append(
                    {
                        "type": "deployment",
                        "ts": max(ts, self.start_ms),
                        "model": model,
                        "model_version": version,
                        "arm": arm,
                        "traffic": round(share, 6),
                        "baseline_version": baseline,
                        "lineage": {
                            "training_data": f"s3://recs-data/{surface}/train/{version.split('-')[0]}/",
                            "feature_set": f"{surface}-features@v12",
                            "code_commit": digest[:40],
                            "artifact_digest": "sha256:" + digest,
                        },
                        "actor": "ci",
                        "reason": reason,
                    }
                )
        return out

    def _draw_slates(self, n: int) -> IntArray:
        """(n, slate_size) popularity ranks, distinct within each row."""
        k = self.config.slate_size
        rng = self._rng
        ranks = np.searchsorted(self._item_cdf, rng.random((n, k)), side="right").astype(np.int64)
        n_items = len(self._item_cdf)
        # Duplicates (common among the head items) are redrawn uniformly from the whole catalogue until
        # none remain; each pass touches only the offending cells, so this converges in a few rounds.
        while True:
            order = np.argsort(ranks, axis=1, kind="stable")
            sorted_ranks = np.take_along_axis(ranks, order, axis=1)
            dup_sorted = np.zeros_like(sorted_ranks, dtype=bool)
            dup_sorted[:, 1:] = sorted_ranks[:, 1:] == sorted_ranks[:, :-1]
            if not dup_sorted.any():
                return ranks
            dup = np.zeros_like(dup_sorted)
            np.put_along_axis(dup, order, dup_sorted, axis=1)
            ranks[dup] = rng.integers(0, n_items, size=int(dup.sum()))

    def _incident_masks(
        self, ts: IntArray, codes: Mapping[str, IntArray], names: Mapping[str, npt.NDArray[np.object_]]
    ) -> list[tuple[Incident, BoolArray, BoolArray]]:
        """Per incident: (incident, request in its slice, request in its slice and window)."""
        out: list[tuple[Incident, BoolArray, BoolArray]] = []
        for inc in self.incidents:
            if inc.dataset is not None:
                continue  # a data-path incident: it moves dataset events only (see _schedule_datasets)
            in_slice = np.ones(len(ts), dtype=bool)
            for dim, value in inc.target.items():
                # Compare integer codes, not strings: the value's code is its index in the dim's names.
                where = np.flatnonzero(names[dim] == value)
                in_slice &= np.isin(codes[dim], where)
            mask = in_slice & (ts >= inc.onset_ms)
            if inc.end_ms is not None:
                mask &= ts < inc.end_ms
            out.append((inc, in_slice, mask))
        return out

    def _source_outage(
        self,
        dead: BoolArray,
        tenure: IntArray,
        u_src: FloatArray,
        item_src: IntArray,
        sources: IntArray,
        funnel: IntArray,
        status: IntArray,
    ) -> IntArray:
        """Apply candidate-source outages in place (counts, funnel, status); return the new item sources.

        ``dead[i, j]``: source j returned nothing for request i. Deterministic given the draws (no new
        randomness), so requests without a dead source are untouched.
        """
        item_src = item_src.copy()
        none_left = dead.all(axis=1)
        if none_left.any():
            # Nothing retrieved at all: an ok response becomes an empty slate (errors and fallbacks stay).
            sources[none_left] = 0
            funnel[none_left] = 0
            status[none_left & (status == 0)] = 3
        rows = np.flatnonzero(dead.any(axis=1) & ~none_left)
        if rows.size == 0:
            return item_src
        d = dead[rows]
        alive = ~d
        # Counts: the dead sources' candidates go to the others in proportion to their own counts, the
        # rounding remainder to the largest; retrieved (and so the funnel) is unchanged.
        cnt = sources[rows]
        lost = (cnt * d).sum(axis=1)
        kept = cnt * alive
        kept_total = kept.sum(axis=1)
        # A request whose remaining sources retrieved nothing splits by the configured mix instead.
        mix = self._source_p[tenure[rows]] * alive
        weight = np.where((kept_total > 0)[:, None], kept.astype(np.float64), mix)
        add = np.floor(lost[:, None] * weight / weight.sum(axis=1, keepdims=True)).astype(np.int64)
        add[np.arange(rows.size), np.argmax(weight, axis=1)] += lost - add.sum(axis=1)
        sources[rows] = kept + add
        # Items: one that came from a dead source gets a source drawn from the remaining sources' mix, reusing
        # its own uniform rescaled to [0, 1) within the bucket that picked the dead source.
        src = item_src[rows]
        cum = self._source_cum[tenure[rows]]
        hi = np.take_along_axis(cum, src, axis=1)
        lo = np.take_along_axis(np.concatenate([np.zeros((rows.size, 1)), cum[:, :-1]], axis=1), src, axis=1)
        u = (u_src[rows] - lo) / np.maximum(hi - lo, 1e-12)
        cum_alive = np.cumsum(mix, axis=1) / mix.sum(axis=1, keepdims=True)
        # Past the last live source every boundary is 2 (> any u), so the pick never lands on a dead source
        # at the end; a dead source before a live one has a zero-width bucket and is skipped exactly.
        live_after = np.flip(np.cumsum(np.flip(alive, axis=1), axis=1), axis=1) > alive
        cum_alive[~live_after] = 2.0
        new = (u[:, :, None] >= cum_alive[:, None, :]).sum(axis=2)
        item_src[rows] = np.where(np.take_along_axis(d, src, axis=1), new, src)
        return item_src

    def _generate_block(self, t0: int) -> list[_Entry]:
        """Requests of the block starting at ``t0``, sorted by ts; their engagement goes to later blocks."""
        cfg = self.config
        rng = self._rng
        # Rate is held constant over a block (at most 1 s of a 24 h curve), which keeps arrivals Poisson.
        block_ms = self.block_ms
        n = int(rng.poisson(self.expected_rate(t0 + block_ms / 2) * block_ms / 1000))
        if n == 0:
            return []
        ts = np.sort(t0 + (rng.random(n) * block_ms).astype(np.int64))

        # Every draw below happens for all n requests, whatever the incidents do, so the random stream (and
        # thus every request outside an incident's slice) is identical with and without incidents.
        plat = np.searchsorted(self._platform_cum, rng.random(n), side="right")
        region = np.searchsorted(self._region_cum, rng.random(n), side="right")
        tenure = np.searchsorted(self._tenure_cum, rng.random(n), side="right")
        model = rng.integers(0, len(self._models), size=n)
        arm = (rng.random(n) < cfg.canary_share).astype(np.int64)
        rid = rng.integers(0, 2**63, size=n, dtype=np.int64)
        u_drop = rng.random(n)
        u_status = rng.random(n)
        err_kind = rng.integers(0, len(_ERRORS), size=n)

        medians = np.array([m for _, m, _ in cfg.stage_latency])
        sigmas = np.array([s for _, _, s in cfg.stage_latency])
        lat = np.exp(np.log(medians) + sigmas * rng.standard_normal((n, len(STAGES))))
        overhead = rng.uniform(cfg.overhead_ms[0], cfg.overhead_ms[1], size=n)

        retrieved = rng.integers(1000, 1501, size=n)
        filtered = (retrieved * rng.uniform(0.55, 0.8, size=n)).astype(np.int64)
        ranked = np.minimum(rng.integers(150, 301, size=n), filtered)
        p = self._source_p[tenure]
        src_collab = rng.binomial(retrieved, p[:, 0])
        src_trending = rng.binomial(retrieved - src_collab, p[:, 1] / (1.0 - p[:, 0]))
        src_cw = retrieved - src_collab - src_trending

        k = cfg.slate_size
        slate = self._item_ids[self._draw_slates(n)]
        top = rng.uniform(0.75, 0.98, size=(n, 1))
        steps = rng.uniform(0.5, 1.5, size=(n, k)) * rng.uniform(0.015, 0.05, size=(n, 1))
        steps[:, 0] = 0.0
        scores = np.round(top * np.exp(-np.cumsum(steps, axis=1)), 4)
        u_src = rng.random((n, k))
        cum = self._source_cum[tenure]
        item_src = (u_src[:, :, None] >= cum[:, None, :]).sum(axis=2).clip(0, len(SOURCES) - 1)

        is_new = self._is_new[tenure]
        watch = np.where(
            is_new,
            np.exp(np.log(40.0) + 1.0 * rng.standard_normal(n)),
            np.exp(np.log(180.0) + 0.9 * rng.standard_normal(n)),
        )
        days = np.where(
            is_new,
            rng.integers(0, 30, size=n),
            np.minimum(30 + np.exp(np.log(400.0) + 0.8 * rng.standard_normal(n)), 4000).astype(np.int64),
        )
        country_i = self._country_off[region] + (rng.random(n) * self._country_len[region]).astype(np.int64)
        watch_age = np.clip(
            np.exp(np.log(_WATCH_AGE_MEDIAN_MS) + _WATCH_AGE_SIGMA * rng.standard_normal(n)),
            *_WATCH_AGE_RANGE_MS,
        )

        # Engagement draws (used only for ok/fallback responses, drawn for all to keep the stream stable).
        imp_delay = rng.integers(_MIN_ENGAGEMENT_DELAY_MS, 2 * _MIN_ENGAGEMENT_DELAY_MS + 1, size=n)
        u_click = rng.random(n)
        click_pos = np.searchsorted(np.array([0.5, 0.8, 1.0]), rng.random(n), side="right")
        click_delay = np.clip(np.exp(np.log(5000.0) + 0.8 * rng.standard_normal(n)), 500, 300_000)
        u_play = rng.random(n)
        play_delay = rng.integers(1000, 10_001, size=n)
        u_complete = rng.random(n)
        complete_delay = np.clip(
            np.exp(np.log(20 * 60_000.0) + 0.6 * rng.standard_normal(n)), 60_000, 3 * 3_600_000
        )

        # Second stream (see the module docstring): also drawn for all n, whatever the incidents.
        rng2 = self._rng2
        batch_lag = np.clip(
            np.exp(np.log(_BATCH_LAG_MEDIAN_MS) + _BATCH_LAG_SIGMA * rng2.standard_normal(n)),
            *_BATCH_LAG_RANGE_MS,
        )
        days_age = batch_lag + _BATCH_PERIOD_MS * rng2.random(n)
        u_outage = rng2.random(n)
        n_imp = cfg.impressions if cfg.engagement else 0
        # One uniform per possible engagement event: each impression, then click, play, complete.
        u_eng = rng2.random((n, n_imp + 3)) if n_imp else None
        # Third stream: the profile incidents' draws (one uniform and one popular-slate offset per request).
        u_profile = self._rng_profile.random(n)
        popular_offset = self._rng_profile.integers(0, _POPULAR_ITEMS, size=(n, 1))
        u_canary = self._rng_canary.random(n)
        nulls: dict[str, BoolArray] = {}
        feature_ts = {
            "watch_minutes_7d": ts - watch_age.astype(np.int64),
            "days_since_signup": ts - days_age.astype(np.int64),
        }
        click_pos = np.minimum(click_pos, max(cfg.impressions - 1, 0))
        click_delay_ms = click_delay.astype(np.int64)
        complete_delay_ms = complete_delay.astype(np.int64)

        # --- incidents: deterministic transformations of the draws above.
        codes = {
            "platform": plat,
            "region": region,
            "tenure": tenure,
            "model": model,
            "surface": model,
            "arm": arm,
        }
        names = {
            "platform": self._platforms,
            "region": self._regions,
            "tenure": self._tenures,
            "model": self._models,
            "surface": self._surfaces,
            "arm": self._arms,
        }
        keep = np.ones(n, dtype=bool)
        p_err = np.full(n, cfg.error_rate)
        p_fb = np.full(n, cfg.fallback_rate)
        p_empty = np.full(n, cfg.empty_slate_rate)
        version = arm.copy()  # index into [control, canary, *release versions]
        p_click = np.full(n, cfg.click_rate)
        dead_src: BoolArray | None = None  # (n, sources): which source returned nothing for which request
        eng_drop: IntArray | None = None  # per request: bit i set = its i-th engagement event is not emitted
        for inc, in_slice, mask in self._incident_masks(ts, codes, names):
            if inc.kind == "engagement_logging_break":
                # Timed on each engagement event's own ts, so requests served before onset count too.
                if u_eng is not None and in_slice.any():
                    times = _engagement_times(
                        ts + imp_delay, n_imp, click_pos, click_delay_ms, play_delay, complete_delay_ms
                    )
                    lost = in_slice[:, None] & (times >= inc.onset_ms) & (u_eng < inc.factor)
                    if inc.end_ms is not None:
                        lost &= times < inc.end_ms
                    bits = lost @ (np.int64(1) << np.arange(n_imp + 3, dtype=np.int64))
                    eng_drop = bits if eng_drop is None else eng_drop | bits
                continue
            if inc.kind in INCIDENT_KINDS and INCIDENT_KINDS[inc.kind].release:
                # The new version serves every request of its arm (and model) while deployed; it is worse
                # only in the target slice.
                arm_code = ARMS.index(inc.target.get("arm", "control"))
                deployed = (arm == arm_code) & (ts >= inc.onset_ms)
                if inc.end_ms is not None:
                    deployed &= ts < inc.end_ms
                for dim in ("model", "surface"):
                    if dim in inc.target:
                        deployed &= np.isin(codes[dim], np.flatnonzero(names[dim] == inc.target[dim]))
                version[deployed] = 2 + self._release_versions.index(str(inc.version))
                p_click[deployed & mask] *= 1.0 - inc.factor
                continue
            if not mask.any():
                continue
            if inc.kind == "latency_regression":
                lat[mask, STAGES.index(inc.stage or "ranking")] *= inc.factor
            elif inc.kind == "traffic_drop":
                keep &= ~(mask & (u_drop < inc.factor))
            elif inc.kind == "error_spike":
                p_err[mask] = inc.factor
            elif inc.kind == "fallback_spike":
                p_fb[mask] = inc.factor
            elif inc.kind == "empty_slates":
                p_empty[mask] = inc.factor
            elif inc.kind == "stale_feature":
                feature_ts[inc.feature or FRESHNESS_FEATURES[0]][mask] -= round(inc.factor * 1000)
            elif inc.kind == "source_outage":
                if dead_src is None:
                    dead_src = np.zeros((n, len(SOURCES)), dtype=bool)
                # One uniform per request for every outage: partial outages of two sources overlap.
                dead_src[mask & (u_outage < inc.factor), SOURCES.index(inc.source or "trending")] = True
            elif inc.kind == "feature_drift":
                if (inc.feature or FRESHNESS_FEATURES[0]) == "watch_minutes_7d":
                    watch[mask] *= inc.factor
                else:
                    days[mask] = np.minimum(days[mask] * inc.factor, 1e9).astype(np.int64)
            elif inc.kind == "null_spike":
                hit = mask & (u_profile < inc.factor)
                name = inc.feature or FRESHNESS_FEATURES[0]
                nulls[name] = nulls[name] | hit if name in nulls else hit
            elif inc.kind == "score_collapse":
                scores[mask & (u_profile < inc.factor)] = 0.5
            elif inc.kind == "popularity_collapse":
                rows = np.flatnonzero(mask & (u_profile < inc.factor))
                # Distinct ranks within a slate: an offset plus a stride coprime with the pool size.
                ranks = (popular_offset[rows] + 7 * np.arange(k)) % _POPULAR_ITEMS
                slate[rows] = self._item_ids[ranks]
            elif inc.kind == "diversity_collapse":
                rows = np.flatnonzero(mask & (u_profile < inc.factor))
                slate[rows] = slate[rows][:, np.arange(k) % 4]
            elif inc.kind == "canary_ctr_drop":
                p_click[mask] *= 1.0 - inc.factor
            elif inc.kind == "canary_latency":
                lat[mask] *= inc.factor
            elif inc.kind == "canary_broken_feature":
                hit = mask & (u_canary < inc.factor)
                name = inc.feature or FRESHNESS_FEATURES[0]
                nulls[name] = nulls[name] | hit if name in nulls else hit
                p_click[hit] *= BROKEN_FEATURE_CLICK_FACTOR

        # One uniform, cumulative thresholds: each status rate is exactly its configured (or incident)
        # value, so an error spike does not leak into the fallback or empty-slate rates.
        status = np.zeros(n, dtype=np.int64)  # 0 ok, 1 error, 2 fallback, 3 empty
        status[u_status < p_err + p_fb + p_empty] = 3
        status[u_status < p_err + p_fb] = 2
        status[u_status < p_err] = 1

        funnel = np.stack([retrieved, filtered, ranked], axis=1)
        sources = np.stack([src_collab, src_trending, src_cw], axis=1)
        if dead_src is not None and dead_src.any():
            item_src = self._source_outage(dead_src, tenure, u_src, item_src, sources, funnel, status)
        item_src_names = np.array(SOURCES, dtype=object)[item_src]

        lat_r = np.round(lat, 1)
        total = np.round(lat_r.sum(axis=1) + overhead, 1)

        entries = self._rows_to_events(
            None if keep.all() else np.flatnonzero(keep),
            ts=ts,
            rid=rid,
            plat=self._platforms[plat],
            region=self._regions[region],
            tenure=self._tenures[tenure],
            model=model,
            arm=arm,
            status=status,
            err_kind=err_kind,
            lat=lat_r,
            total=total,
            funnel=funnel,
            sources=sources,
            slate=slate,
            scores=scores,
            item_src=item_src_names,
            watch=_with_nulls(np.round(watch, 1), nulls.get("watch_minutes_7d")),
            days=_with_nulls(days, nulls.get("days_since_signup")),
            country=self._country_flat[country_i],
            fts_watch=feature_ts["watch_minutes_7d"],
            fts_days=feature_ts["days_since_signup"],
            imp_delay=imp_delay,
            click=u_click < p_click,
            version=version,
            click_pos=click_pos,
            click_delay=click_delay_ms,
            play=u_play < cfg.play_rate,
            play_delay=play_delay,
            complete=u_complete < cfg.complete_rate,
            complete_delay=complete_delay_ms,
            eng_drop=np.zeros(n, dtype=np.int64) if eng_drop is None else eng_drop,
        )
        if cfg.shadow_share > 0:
            self._shadow_events(entries)
        return entries

    def _shadow_deployments(self) -> list[Event]:
        """One deployment event per model announcing the shadow version (``traffic``: the mirrored share)."""
        cfg = self.config
        rng = self._rng_shadow
        out: list[Event] = []
        for model, surface in cfg.models:
            version = cfg.shadow_version
            out.append(
                {
                    "type": "deployment",
                    "ts": self.start_ms,
                    "model": model,
                    "model_version": version,
                    "arm": "shadow",
                    "traffic": round(cfg.shadow_share, 6),
                    "baseline_version": cfg.control_version,
                    "lineage": {
                        "training_data": f"s3://recs-data/{surface}/train/{version.split('-')[0]}/",
                        "feature_set": f"{surface}-features@v13",
                        "code_commit": rng.bytes(20).hex(),
                        "artifact_digest": "sha256:" + rng.bytes(32).hex(),
                    },
                    "actor": "ci",
                    "reason": "shadow evaluation",
                }
            )
        return out

    def _shadow_events(self, entries: list[_Entry]) -> None:
        """Queue the shadow's serving events for a share of this block's control requests.

        A healthy shadow ranks like the control with small differences: each of the control's items is
        kept with probability 0.9 (else replaced by a catalogue draw) and neighbours swap with
        probability 0.15; scores get 2 % multiplicative noise. It answers 1-40 ms after the control, with
        the same status (a control fallback or empty slate is the shadow's too). Every draw happens for
        every control request, whatever the incidents, so incidents change only the bent fields.
        """
        cfg = self.config
        rng = self._rng_shadow
        n = len(entries)
        if n == 0:
            return
        k = cfg.slate_size
        pick = rng.random(n) < cfg.shadow_share
        delay = rng.integers(1, 41, size=n)  # >= 1 ms: a queued event would sort before a same-ts request
        keep = rng.random((n, k)) < 0.9
        swap = rng.random((n, k)) < 0.15
        fresh = np.searchsorted(self._item_cdf, rng.random((n, k)), side="right")
        noise = np.exp(0.02 * rng.standard_normal((n, k)))
        offset = rng.integers(0, len(self._item_ids), size=n)
        u_inc = rng.random(n)
        item_ids = self._item_ids
        n_items = len(item_ids)
        incidents = [inc for inc in self.incidents if inc.kind in SHADOW_INCIDENT_KINDS]
        start, block_ms = self.start_ms, self.block_ms
        pending = self._pending
        for i, (ts, _kind, key, control) in enumerate(entries):
            if not pick[i] or control["arm"] != "control":
                continue
            t = ts + int(delay[i])
            model = control["model"]
            active = [
                inc
                for inc in incidents
                if inc.active(t) and inc.target.get("model", model) == model
                and inc.target.get("surface", control["surface"]) == control["surface"]
            ]  # fmt: skip
            items: list[Event]
            if control["fallback"]:
                # A fallback serves the precomputed trending list: the shadow's is the same list.
                items = [dict(item) for item in control["items"]]
            else:
                items = self._perturbed(control["items"], keep[i], swap[i], fresh[i], noise[i])
            funnel = dict(control["funnel"])
            for inc in active:
                if inc.kind == "shadow_divergence" and items and u_inc[i] < inc.factor:
                    # Distinct items: an offset plus a stride that cannot wrap onto itself within a slate.
                    for pos, item in enumerate(items):
                        item["id"] = str(item_ids[(int(offset[i]) + 7 * pos) % n_items])
                elif inc.kind == "shadow_score_shift":
                    for item in items:
                        item["score"] = round(float(item["score"]) * inc.factor, 4)
                elif inc.kind == "shadow_empty" and items and u_inc[i] < inc.factor:
                    items = []
                    funnel = {**funnel, "filtered": 0, "ranked": 0, "returned": 0}
            shadow: Event = {
                **control,
                "ts": t,
                "model_version": cfg.shadow_version,
                "arm": "shadow",
                "items": items,
                "funnel": funnel,
                "fallback": control["fallback"] and bool(items),
            }
            pending[(t - start) // block_ms].append((t, "serving", key, shadow))

    def _perturbed(
        self, control: list[Event], keep: BoolArray, swap: BoolArray, fresh: IntArray, noise: FloatArray
    ) -> list[Event]:
        """A healthy shadow's slate from the control's (see _shadow_events); item ids stay distinct."""
        ids = [
            item["id"] if keep[pos] else str(self._item_ids[fresh[pos]]) for pos, item in enumerate(control)
        ]
        for pos in range(len(ids) - 1):
            if swap[pos]:
                ids[pos], ids[pos + 1] = ids[pos + 1], ids[pos]
        out: list[Event] = []
        seen: set[str] = set()
        for pos, (item_id, item) in enumerate(zip(ids, control, strict=True)):
            if item_id in seen:
                continue  # a fresh draw that the slate already holds: the shadow's slate is one shorter
            seen.add(item_id)
            source = item["source"] if item_id == item["id"] else "collab"
            out.append({"id": item_id, "score": float(item["score"]) * float(noise[pos]), "source": source})
        # A ranker returns its slate in score order: the noisy scores are re-sorted onto the positions.
        for item, score in zip(out, sorted((it["score"] for it in out), reverse=True), strict=True):
            item["score"] = round(score, 4)
        return out

    def _rows_to_events(self, idx: IntArray | None, **cols: npt.NDArray[Any]) -> list[_Entry]:
        """Build the kept rows' event dicts: return serving entries, queue engagement for later blocks."""
        cfg = self.config
        # Convert each column once with tolist(): Python scalars are what orjson wants, and the per-row loop
        # below is the hot path, so it must touch only lists (no numpy scalar access).
        c = {name: (arr if idx is None else arr[idx]).tolist() for name, arr in cols.items()}
        models, surfaces = self._models.tolist(), self._surfaces.tolist()
        versions, arms = [*self._versions.tolist(), *self._release_versions], self._arms.tolist()
        pending = self._pending
        start = self.start_ms
        block_ms = self.block_ms
        n_imp = cfg.impressions if cfg.engagement else 0
        fb_ids, fb_scores = self._fallback_ids, self._fallback_scores
        k = cfg.slate_size
        out: list[_Entry] = []
        append = out.append
        rows = zip(
            c["ts"], c["rid"], c["status"], c["model"], c["arm"], c["lat"], c["total"], c["funnel"],
            c["sources"], c["slate"], c["scores"], c["item_src"], c["plat"], c["region"], c["tenure"],
            c["watch"], c["days"], c["country"], c["fts_watch"], c["fts_days"], c["err_kind"], c["imp_delay"],
            c["click"], c["click_pos"], c["click_delay"], c["play"], c["play_delay"], c["complete"],
            c["complete_delay"], c["eng_drop"], c["version"],
            strict=True,
        )  # fmt: skip
        bit_click, bit_play, bit_complete = 1 << n_imp, 2 << n_imp, 4 << n_imp
        for (
            ts, rid_int, status, m, a, stages, total, (retrieved, filtered, ranked), (collab, trending, cw),
            slate, scores, item_src, plat, region, tenure, watch, days, country, fts_watch, fts_days,
            err_kind, imp_delay, click, click_pos, click_delay, play, play_delay, complete, complete_delay,
            drop, v,
        ) in rows:  # fmt: skip
            rid = f"{rid_int:016x}"
            key = rid.encode()
            ids: list[str]
            items: list[Event]
            if status == 0:
                ids = slate
                items = [
                    {"id": it, "score": sc, "source": so}
                    for it, sc, so in zip(slate, scores, item_src, strict=True)
                ]
                funnel = {"retrieved": retrieved, "filtered": filtered, "ranked": ranked, "returned": k}
            elif status == 2:
                ids = fb_ids
                items = [
                    {"id": it, "score": sc, "source": "trending"}
                    for it, sc in zip(fb_ids, fb_scores, strict=True)
                ]
                funnel = {"retrieved": retrieved, "filtered": filtered, "ranked": ranked, "returned": k}
            elif status == 3:
                ids, items = [], []
                # An empty slate: candidates were retrieved but nothing survived filtering.
                funnel = {"retrieved": retrieved, "filtered": 0, "ranked": 0, "returned": 0}
            else:
                ids, items = [], []
                # A failed request produced nothing: zero funnel and sources keep sum(sources) == retrieved.
                funnel = {"retrieved": 0, "filtered": 0, "ranked": 0, "returned": 0}
                collab = trending = cw = 0
            event: Event = {
                "type": "serving",
                "request_id": rid,
                "ts": ts,
                "model": models[m],
                "model_version": versions[v],
                "arm": arms[a],
                "surface": surfaces[m],
                "segment": {"platform": plat, "region": region, "tenure": tenure},
                "latency_ms": {
                    "total": total,
                    "retrieval": stages[0],
                    "features": stages[1],
                    "ranking": stages[2],
                },
                "funnel": funnel,
                "sources": {"collab": collab, "trending": trending, "continue_watching": cw},
                "items": items,
                "features": {"watch_minutes_7d": watch, "days_since_signup": days, "country": country},
                "feature_ts": {"watch_minutes_7d": fts_watch, "days_since_signup": fts_days},
                "fallback": status == 2,
                "error": _ERRORS[err_kind] if status == 1 else None,
            }
            append((ts, "serving", key, event))
            if not (n_imp and ids):
                continue
            # Engagement delays are >= one block, so every event below lands in a later block's list. A set
            # bit in drop (engagement_logging_break) skips that event only; the user's actions go on.
            t_imp = ts + imp_delay
            for pos in range(min(n_imp, len(ids))):
                if drop and drop >> pos & 1:
                    continue
                t = t_imp + 25 * pos  # the client renders the row left to right
                ev = _engagement(rid, t, ids[pos], pos, "impression", 0.0)
                pending[(t - start) // block_ms].append((t, "engagement", key, ev))
            if not click:
                continue
            item = ids[click_pos]
            t = t_imp + 25 * click_pos + click_delay
            if not drop & bit_click:
                pending[(t - start) // block_ms].append(
                    (t, "engagement", key, _engagement(rid, t, item, click_pos, "click", 0.0))
                )
            if not play:
                continue
            t += play_delay
            if not drop & bit_play:
                pending[(t - start) // block_ms].append(
                    (t, "engagement", key, _engagement(rid, t, item, click_pos, "play", 0.0))
                )
            if not complete:
                continue
            t += complete_delay
            if not drop & bit_complete:
                # value: seconds watched, as the contract defines it for play/complete.
                ev = _engagement(rid, t, item, click_pos, "complete", round(complete_delay / 1000, 1))
                pending[(t - start) // block_ms].append((t, "engagement", key, ev))
        return out


def _with_nulls(values: npt.NDArray[Any], null: BoolArray | None) -> npt.NDArray[Any]:
    """``values`` with None where ``null`` is set (an object array then; untouched without nulls)."""
    if null is None or not null.any():
        return values
    out = values.astype(object)
    out[null] = None
    return out


def _engagement_times(
    t_imp: IntArray,
    n_imp: int,
    click_pos: IntArray,
    click_delay: IntArray,
    play_delay: IntArray,
    complete_delay: IntArray,
) -> IntArray:
    """(n, n_imp + 3) ts of each request's possible engagement events, as _rows_to_events schedules them."""
    t_click = t_imp + 25 * click_pos + click_delay
    t_play = t_click + play_delay
    imps = t_imp[:, None] + 25 * np.arange(n_imp, dtype=np.int64)
    return np.concatenate([imps, np.stack([t_click, t_play, t_play + complete_delay], axis=1)], axis=1)


def _engagement(rid: str, ts: int, item: str, pos: int, action: str, value: float) -> Event:
    return {
        "type": "engagement",
        "request_id": rid,
        "ts": ts,
        "item_id": item,
        "position": pos,
        "action": action,
        "value": value,
    }


def _ts_of(entry: _Entry) -> int:
    return entry[0]
