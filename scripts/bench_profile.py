#!/usr/bin/env python3
"""Per-event cost of the profile signals on the accumulator (the worker's hot path), in one run.

Accumulates the same parsed serving events (simulator, slates of 20 items) under four topologies: the
default without profiles, with feature profiles only, the full default (features + ranking with its
default sampling), and the default with features.sample_every=4. Best of 3, wall time; compare the ratios
within one run (the machine may be shared).

Usage: .venv/bin/python scripts/bench_profile.py [seconds of simulated traffic, default 120]
"""

import dataclasses
import sys
import time

import orjson

from stream_monitor.core.aggregates import WindowAccumulator
from stream_monitor.core.events import ServingEvent, parse_event
from stream_monitor.core.topology import FeatureRule, RankingRule
from stream_monitor.sim import TrafficSimulator
from stream_monitor.topology import load_topology

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 120.0
topology = load_topology()
sim = TrafficSimulator(seed=1, start_ms=1_764_086_400_000, rate_per_s=300)
events = [parse_event(orjson.dumps(e)) for kind, _, e in sim.events(seconds) if kind == "serving"]
serving = [e for e in events if isinstance(e, ServingEvent)]
variants = {
    "no profiles": dataclasses.replace(topology, features=FeatureRule(), ranking=RankingRule()),
    "features only": dataclasses.replace(topology, ranking=RankingRule()),
    "full default": topology,
    "features.sample_every=4": dataclasses.replace(
        topology, features=dataclasses.replace(topology.features, sample_every=4)
    ),
}
base = None
print(f"{len(serving)} serving events (slates of 20 items)")
for name, variant in variants.items():
    best = float("inf")
    for _ in range(3):
        accumulator = WindowAccumulator(variant)
        t0 = time.perf_counter()
        for offset, event in enumerate(serving):
            accumulator.add_serving("recs.serving/0", offset, event)
        best = min(best, time.perf_counter() - t0)
    per_event = best / len(serving) * 1e6
    base = base or per_event
    rate = len(serving) / best / 1000
    print(f"{name:25s} {rate:8.1f} k events/s {per_event:7.2f} us/event  x{per_event / base:.2f}")
