"""Build a pinned reference profile (core/reference.py) from recorded events, with no servers.

The events go through the same engine as the worker (validation, sampling, the profiler's bins) into
the in-memory store; the windows are never closed, only summed: every roll-up slice's histograms over
the whole file, with model version and arm merged (a profile describes the data, not who served it).
"""

from __future__ import annotations

from collections.abc import Iterable

from stream_monitor.core.clock import ManualClock
from stream_monitor.core.reference import PinnedProfile, binning, profile_fingerprint, slice_of
from stream_monitor.core.series import parse_window
from stream_monitor.core.signals import WindowEvaluator
from stream_monitor.core.topology import Topology
from stream_monitor.inprocess import InProcessPipeline
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore

__all__ = ["build_pinned_profile"]

_YEAR_2100_MS = 4_102_444_800_000


def build_pinned_profile(
    topology: Topology, lines: Iterable[bytes], source: str = ""
) -> tuple[PinnedProfile, ListSink]:
    """The profile of the serving events in ``lines`` (JSONL); the sink holds the dead-lettered lines.

    >>> import orjson
    >>> from stream_monitor.sim.traffic import TrafficSimulator
    >>> from stream_monitor.topology import load_topology
    >>> topology = load_topology()
    >>> sim = TrafficSimulator(seed=1, start_ms=1_700_000_000_000, rate_per_s=20)
    >>> lines = [orjson.dumps(e) for _, _, e in sim.events_until(1_700_000_000_000 + 120_000)]
    >>> profile, rejected = build_pinned_profile(topology, lines, source="sim")
    >>> sorted(profile.slices)[:2]
    ['home-ranker|home|*|*|*', 'home-ranker|home|*|*|established']
    >>> sum(profile.slices["home-ranker|home|*|*|*"]["fv.watch_minutes_7d"].values()) > 1000
    True
    >>> rejected.dead_letters
    []
    """
    store = MemoryStore()
    sink = ListSink()
    # No window is ever closed here, so nothing is late; a clock far in the future accepts every ts.
    pipeline = InProcessPipeline.build(
        topology,
        alerts=sink,
        deadletters=sink,
        clock=ManualClock(_YEAR_2100_MS),
        worker_id="profile",
        store=store,
    )
    engine = pipeline.engine
    for line in lines:
        line = line.strip()
        if line:
            pipeline.feed_line(line)
    engine.flush()
    description = binning(topology.features.features, topology.ranking)
    evaluator = WindowEvaluator(topology)
    slices: dict[str, dict[str, dict[str, float]]] = {}
    for start in store.open_windows():
        series, _ = parse_window(store.read_window(start), len(topology.key_dims))
        for key, stats in evaluator.levels(series, with_version=True).items():
            for hist_name, counts in stats.hists.items():
                if hist_name not in description:
                    continue  # item-exposure buckets: not a distribution drift is measured on
                target = slices.setdefault(slice_of(key), {}).setdefault(hist_name, {})
                for bin_, count in counts.items():
                    target[bin_] = target.get(bin_, 0.0) + count
    meta = {
        "topology": topology.name,
        "events": pipeline.fed,
        "windows": len(store.open_windows()),
        "binning": description,
    }
    return PinnedProfile(slices, profile_fingerprint(description), source=source, meta=meta), sink
