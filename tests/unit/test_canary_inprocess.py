"""Canary analysis end to end in this process: simulator (canary arm) -> pipeline -> Engine -> health sink.

* A/A canaries (both arms the same model behaviour) are never rolled back and are eventually promoted;
* the three bad canaries of the simulator are rolled back, naming what broke;
* ``stream-monitor replay`` writes the verdicts beside the alerts;
* the bad-canary incidents leave every other field of the simulated stream as it was.
"""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from stream_monitor.bench.canary import fast_topology, run_aggregate, run_inprocess
from stream_monitor.cli.main import main
from stream_monitor.core.stats.proportions import clopper_pearson
from stream_monitor.core.topology import Topology
from stream_monitor.sim import CANARY_INCIDENT_KINDS, Incident, SimConfig, TrafficSimulator, parse_incident
from stream_monitor.topology import load_topology

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "schemas" / "health.schema.json").read_text(encoding="utf-8"))
START = 1_764_028_800_000


@functools.cache
def _topology(**canary: float) -> Topology:
    topo = fast_topology(load_topology())
    return replace(topo, canary=replace(topo.canary, **canary)) if canary else topo


def test_a_canary_with_higher_latency_is_rolled_back_naming_latency() -> None:
    run = run_inprocess(_topology(), seed=2, kind="canary_latency", minutes=6, rate=60)
    assert run.decision == "ROLLBACK", run.reason
    assert "latency.total" in run.reason
    assert any(s["kind"] == "stage" for s in run.suspects)


def test_a_canary_with_a_broken_feature_is_rolled_back_naming_the_feature() -> None:
    run = run_inprocess(_topology(), seed=3, kind="canary_broken_feature", minutes=6, rate=60)
    assert run.decision == "ROLLBACK", run.reason
    assert run.suspects[0] == {
        "kind": "feature",
        "name": "watch_minutes_7d",
        "evidence": run.suspects[0]["evidence"],
    }


@pytest.mark.slow
def test_a_canary_with_three_percent_lower_ctr_is_rolled_back() -> None:
    run = run_inprocess(_topology(), seed=1, kind="canary_ctr_drop", minutes=90, rate=100)
    assert run.decision == "ROLLBACK", run.reason
    assert "ctr" in run.reason


def test_an_aa_canary_is_not_rolled_back_and_is_promoted() -> None:
    # A looser margin than the default so that promotion comes within a short test run.
    topo = _topology(margin=0.3, min_impressions=2000)
    run = run_inprocess(topo, seed=4, kind=None, minutes=14, rate=80)
    assert run.decision == "PROMOTE", run.reason


def test_aa_canaries_from_aggregates_are_rarely_rolled_back() -> None:
    """40 seeds x 40 windows of A/A window sums: no more false rollbacks than alpha allows."""
    runs = [run_aggregate(_topology(), seed, windows=40, stop_on_decision=False) for seed in range(40)]
    rollbacks = sum(r.decision == "ROLLBACK" for r in runs)
    # If the true rate were alpha = 0.05, seeing more than 7 of 40 has probability < 0.5 %.
    assert rollbacks <= 7
    lo, _hi = clopper_pearson(rollbacks, len(runs))
    assert lo <= 0.05


def test_replay_writes_canary_verdicts_beside_the_alerts(tmp_path: Path) -> None:
    recording = tmp_path / "canary.jsonl"
    sim = TrafficSimulator(
        seed=5,
        start_ms=START,
        rate_per_s=40,
        incidents=(Incident("canary_latency", START),),
        config=SimConfig(canary_share=0.5),
    )
    sim.to_jsonl(recording, 240)
    out = tmp_path / "out.jsonl"
    assert main(["replay", str(recording), "--out", str(out)]) == 0
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    verdicts = [d for d in docs if d.get("schema") == "stream-monitor.health/v1"]
    assert verdicts, "no verdicts in the replay output"
    validator = Draft202012Validator(SCHEMA)
    for doc in verdicts:
        assert list(validator.iter_errors(doc)) == []
    assert verdicts[-1]["decision"] == "ROLLBACK"
    assert verdicts[-1]["candidate"]["version"] == SimConfig().canary_version
    assert verdicts[-1]["baseline"]["version"] == SimConfig().control_version
    assert verdicts[-1]["candidate"]["lineage"]["feature_set"] == "home-features@v12"


def test_replay_without_a_canary_writes_no_verdicts(tmp_path: Path) -> None:
    recording = tmp_path / "plain.jsonl"
    TrafficSimulator(seed=5, start_ms=START, rate_per_s=20).to_jsonl(recording, 180)
    out = tmp_path / "out.jsonl"
    assert main(["replay", str(recording), "--out", str(out)]) == 0
    assert "stream-monitor.health" not in out.read_text()


@pytest.mark.parametrize("kind", sorted(CANARY_INCIDENT_KINDS))
def test_bad_canaries_bend_only_the_canary_arm(kind: str) -> None:
    config = SimConfig(canary_share=0.3)
    clean = list(TrafficSimulator(seed=9, start_ms=START, rate_per_s=50, config=config).events(60))
    bent = list(
        TrafficSimulator(
            seed=9, start_ms=START, rate_per_s=50, incidents=(Incident(kind, START),), config=config
        ).events(60)
    )
    control = [e for k, _, e in clean if k == "serving" and e["arm"] == "control"]
    assert control == [e for k, _, e in bent if k == "serving" and e["arm"] == "control"]
    canary_clean = [e for k, _, e in clean if k == "serving" and e["arm"] == "canary"]
    canary_bent = [e for k, _, e in bent if k == "serving" and e["arm"] == "canary"]
    if kind != "canary_ctr_drop":  # a click drop shows only in engagement
        assert canary_clean != canary_bent
    assert Incident(kind, START).target == {"arm": "canary"}
    assert parse_incident(kind, START).ground_truth.key == {"arm": "canary"}


def test_a_bad_canary_on_the_control_arm_is_refused() -> None:
    with pytest.raises(ValueError, match="target arm must be canary"):
        Incident("canary_latency", START, target={"arm": "control"})
