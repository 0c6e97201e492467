"""``stream-monitor bench shadow``: false rollbacks of healthy shadows and the cost of catching bad ones.

Every run is the seeded simulator with a shadow deployment (``SimConfig.shadow_share``) through the
in-process pipeline, engine, memory store and shadow pairing, exactly as ``stream-monitor replay`` runs
it; verdicts come out of the engine's health sink (kind ``shadow``). Engagement is switched off in the
simulator: a shadow has none, and the control's is not part of the shadow analysis.

Reported: for healthy shadows (the simulator's default shadow: the control's ranking with small
differences) the share of runs ever rolled back, with its Clopper-Pearson interval, against the
configured ``alpha``, and the share promoted by the end; per bad shadow (``shadow_divergence``,
``shadow_score_shift``, ``shadow_empty``, from the shadow's deployment on) its decision and the windows
and compared pairs until it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from stream_monitor.core.stats.proportions import clopper_pearson
from stream_monitor.core.topology import Topology
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.sim import Incident, SimConfig, TrafficSimulator
from stream_monitor.sinks.base import ListSink
from stream_monitor.sinks.health import ListHealthSink
from stream_monitor.state.memory import MemoryStore

__all__ = ["BAD_SHADOWS", "WEAK_SHADOWS", "ShadowRun", "format_table", "run_bench", "run_shadow"]

START = 1_764_028_800_000
MINUTE = 60_000
BAD_SHADOWS: tuple[str, ...] = ("shadow_divergence", "shadow_score_shift", "shadow_empty")
# Weaker bad shadows, near what the default thresholds can tell from a healthy one: 15 % of slates
# unrelated to the control's (mean RBO 0.87 -> ~0.74, above the 0.6 floor: not a divergence by the
# defaults), scores 3 % lower, 1 % more empty slates.
WEAK_SHADOWS: tuple[tuple[str, float], ...] = (
    ("shadow_divergence", 0.15),
    ("shadow_score_shift", 0.97),
    ("shadow_empty", 0.01),
)


@dataclass(slots=True)
class ShadowRun:
    """One simulated shadow: its first ROLLBACK (or its last verdict) and what it took."""

    kind: str
    seed: int
    decision: str
    verdict: str
    windows: int
    pairs: float
    reason: str
    rolled_back: bool
    promoted: bool
    seconds: float = 0.0


def _pairs(doc: dict[str, Any]) -> float:
    for metric in doc["metrics"]:
        if metric["name"] == "error_rate":
            return float(metric.get("n_candidate", 0))
    return 0.0


def run_shadow(
    topology: Topology,
    seed: int,
    kind: str | None = None,
    minutes: int = 15,
    rate: float = 50.0,
    shadow_share: float = 0.5,
    stop_on_rollback: bool = True,
    magnitude: float | None = None,
) -> ShadowRun:
    """One simulated shadow through the whole in-process event path (see the module docstring).

    A healthy shadow (``kind`` None) runs all ``minutes``: a rollback at any window counts against it.
    """
    started = time.perf_counter()
    incidents = (Incident(kind, onset_ms=START, magnitude=magnitude),) if kind else ()
    config = SimConfig(shadow_share=shadow_share, engagement=False)
    sim = TrafficSimulator(seed=seed, start_ms=START, rate_per_s=rate, incidents=incidents, config=config)
    sink, health, store, clock = ListSink(), ListHealthSink(), MemoryStore(), EventTimeClock(START)
    pipeline = InProcessPipeline.build(
        topology,
        alerts=sink,
        deadletters=sink,
        clock=clock,
        partitions=2,
        worker_id="bench",
        store=store,
        health_sink=health,
    )
    for _ in pipeline.drive(sim, START, START + minutes * MINUTE):
        docs = [d for d in health.docs if d["kind"] == "shadow"]
        if stop_on_rollback and kind and any(d["decision"] == "ROLLBACK" for d in docs):
            break
    docs = [d for d in health.docs if d["kind"] == "shadow"]
    seconds = time.perf_counter() - started
    if not docs:
        return ShadowRun(
            _label(kind, magnitude), seed, "NONE", "NONE", 0, 0.0, "no verdict", False, False, seconds
        )
    first_rollback = next((d for d in docs if d["decision"] == "ROLLBACK"), None)
    doc = first_rollback or docs[-1]
    return ShadowRun(
        _label(kind, magnitude),
        seed,
        doc["decision"],
        doc["verdict"],
        docs.index(doc) + 1,
        _pairs(doc),
        doc["reason"],
        first_rollback is not None,
        docs[-1]["decision"] == "PROMOTE",
        seconds,
    )


def _label(kind: str | None, magnitude: float | None) -> str:
    if kind is None:
        return "healthy"
    return kind if magnitude is None else f"{kind} ({magnitude:g})"


def run_bench(
    topology: Topology,
    healthy_seeds: int = 20,
    bad_seeds: int = 5,
    minutes: int = 15,
    rate: float = 50.0,
    shadow_share: float = 0.5,
    weak_seeds: int = 0,
) -> dict[str, Any]:
    """Every run of the benchmark and its summary (a JSON-safe document)."""
    healthy = [run_shadow(topology, seed, None, minutes, rate, shadow_share) for seed in range(healthy_seeds)]
    bad = [
        run_shadow(topology, 1000 + seed, kind, minutes, rate, shadow_share)
        for kind in BAD_SHADOWS
        for seed in range(bad_seeds)
    ]
    bad += [
        run_shadow(topology, 2000 + seed, kind, minutes, rate, shadow_share, magnitude=magnitude)
        for kind, magnitude in WEAK_SHADOWS
        for seed in range(weak_seeds)
    ]
    rollbacks = sum(r.rolled_back for r in healthy)
    lo, hi = clopper_pearson(rollbacks, len(healthy))
    summary: dict[str, Any] = {
        "alpha": topology.shadow.alpha,
        "healthy_runs": len(healthy),
        "healthy_false_rollbacks": rollbacks,
        "healthy_false_rollback_rate": rollbacks / len(healthy) if healthy else 0.0,
        "healthy_false_rollback_ci95": [lo, hi],
        "healthy_promote_rate": sum(r.promoted for r in healthy) / len(healthy) if healthy else 0.0,
        "bad": {},
    }
    for kind in dict.fromkeys(r.kind for r in bad):
        runs = [r for r in bad if r.kind == kind]
        decided = [r for r in runs if r.rolled_back]
        summary["bad"][kind] = {
            "runs": len(runs),
            "rollbacks": len(decided),
            "median_windows_to_rollback": float(np.median([r.windows for r in decided])) if decided else None,
            "median_pairs_to_rollback": float(np.median([r.pairs for r in decided])) if decided else None,
        }
    return {
        "settings": {
            "healthy_seeds": healthy_seeds,
            "bad_seeds": bad_seeds,
            "minutes": minutes,
            "rate_per_s": rate,
            "shadow_share": shadow_share,
            "weak_seeds": weak_seeds,
            "window_ms": topology.window.size_ms,
        },
        "summary": summary,
        "runs": [asdict(r) for r in (*healthy, *bad)],
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of a :func:`run_bench` result."""
    s = result["summary"]
    lo, hi = s["healthy_false_rollback_ci95"]
    lines = [
        f"healthy shadows: {s['healthy_runs']} runs, ever rolled back {s['healthy_false_rollbacks']} = "
        f"{s['healthy_false_rollback_rate']:.1%} (95 % CI {lo:.1%}..{hi:.1%}) vs alpha {s['alpha']:.3f}; "
        f"PROMOTE at the end {s['healthy_promote_rate']:.0%}",
        "",
        f"{'bad shadow':26} {'runs':>4} {'rollback':>8} {'windows':>7} {'pairs':>7}",
    ]
    for kind, b in s["bad"].items():
        win = "-" if b["median_windows_to_rollback"] is None else f"{b['median_windows_to_rollback']:.0f}"
        pairs = "-" if b["median_pairs_to_rollback"] is None else f"{b['median_pairs_to_rollback']:.0f}"
        lines.append(f"{kind:26} {b['runs']:>4} {b['rollbacks']:>8} {win:>7} {pairs:>7}")
    return "\n".join(lines)
