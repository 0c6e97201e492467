"""The Prometheus rules against what the worker really exports, end to end.

Simulated traffic (40 minutes of event time, a stale feature from minute 20) runs through the real engine
with a real MonitorMetrics; the registry is read after every minute. Then:

- every ``stream_monitor_signal_value`` selector of the rules and the dashboard matches series the worker
  really exports (signal names *and* metric label values such as ``p95_age_s.<feature>`` or
  ``availability.burn_1h``), so a renamed metric value cannot silently empty a rule;
- the minute-by-minute samples become the input of a ``promtool test rules`` run: no rule fires on the
  clean first 20 minutes, and after the onset exactly the stale-feature alert fires, for the feature the
  incident ages, as the worker's own alert does, with the same runbook.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry

from stream_monitor.config import Topics
from stream_monitor.core.alerts import Alert
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.sim import SimConfig, TrafficSimulator, parse_incident
from stream_monitor.sinks.base import ListSink
from stream_monitor.sinks.metrics import MonitorMetrics
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import load_topology
from tests.unit._promql import ROOT, selectors, tool

pytestmark = pytest.mark.unit

MINUTE = 60_000
START = 1_764_000_000_000 - 1_764_000_000_000 % MINUTE
MINUTES = 40
ONSET_MIN = 20
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "stream-monitor.json"
# Signals this simulation cannot produce: no dataset announcements, no release, no canary analysis.
NOT_SIMULATED = frozenset({"dataset_arrival", "release", "release_ctr"})

Series = tuple[str, tuple[tuple[str, str], ...]]


@pytest.fixture(scope="module")
def simulated() -> tuple[dict[Series, dict[int, float]], list[Alert]]:
    """(series -> {minute: value}, the worker's alerts) for the simulated run."""
    topology = load_topology(ROOT / "topologies" / "default.yaml")
    incident = parse_incident(f"stale_feature:onset={ONSET_MIN * 60}", START)
    sim = TrafficSimulator(seed=3, start_ms=START, rate_per_s=20.0, incidents=[incident], config=SimConfig())
    registry = CollectorRegistry()
    sink, store, clock = ListSink(), MemoryStore(), EventTimeClock(START)
    engine = Engine(
        topology,
        store,
        sink,
        sink,
        clock,
        MonitorMetrics(registry, topology.segment_dims),
        EngineOptions(worker_id="t", auto_claim=True),
    )
    pipeline = InProcessPipeline(engine, Topics(), partitions=4)
    samples: dict[Series, dict[int, float]] = {}
    for minute in range(MINUTES):
        until = START + (minute + 1) * MINUTE
        for kind, key, event in sim.events_until(until):
            pipeline.feed(kind, key, orjson.dumps(event))
        clock.observe(until)
        pipeline.step()
        for family in registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                series = (sample.name, tuple(sorted(sample.labels.items())))
                samples.setdefault(series, {})[minute] = sample.value
    return samples, list(sink.alerts)


def _unquote(value: str) -> str:
    loaded: str = json.loads(f'"{value}"')
    return loaded


def _signal_selectors() -> Iterator[tuple[str, dict[str, tuple[str, str]]]]:
    exprs = [
        (r.get("alert") or r["record"], r["expr"])
        for p in RULES
        for g in yaml.safe_load(p.read_text())["groups"]
        for r in g["rules"]
    ]
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs += [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    for where, expr in exprs:
        for metric, matchers in selectors(expr):
            if metric == "stream_monitor_signal_value":
                yield where, {k: (op, _unquote(v)) for k, (op, v) in matchers.items() if "$" not in v}


def _matches(matchers: dict[str, tuple[str, str]], labels: dict[str, str]) -> bool:
    import re

    for name, (op, value) in matchers.items():
        have = labels.get(name, "")
        ok = {"=": have == value, "!=": have != value}.get(op)
        if ok is None:
            hit = re.fullmatch(value, have) is not None
            ok = hit if op == "=~" else not hit
        if not ok:
            return False
    return True


def test_every_signal_selector_matches_series_the_worker_exports(
    simulated: tuple[dict[Series, dict[int, float]], list[Alert]],
) -> None:
    samples, _alerts = simulated
    exported = [dict(labels) for name, labels in samples if name == "stream_monitor_signal_value"]
    assert len(exported) > 300
    checked = 0
    for where, matchers in _signal_selectors():
        op, signal = matchers.get("signal", ("=", ""))
        if set(signal.split("|") if op == "=~" else [signal]) <= NOT_SIMULATED:
            continue
        assert any(_matches(matchers, labels) for labels in exported), f"{where}: nothing matches {matchers}"
        checked += 1
    assert checked >= 40


def _promtool_input(samples: dict[Series, dict[int, float]]) -> list[dict[str, str]]:
    out = [{"series": 'up{job="stream-monitor", instance="sim:9464"}', "values": f"1x{MINUTES - 1}"}]
    for (name, labels), by_minute in sorted(samples.items()):
        body = ", ".join(
            f'{k}="{json.dumps(v)[1:-1]}"'
            for k, v in (*labels, ("instance", "sim:9464"), ("job", "stream-monitor"))
        )
        values = " ".join(repr(by_minute[m]) if m in by_minute else "_" for m in range(MINUTES))
        out.append({"series": f"{name}{{{body}}}", "values": values})
    return out


def test_rules_on_the_simulated_series_fire_only_for_the_incident(
    simulated: tuple[dict[Series, dict[int, float]], list[Alert]], tmp_path: Path
) -> None:
    samples, worker_alerts = simulated
    firing = 'group by (alertname, feature, severity) (ALERTS{alertstate="firing"})'
    stale = '{alertname="StreamMonitorFeatureStale", feature="watch_minutes_7d", severity="warning"}'
    test: dict[str, Any] = {
        "rule_files": [str(p) for p in RULES],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": _promtool_input(samples),
                "promql_expr_test": [
                    # Clean traffic: nothing fires (WorkerDown neither: the worker is scraped).
                    {"expr": firing, "eval_time": f"{ONSET_MIN - 1}m", "exp_samples": []},
                    # The stale feature, 15 minutes after onset: its alert, and only it.
                    {
                        "expr": firing,
                        "eval_time": f"{MINUTES - 1}m",
                        "exp_samples": [{"labels": stale, "value": 1}],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "simulated.yml"
    path.write_text(yaml.safe_dump(test, width=1_000_000), encoding="utf-8")
    done = subprocess.run(
        [tool("promtool"), "test", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]

    # The worker's own alerts on the same run: the same signal, feature and runbook.
    firing_alerts = [a for a in worker_alerts if a.status == "firing"]
    assert {a.signal for a in firing_alerts} == {"freshness"}
    assert {a.metric for a in firing_alerts} == {"p95_age_s.watch_minutes_7d"}
    assert {a.runbook for a in firing_alerts} == {"docs/runbooks/freshness.md"}
    assert all(a.window["start"] >= START + ONSET_MIN * MINUTE for a in firing_alerts)
