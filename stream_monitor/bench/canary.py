"""``stream-monitor bench canary``: false rollbacks of A/A canaries and the cost of catching bad ones.

Two kinds of runs, both judged by the same :class:`~stream_monitor.core.canary.CanaryAnalyzer`:

* **Full runs** (:func:`run_inprocess`): the seeded simulator with a canary arm, through the in-process
  pipeline, engine, memory store and label join, exactly as ``stream-monitor replay`` runs; verdicts
  come out of the engine's health sink. Used for the bad canaries (``canary_ctr_drop``,
  ``canary_latency``, ``canary_broken_feature``) and a few A/A seeds.
* **Aggregate runs** (:func:`run_aggregate`): for many A/A seeds. Each window's sums of both arms are
  drawn from the same generative model as the simulator's defaults (Poisson requests, binomial errors /
  fallbacks / empty slates / clicks / plays, lognormal stage latencies binned into the same log buckets)
  and handed straight to the analyzer. A full run costs seconds per simulated minute; this costs
  milliseconds, so hundreds of seeds give a false-rollback rate with a useful confidence interval.

Reported: the false-ROLLBACK rate of A/A runs with its Clopper-Pearson interval against the configured
``alpha``, the A/A PROMOTE rate, and per bad canary its decision and the impressions / windows until it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from stream_monitor.core.canary import CanaryAnalyzer
from stream_monitor.core.sketch import LogBuckets
from stream_monitor.core.stats.proportions import clopper_pearson
from stream_monitor.core.topology import Topology
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.sim import Incident, SimConfig, TrafficSimulator
from stream_monitor.sinks.base import ListSink
from stream_monitor.sinks.health import ListHealthSink
from stream_monitor.state.memory import MemoryStore

__all__ = [
    "BAD_CANARIES",
    "CanaryRun",
    "fast_topology",
    "run_aggregate",
    "run_bench",
    "run_inprocess",
]

START = 1_764_028_800_000
MINUTE = 60_000
BAD_CANARIES: tuple[str, ...] = ("canary_ctr_drop", "canary_latency", "canary_broken_feature")


@dataclass(slots=True)
class CanaryRun:
    """Outcome of one simulated canary: the first decisive verdict (or the last one) and its cost."""

    kind: str
    seed: int
    mode: str
    decision: str
    verdict: str
    windows: int
    impressions: float
    requests: float
    reason: str
    suspects: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def fast_topology(topology: Topology, maturity_ms: int = 2 * MINUTE) -> Topology:
    """The topology with a short label maturity (engagement in the simulator lands within minutes)."""
    return replace(topology, labels=replace(topology.labels, maturity_ms=maturity_ms))


def _first_decision(docs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    for doc in docs:
        if doc["decision"] in ("ROLLBACK", "PROMOTE"):
            return doc
    return docs[-1] if docs else None


def _counts(doc: dict[str, Any]) -> tuple[float, float]:
    metrics = {m["name"]: m for m in doc["metrics"]}
    ctr = metrics.get("ctr", {})
    err = metrics.get("error_rate", {})
    return (
        float(ctr.get("n_candidate", 0) + ctr.get("n_baseline", 0)),
        float(err.get("n_candidate", 0) + err.get("n_baseline", 0)),
    )


def run_inprocess(
    topology: Topology,
    seed: int,
    kind: str | None = None,
    minutes: int = 40,
    rate: float = 100.0,
    canary_share: float = 0.5,
    stop_on_decision: bool = True,
) -> CanaryRun:
    """One simulated canary through the whole in-process event path (see the module docstring)."""
    started = time.perf_counter()
    incidents = (Incident(kind, onset_ms=START),) if kind else ()
    sim = TrafficSimulator(
        seed=seed,
        start_ms=START,
        rate_per_s=rate,
        incidents=incidents,
        config=SimConfig(canary_share=canary_share),
    )
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
        if stop_on_decision and any(d["decision"] in ("ROLLBACK", "PROMOTE") for d in health.docs):
            break
    doc = _first_decision(health.docs)
    seconds = time.perf_counter() - started
    if doc is None:
        return CanaryRun(kind or "aa", seed, "full", "NONE", "NONE", 0, 0.0, 0.0, "no verdict", [], seconds)
    impressions, requests = _counts(doc)
    return CanaryRun(
        kind or "aa",
        seed,
        "full",
        doc["decision"],
        doc["verdict"],
        health.docs.index(doc) + 1,
        impressions,
        requests,
        doc["reason"],
        doc["suspects"],
        seconds,
    )


def run_aggregate(
    topology: Topology,
    seed: int,
    windows: int = 60,
    requests_per_window: float = 6_000.0,
    canary_share: float = 0.5,
    label_delay_windows: int = 3,
    stop_on_decision: bool = True,
    ctr_factor: float = 1.0,
) -> CanaryRun:
    """One canary judged from window sums drawn from the simulator's generative model.

    Both arms draw from identical distributions (SimConfig defaults), so with ``ctr_factor`` 1 any
    ROLLBACK is a false one; ``ctr_factor`` 0.97 is ``canary_ctr_drop`` (the canary's click probability
    x0.97). Label sums of a window arrive ``label_delay_windows`` later, as matured labels do.
    """
    started = time.perf_counter()
    cfg = SimConfig(canary_share=canary_share)
    rng = np.random.default_rng([seed, 101])
    analyzer = CanaryAnalyzer(topology)
    buckets = LogBuckets(topology.relative_accuracy)
    stages = topology.latency.stages
    sim_stages = [(name, med, sigma) for name, med, sigma in cfg.stage_latency]
    deps = {
        "home-ranker": {
            "canary": {"ts": START, "model_version": "v2", "traffic": canary_share, "lineage": {}},
            "control": {"ts": START, "model_version": "v1", "traffic": 1 - canary_share, "lineage": {}},
        }
    }
    state: dict[str, Any] = {}
    pending: list[dict[str, float]] = []
    last: dict[str, Any] | None = None
    for w in range(windows):
        fields: dict[str, float] = {}
        labels: dict[str, float] = {}
        for arm, version, share in (("canary", "v2", canary_share), ("control", "v1", 1 - canary_share)):
            series = f"home-ranker|{version}|{arm}|home|ios|us|established"
            n = int(rng.poisson(requests_per_window * share))
            p = np.array([cfg.error_rate, cfg.fallback_rate, cfg.empty_slate_rate])
            err, fb, empty = (int(x) for x in rng.multinomial(n, [*p, 1 - p.sum()])[:3])
            fields.update(
                {
                    f"{series}#n": n,
                    f"{series}#err": err,
                    f"{series}#fb": fb,
                    f"{series}#empty": empty,
                    f"{series}#prof": n,
                }
            )
            ok = n - err
            lat = np.exp(
                np.log([m for _, m, _ in sim_stages])
                + np.array([s for _, _, s in sim_stages]) * rng.standard_normal((ok, 3))
            )
            per_stage = {name: lat[:, i] for i, (name, _, _) in enumerate(sim_stages)}
            per_stage["total"] = lat.sum(axis=1) + rng.uniform(*cfg.overhead_ms, size=ok)
            for stage in stages:
                if stage not in per_stage:
                    continue
                idx = np.ceil(np.log(per_stage[stage]) / math.log(buckets.gamma)).astype(np.int64)
                values, counts = np.unique(idx, return_counts=True)
                for b, c in zip(values.tolist(), counts.tolist(), strict=True):
                    fields[f"{series}#lat.{stage}.{b}"] = c
            engaged = n - err - empty
            factor = ctr_factor if arm == "canary" else 1.0
            clicks = int(rng.binomial(engaged, cfg.click_rate * factor))
            plays = int(rng.binomial(clicks, cfg.play_rate))
            labels.update(
                {
                    f"{series}#req": n,
                    f"{series}#imp": engaged * cfg.impressions,
                    f"{series}#click": clicks,
                    f"{series}#play": plays,
                }
            )
        pending.append(labels)
        matured = pending.pop(0) if len(pending) > label_delay_windows else {}
        start = START + w * MINUTE
        [verdict] = analyzer.update(state, deps, fields, matured, (start, start + MINUTE), start + MINUTE)
        last = verdict.to_json_dict()
        if stop_on_decision and last["decision"] in ("ROLLBACK", "PROMOTE"):
            break
    assert last is not None
    impressions, requests = _counts(last)
    return CanaryRun(
        "aa" if ctr_factor == 1.0 else "canary_ctr_drop",
        seed,
        "aggregate",
        last["decision"],
        last["verdict"],
        w + 1,
        impressions,
        requests,
        last["reason"],
        last["suspects"],
        time.perf_counter() - started,
    )


def run_bench(
    topology: Topology,
    aa_seeds: int = 400,
    aa_full_seeds: int = 3,
    bad_seeds: int = 3,
    minutes: int = 40,
    rate: float = 100.0,
    aggregate_windows: int = 60,
    ctr_drop_seeds: int = 50,
    ctr_drop_windows: int = 600,
) -> dict[str, Any]:
    """Every run of the benchmark and its summary (a JSON-safe document)."""
    topo = fast_topology(topology)
    # canary_ctr_drop needs millions of impressions at alpha 0.05: more than full runs can afford, so
    # its cost to decide is measured on window aggregates (6,000 requests a window), up to 10 h.
    ctr_agg = [
        run_aggregate(topo, 10_000 + seed, windows=ctr_drop_windows, ctr_factor=0.97)
        for seed in range(ctr_drop_seeds)
    ]
    aa = [
        run_aggregate(topo, seed, windows=aggregate_windows, stop_on_decision=False)
        for seed in range(aa_seeds)
    ]
    aa_full = [run_inprocess(topo, seed, None, minutes, rate) for seed in range(aa_full_seeds)]
    bad = [
        run_inprocess(topo, seed, kind, minutes, rate) for kind in BAD_CANARIES for seed in range(bad_seeds)
    ]
    all_aa = aa + aa_full
    rollbacks = sum(r.decision == "ROLLBACK" for r in all_aa)
    lo, hi = clopper_pearson(rollbacks, len(all_aa))
    summary: dict[str, Any] = {
        "alpha": topology.canary.alpha,
        "aa_runs": len(all_aa),
        "aa_aggregate_runs": len(aa),
        "aa_full_runs": len(aa_full),
        "aa_false_rollbacks": rollbacks,
        "aa_false_rollback_rate": rollbacks / len(all_aa) if all_aa else 0.0,
        "aa_false_rollback_ci95": [lo, hi],
        "aa_promote_rate": sum(r.decision == "PROMOTE" for r in all_aa) / len(all_aa) if all_aa else 0.0,
        "bad": {},
    }
    for kind, runs in [(k, [r for r in bad if r.kind == k]) for k in BAD_CANARIES] + [
        ("canary_ctr_drop (aggregate)", ctr_agg)
    ]:
        decided = [r for r in runs if r.decision == "ROLLBACK"]
        summary["bad"][kind] = {
            "runs": len(runs),
            "rollbacks": len(decided),
            "false_promotes": sum(r.decision == "PROMOTE" for r in runs),
            "median_impressions_to_rollback": float(np.median([r.impressions for r in decided]))
            if decided
            else None,
            "median_requests_to_rollback": float(np.median([r.requests for r in decided]))
            if decided
            else None,
            "median_windows_to_rollback": float(np.median([r.windows for r in decided])) if decided else None,
            "p90_impressions_to_rollback": float(np.percentile([r.impressions for r in decided], 90))
            if decided
            else None,
        }
    return {
        "settings": {
            "aa_seeds": aa_seeds,
            "aa_full_seeds": aa_full_seeds,
            "bad_seeds": bad_seeds,
            "minutes": minutes,
            "rate_per_s": rate,
            "canary_share": 0.5,
            "label_maturity_ms": topo.labels.maturity_ms,
            "aggregate_windows": aggregate_windows,
            "ctr_drop_aggregate_seeds": ctr_drop_seeds,
            "ctr_drop_aggregate_windows": ctr_drop_windows,
        },
        "summary": summary,
        "runs": [asdict(r) for r in (*aa_full, *bad, *ctr_agg)],
        "aa_aggregate_decisions": {
            d: sum(r.decision == d for r in aa) for d in ("PROMOTE", "HOLD", "ROLLBACK")
        },
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of a :func:`run_bench` result."""
    s = result["summary"]
    lo, hi = s["aa_false_rollback_ci95"]
    lines = [
        f"A/A canaries: {s['aa_runs']} runs ({s['aa_aggregate_runs']} aggregate, {s['aa_full_runs']} full), "
        f"false ROLLBACK {s['aa_false_rollbacks']} = {s['aa_false_rollback_rate']:.3%} "
        f"(95 % CI {lo:.3%}..{hi:.3%}) vs alpha {s['alpha']:.3f}; PROMOTE {s['aa_promote_rate']:.1%}",
        "",
        f"{'bad canary':28} {'runs':>4} {'rollback':>8} {'promote':>7} "
        f"{'impressions':>12} {'requests':>9} {'windows':>7}",
    ]
    for kind, b in s["bad"].items():
        imp = (
            "-"
            if b["median_impressions_to_rollback"] is None
            else f"{b['median_impressions_to_rollback']:.0f}"
        )
        req = "-" if b["median_requests_to_rollback"] is None else f"{b['median_requests_to_rollback']:.0f}"
        win = "-" if b["median_windows_to_rollback"] is None else f"{b['median_windows_to_rollback']:.0f}"
        lines.append(
            f"{kind:28} {b['runs']:>4} {b['rollbacks']:>8} {b['false_promotes']:>7} "
            f"{imp:>12} {req:>9} {win:>7}"
        )
    return "\n".join(lines)
