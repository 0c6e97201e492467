"""Diagnosis benchmark: does ``diagnose`` rank the injected cause first, for every incident kind?

Each run is the detection benchmark's incident run (:mod:`stream_monitor.bench.detection`: the same
start hours, onsets, rotating target slices, the kind's default magnitude), made by the simulator in this
process and fed through a :class:`~stream_monitor.diagnosing.DiagnosisRecorder` (the production engine
with a memory store); then :func:`~stream_monitor.core.diagnosis.diagnose` ranks the suspects over the
whole run and the rank of the first suspect that names the ground truth is noted (signal, feature /
source / version detail, and slice, as :func:`stream_monitor.bench.detection._names_truth` judges
alerts; a release suspect names a release incident by its version).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from stream_monitor.bench.detection import BASE_MS, HOUR_MS, MAGNITUDES, TARGETS
from stream_monitor.core.diagnosis import Suspect
from stream_monitor.core.fields import ALL
from stream_monitor.core.topology import Topology
from stream_monitor.diagnosing import DiagnosisRecorder
from stream_monitor.sim import INCIDENT_KINDS, GroundTruth, Incident, SimConfig, TrafficSimulator
from stream_monitor.topology import load_topology

__all__ = [
    "DiagnoseBenchConfig",
    "environment",
    "format_report",
    "names_truth",
    "rank_of_truth",
    "run_diagnose_bench",
    "run_one",
    "simulator",
    "summary",
]


@dataclass(frozen=True, slots=True)
class DiagnoseBenchConfig:
    """What the benchmark runs.

    >>> DiagnoseBenchConfig(seeds=2, kinds=("error_spike",)).runs
    2
    """

    seeds: int = 5
    kinds: tuple[str, ...] = tuple(INCIDENT_KINDS)
    rate_per_s: float = 30.0
    run_s: int = 2400
    onset_s: int = 1200
    incident_s: int = 900
    step_s: int = 10
    jobs: int = 1
    topology: str | None = None
    # "default": each kind's default magnitude; "smallest": the smallest of the detection benchmark's
    # magnitudes (harder: weaker signals, more room for a wrong first mover).
    magnitude: str = "default"
    # When set, the simulator reads each run's start as this hour of the day (SimConfig.diurnal_start_hour)
    # instead of its UTC hour: the live benchmark (bench/diagnose_live.py) uses 12.0 on both paths.
    diurnal_start_hour: float | None = None

    def __post_init__(self) -> None:
        if self.seeds < 1 or self.jobs < 1:
            raise ValueError("seeds and jobs must be >= 1")
        if self.magnitude not in ("default", "smallest"):
            raise ValueError(f"magnitude must be 'default' or 'smallest', not {self.magnitude!r}")
        for kind in self.kinds:
            if kind not in INCIDENT_KINDS:
                raise ValueError(f"unknown incident kind {kind!r}; expected one of {sorted(INCIDENT_KINDS)}")

    @property
    def runs(self) -> int:
        return self.seeds * len(self.kinds)


def names_truth(suspect: Suspect, truth: GroundTruth, segment_dims: Sequence[str]) -> bool:
    """Whether a suspect names the ground truth: its signal (or its release), detail and slice.

    >>> t = GroundTruth("freshness", {"region": "eu"}, 0, None, None, "watch_minutes_7d")
    >>> s = Suspect("feature", "", "freshness", "watch_minutes_7d", {"region": "eu", "platform": "*"}, 1, 0)
    >>> names_truth(s, t, ("platform", "region", "tenure"))
    True
    """
    if suspect.kind == "release":
        return truth.signal == "release_ctr" and truth.detail == suspect.detail
    if suspect.signal != truth.signal:
        return False
    if truth.detail is not None and truth.detail not in (suspect.detail, suspect.key.get("model_version")):
        return False
    if truth.signal == "latency" and truth.stage is not None and suspect.detail not in (truth.stage, "total"):
        return False
    return all(suspect.key.get(d, ALL) == truth.key.get(d, ALL) for d in segment_dims)


def _incident(config: DiagnoseBenchConfig, kind: str, seed: int, start_ms: int) -> Incident:
    onset_ms = start_ms + config.onset_s * 1000 + (seed * 23 % 60) * 1000
    spec = INCIDENT_KINDS[kind]
    if spec.global_key:
        target: dict[str, str] = {}
    elif spec.release:
        target = {"arm": "control"}
    else:
        target = dict(TARGETS[seed % len(TARGETS)])
    magnitude = spec.default_magnitude
    if config.magnitude == "smallest":
        magnitude = min(MAGNITUDES.get(kind, (magnitude,)))
    return Incident(
        kind, onset_ms=onset_ms, duration_ms=config.incident_s * 1000, magnitude=magnitude, target=target
    )


def simulator(config: DiagnoseBenchConfig, kind: str, seed: int) -> tuple[TrafficSimulator, Incident]:
    """The traffic of one run (with its incident): the same for the in-process and the live benchmark."""
    start_ms = BASE_MS + (seed * 7 % 24) * HOUR_MS
    incident = _incident(config, kind, seed, start_ms)
    sim_config = SimConfig(diurnal_start_hour=config.diurnal_start_hour)
    sim = TrafficSimulator(
        seed=seed, start_ms=start_ms, rate_per_s=config.rate_per_s, incidents=[incident], config=sim_config
    )
    return sim, incident


def rank_of_truth(suspects: Sequence[Suspect], truth: GroundTruth, segment_dims: Sequence[str]) -> int | None:
    """The 1-based rank of the first suspect that names the truth (None: none does)."""
    return next((i for i, s in enumerate(suspects, 1) if names_truth(s, truth, segment_dims)), None)


def run_one(config: DiagnoseBenchConfig, topology: Topology, kind: str, seed: int) -> dict[str, Any]:
    """One incident run: its truth, the top suspects and the rank of the truth (None: not in the list)."""
    began = time.perf_counter()
    sim, incident = simulator(config, kind, seed)
    start_ms = sim.start_ms
    recorder = DiagnosisRecorder(topology, start_ms=start_ms, partitions=4)
    end_ms = start_ms + config.run_s * 1000
    until = start_ms
    while until < end_ms:
        until = min(until + config.step_s * 1000, end_ms)
        for _kind, _key, event in sim.events_until(until):
            recorder.observe(event)
            recorder.pipeline.feed(_kind, _key, orjson.dumps(event))
        recorder.clock.observe(until)
        recorder.step()
    recorder.step(final=True)
    result = recorder.diagnose()
    truth = incident.ground_truth
    rank = rank_of_truth(result.suspects, truth, topology.segment_dims)
    return {
        "kind": kind,
        "seed": seed,
        "truth": {"signal": truth.signal, "key": truth.key, "detail": truth.detail},
        "rank": rank,
        "top": [
            {"name": s.name, "score": round(s.score, 3), "onset_ms": s.onset_ms} for s in result.suspects[:5]
        ],
        "examples": result.top.examples if result.top else [],
        "seconds": round(time.perf_counter() - began, 1),
    }


def run_diagnose_bench(
    config: DiagnoseBenchConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Every kind x seed; the hit rates (rank 1, top 3) per kind and overall."""
    say = progress or (lambda _m: None)
    topology = load_topology(config.topology)
    jobs = [(kind, seed) for seed in range(config.seeds) for kind in config.kinds]
    began = time.perf_counter()
    runs: list[dict[str, Any]] = []
    if config.jobs == 1:
        for kind, seed in jobs:
            runs.append(run_one(config, topology, kind, seed))
            say(f"  {kind} seed={seed}: rank {runs[-1]['rank']}")
    else:
        with ProcessPoolExecutor(max_workers=config.jobs) as pool:
            futures = [pool.submit(run_one, config, topology, kind, seed) for kind, seed in jobs]
            for future in futures:
                runs.append(future.result())
                say(f"  {runs[-1]['kind']} seed={runs[-1]['seed']}: rank {runs[-1]['rank']}")
    per_kind = []
    for kind in config.kinds:
        mine = [r for r in runs if r["kind"] == kind]
        per_kind.append(summary(kind, mine))
    return {
        "suite": "diagnose",
        "config": {
            "seeds": config.seeds,
            "kinds": list(config.kinds),
            "rate_per_s": config.rate_per_s,
            "run_s": config.run_s,
            "onset_s": config.onset_s,
            "incident_s": config.incident_s,
            "magnitude": config.magnitude,
        },
        "environment": environment(),
        "kinds": per_kind,
        "overall": summary("all", runs),
        "runs": runs,
        "runtime_s": round(time.perf_counter() - began, 1),
    }


def summary(kind: str, runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Hit rates of one kind's runs (``rank`` of each run: 1-based, or None)."""
    n = len(runs)
    first = sum(1 for r in runs if r["rank"] == 1)
    top3 = sum(1 for r in runs if r["rank"] is not None and r["rank"] <= 3)
    return {
        "kind": kind,
        "runs": n,
        "rank1": first / n if n else None,
        "top3": top3 / n if n else None,
        "missed": [r["seed"] for r in runs if r["rank"] is None],
        "ranks": [r["rank"] for r in runs],
    }


def format_report(report: Mapping[str, Any]) -> str:
    """Hit rates as a plain-text table."""
    lines = [f"{'kind':<26}{'runs':>5}{'rank 1':>8}{'top 3':>8}  ranks (None: not among the suspects)"]
    for row in [*report["kinds"], report["overall"]]:
        lines.append(
            f"{row['kind']:<26}{row['runs']:>5}{row['rank1']:>8.0%}{row['top3']:>8.0%}  "
            + " ".join(str(r) for r in row["ranks"][:20])
        )
    lines.append(f"runtime {report['runtime_s']:.0f} s")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Where a report was measured: date, Python, platform, CPUs (the live bench's report too)."""
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
