"""The Prometheus rules, their promtool tests, the Alertmanager example and the runbooks.

- ``promtool check rules`` and ``promtool test rules`` (deploy/prometheus/tests/*.yml) pass;
- every series a rule reads is one the worker really exports (MonitorMetrics, fresh registry), with label
  names it really has, so the rules cannot drift from the code; thresholds equal topologies/default.yaml;
- every alert has a severity level, a runbook that exists and a suggested action, and is exercised firing
  by the promtool tests at each of its severities;
- ``amtool check-config`` accepts the Alertmanager example, routes send each level where docs/alerting.md
  says, and the inhibition rules silence exactly the symptoms of the causes they name (checked on the
  labels the promtool tests show the rules produce);
- every worker signal documented in docs/signals.md has a runbook with the four sections.

promtool and amtool come from scripts/install_promtool.sh (CI runs it); without them these tests skip
locally and fail under CI.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from stream_monitor.core.runbooks import GENERIC_RUNBOOK, RUNBOOKS, incident_level, runbook_for
from stream_monitor.sinks.metrics import MonitorMetrics
from stream_monitor.topology import load_topology, parse_duration_ms
from tests.unit._promql import (
    PROMETHEUS_SERIES,
    ROOT,
    TARGET_LABELS,
    metric_names,
    registered_series,
    selectors,
    tool,
)

pytestmark = pytest.mark.unit

RULES_DIR = ROOT / "deploy" / "prometheus" / "rules"
TESTS_DIR = ROOT / "deploy" / "prometheus" / "tests"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOK_DIR = ROOT / "docs" / "runbooks"
SIGNALS_MD = ROOT / "docs" / "signals.md"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted(TESTS_DIR.glob("*.yml"))
SEVERITY_OF_SEV = {"SEV1": "critical", "SEV2": "critical", "SEV3": "warning", "SEV4": "info"}
RUNBOOK_SECTIONS = ("## What it means", "## How to confirm", "## How to mitigate", "## How to roll back")


def _rules() -> Iterator[dict[str, Any]]:
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            yield from group["rules"]


ALERTS = [r for r in _rules() if "alert" in r]
RECORDS = [r for r in _rules() if "record" in r]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT)


# --- promtool -------------------------------------------------------------------------------------------


def test_rule_and_test_files_exist() -> None:
    assert {p.name for p in RULE_FILES} == {"recording.yml", "alerts.yml"}
    assert len(TEST_FILES) >= 5
    for path in TEST_FILES:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert sorted((TESTS_DIR / f).resolve() for f in doc["rule_files"]) == [
            p.resolve() for p in RULE_FILES
        ]


def test_promtool_check_rules() -> None:
    result = _run(tool("promtool"), "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES), result.stdout


def test_promtool_test_rules() -> None:
    result = _run(tool("promtool"), "test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TEST_FILES), result.stdout


def test_promtool_test_rules_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The rule tests can fail: the same test with one expected label changed does."""
    doc = yaml.safe_load((TESTS_DIR / "serving.yml").read_text(encoding="utf-8"))
    doc["rule_files"] = [str((TESTS_DIR / f).resolve()) for f in doc["rule_files"]]
    first = next(t for t in doc["tests"][0]["alert_rule_test"] if t["exp_alerts"])
    first["exp_alerts"][0]["exp_labels"]["sev"] = "SEV4"
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(doc), encoding="utf-8")
    result = _run(tool("promtool"), "test", "rules", str(broken))
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def _tested_alerts() -> list[tuple[str, dict[str, str]]]:
    """(alertname, labels) of every alert the promtool tests expect to fire."""
    out = []
    for path in TEST_FILES:
        for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for case in test.get("alert_rule_test", []):
                for expected in case.get("exp_alerts") or []:
                    labels = {k: str(v) for k, v in expected["exp_labels"].items()}
                    out.append((case["alertname"], {**labels, "alertname": case["alertname"]}))
    return out


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: f"{r['alert']}-{r['labels']['severity'][:8]}")
def test_every_alert_fires_in_a_promtool_test_at_each_severity(rule: dict[str, Any]) -> None:
    fired = [labels for name, labels in _tested_alerts() if name == rule["alert"]]
    assert fired, f"{rule['alert']} never fires in deploy/prometheus/tests"
    if "{{" not in rule["labels"]["severity"]:
        assert any(labels["severity"] == rule["labels"]["severity"] for labels in fired), rule["labels"]


# --- the rules read what the worker exports -------------------------------------------------------------


def test_metric_name_extraction() -> None:
    assert metric_names('rate(a_total{x=~"y|z"}[5m]) / ignoring(x) group_left(k) b and c offset 5m') == {
        "a_total",
        "b",
        "c",
    }
    assert metric_names('vector(1) > bool on() d:e:f unless absent(up{job="j"})') == {"d:e:f", "up"}
    assert metric_names('label_replace(m, "x", "$1", "metric", "psi\\\\.(.+)")') == {"m"}


def test_every_series_a_rule_reads_is_registered_by_monitor_metrics() -> None:
    """Rules may read the worker's series, Prometheus' own (up), recorded series defined here, and the
    pending canary series (until the canary branch registers them)."""
    exported = registered_series()
    recorded = {r["record"] for r in RECORDS}
    assert all(":" in name for name in recorded), "recorded names use level:metric:operations"
    for rule in [*RECORDS, *ALERTS]:
        name = rule.get("alert") or rule["record"]
        for metric in metric_names(rule["expr"]):
            known = metric in exported or metric in recorded or metric in PROMETHEUS_SERIES
            assert known, f"{name}: {metric} is not a series the worker exports"
        for metric, matchers in selectors(rule["expr"]):
            if metric in exported:
                unknown = set(matchers) - exported[metric] - TARGET_LABELS
                assert not unknown, f"{name}: {metric} has no label {sorted(unknown)}"


def test_no_rule_assumes_a_scrape_job_name() -> None:
    """Users name their scrape job as they like; the rules know workers by what they export."""
    for rule in [*RECORDS, *ALERTS]:
        for metric, matchers in selectors(rule["expr"]):
            assert "job" not in matchers, f"{rule.get('alert') or rule['record']}: {metric} selects on job"


def test_workers_are_known_by_a_series_every_worker_exports_from_its_start() -> None:
    """stream_monitor:worker:up (the WorkerDown rule) takes a target that exports state_store_up for a
    worker: a fresh MonitorMetrics, before any call, already exports it (an unlabelled gauge)."""
    (record,) = [r for r in RECORDS if r["record"] == "stream_monitor:worker:up"]
    assert metric_names(record["expr"]) == {"up", "stream_monitor_state_store_up", "stream_monitor:worker:up"}
    registry = CollectorRegistry()
    MonitorMetrics(registry)
    assert registry.get_sample_value("stream_monitor_state_store_up") is not None
    (down,) = [a for a in ALERTS if a["alert"] == "StreamMonitorWorkerDown"]
    assert metric_names(down["expr"]) == {"stream_monitor:worker:up"}


def _documented_signals() -> set[str]:
    """Signal names in the first column of the docs/signals.md tables whose first header is "signal"."""
    found: set[str] = set()
    in_table = False
    for line in SIGNALS_MD.read_text(encoding="utf-8").splitlines():
        if re.match(r"^\|\s*signal\s*\|", line):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        elif in_table:
            found.update(re.findall(r"^\| `([a-z_]+)` \|", line))
    return found


def test_signal_matchers_name_documented_signals() -> None:
    documented = _documented_signals() | {"labels"}
    for rule in [*RECORDS, *ALERTS]:
        for _metric, matchers in selectors(rule["expr"]):
            if "signal" not in matchers:
                continue
            op, value = matchers["signal"]
            names = value.split("|") if op == "=~" else [value]
            assert set(names) <= documented, f"{rule.get('alert') or rule['record']}: {names}"


def _thresholds(record: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for rule in RECORDS:
        if rule["record"] == record:
            match = re.fullmatch(r"vector\(([0-9.e+-]+)\)", rule["expr"].strip())
            assert match, rule
            out[tuple(sorted(rule.get("labels", {}).items()))] = float(match.group(1))
    return out


def test_thresholds_equal_the_default_topology() -> None:
    topology = load_topology(ROOT / "topologies" / "default.yaml")
    rates = _thresholds("stream_monitor:threshold:rate_ratio")
    assert rates == {
        **{(("severity", "warning"), ("signal", r.signal)): r.threshold for r in topology.rates},
        **{
            (("severity", "critical"), ("signal", r.signal)): r.threshold * r.critical_factor
            for r in topology.rates
        },
    }
    fresh = topology.freshness
    assert _thresholds("stream_monitor:threshold:freshness_p95_age_seconds") == {
        **{(("feature", f), ("severity", "warning")): slas[0.95] for f, slas in fresh.slas_s.items()},
        **{
            (("feature", f), ("severity", "critical")): slas[0.95] * fresh.critical_factor
            for f, slas in fresh.slas_s.items()
        },
    }
    psi = topology.features.psi_threshold
    assert _thresholds("stream_monitor:threshold:psi") == {
        (("severity", "warning"),): psi,
        (("severity", "critical"),): 2 * psi,
    }
    assert _thresholds("stream_monitor:threshold:dataset_late_seconds") == {
        (("dataset", d.name),): d.deadline_ms / 1000 for d in topology.datasets
    }
    burns = _thresholds("stream_monitor:threshold:burn_rate")
    assert {dict(k)["alert"]: v for k, v in burns.items()} == {a.name: a.factor for a in topology.slo.alerts}
    for key in burns:
        labels = dict(key)
        (alert,) = [a for a in topology.slo.alerts if a.name == labels["alert"]]
        assert parse_duration_ms(labels["long"]) == alert.long_ms
        assert parse_duration_ms(labels["short"]) == alert.short_ms
        # The rule reads the worker's burn gauges of exactly these windows.
        for window in (labels["long"], labels["short"]):
            assert any(r["record"] == f"stream_monitor:slo_burn_rate:{window}" for r in RECORDS)
            assert any(f"stream_monitor:slo_burn_rate:{window}" in a["expr"] for a in ALERTS)


# --- labels, annotations, runbooks ----------------------------------------------------------------------


@pytest.mark.parametrize("rule", ALERTS, ids=lambda r: f"{r['alert']}-{r['labels']['severity'][:8]}")
def test_alert_labels_and_annotations(rule: dict[str, Any]) -> None:
    labels, annotations = rule["labels"], rule["annotations"]
    assert rule["alert"].startswith("StreamMonitor")
    assert {"sev", "severity"} <= set(labels)
    # signal: a fixed label, or kept from the worker's series (one rule for several signals).
    assert "signal" in labels or re.search(r"by \(signal\b", rule["expr"]), rule["alert"]
    # Templated levels (by segment) must still only produce SEV1-4 / matching severities.
    sevs = re.findall(r"SEV[0-9]", labels["sev"])
    assert sevs and set(sevs) <= set(SEVERITY_OF_SEV), labels["sev"]
    if "{{" not in labels["sev"]:
        assert labels["severity"] == SEVERITY_OF_SEV[labels["sev"]], labels
    else:
        allowed = {SEVERITY_OF_SEV[s] for s in sevs}
        assert set(re.findall(r"critical|warning|info", labels["severity"])) <= allowed, labels
    assert labels.get("cause", "stale_feature") in {
        "stale_feature",
        "traffic_loss",
        "bad_release",
        "monitor_blind",
    }
    assert {"summary", "description", "runbook_url", "suggested_action"} <= set(annotations)
    assert all(str(annotations[k]).strip() for k in ("summary", "description", "suggested_action"))
    path = ROOT / annotations["runbook_url"].split("#")[0]
    assert annotations["runbook_url"].startswith("docs/runbooks/") and path.is_file(), annotations[
        "runbook_url"
    ]
    if labels.get("signal") in RUNBOOKS:
        assert annotations["runbook_url"] == runbook_for(labels["signal"]), (
            "same runbook as the worker's alert"
        )


def test_worker_alert_levels_agree_with_the_rules() -> None:
    """incident_level() (for the worker's own alerts) gives the level the Prometheus rule of the same signal
    and severity gives (TrafficDrop excepted: the worker calls any non-silent drop a warning)."""
    checked = 0
    for name, labels in _tested_alerts():
        if labels.get("signal") not in RUNBOOKS or name == "StreamMonitorTrafficDrop":
            continue
        key = {d: labels.get(d, "*") for d in ("model", "model_version", "arm", "surface")}
        segment = labels.get("segment", "*")
        key.update(
            dict(part.split("=", 1) for part in segment.split(",")) if segment != "*" else {"region": "*"}
        )
        assert incident_level(labels["signal"], labels["severity"], "", key) == labels["sev"], (name, labels)
        checked += 1
    assert checked >= 20


def test_every_documented_worker_signal_has_its_own_runbook() -> None:
    signals = _documented_signals()
    assert {"volume", "freshness", "feature_drift", "error_budget_burn", "label_ctr"} <= signals
    missing = sorted(s for s in signals if s not in RUNBOOKS)
    assert not missing, f"add these signals to stream_monitor/core/runbooks.py RUNBOOKS: {missing}"
    for signal in sorted(signals | set(RUNBOOKS)):
        path = ROOT / runbook_for(signal)
        assert path.is_file(), f"{signal}: {path} does not exist"
    assert (RUNBOOK_DIR / GENERIC_RUNBOOK).is_file()


@pytest.mark.parametrize("path", sorted(RUNBOOK_DIR.glob("*.md")), ids=lambda p: p.name)
def test_runbooks_answer_the_four_questions(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# ")
    if path.name == GENERIC_RUNBOOK:
        for name in {p.name for p in RUNBOOK_DIR.glob("*.md")} - {GENERIC_RUNBOOK}:
            assert f"]({name})" in text, f"the index does not link {name}"
        return
    positions = [text.find(section) for section in RUNBOOK_SECTIONS]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), path.name
    for link in re.findall(r"\]\(([^)#:]+\.md)", text):
        assert (path.parent / link).resolve().is_file(), f"{path.name}: broken link {link}"


def test_runbooks_are_linked_by_some_alert() -> None:
    used = {Path(a["annotations"]["runbook_url"]).name for a in ALERTS} | set(RUNBOOKS.values())
    assert {p.name for p in RUNBOOK_DIR.glob("*.md")} - {GENERIC_RUNBOOK} == used


# --- Alertmanager ---------------------------------------------------------------------------------------


def _alertmanager() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))
    return loaded


def test_amtool_check_config() -> None:
    result = _run(tool("amtool"), "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        ({"sev": "SEV1", "model": "m"}, "pager,chat"),
        ({"sev": "SEV2", "model": "m"}, "pager,chat"),
        ({"sev": "SEV3", "model": "m"}, "tickets"),
        ({"sev": "SEV4", "model": "m"}, "chat"),
        ({"alertname": "SomethingUnlabelled"}, "chat"),
    ],
)
def test_alertmanager_routes_by_level(labels: dict[str, str], receivers: str) -> None:
    argv = [f"{k}={v}" for k, v in labels.items()]
    result = _run(tool("amtool"), "config", "routes", "test", f"--config.file={ALERTMANAGER}", *argv)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers


def test_alertmanager_groups_incidents_by_model_and_version() -> None:
    route = _alertmanager()["route"]
    assert route["group_by"] == ["model", "model_version"]
    # Every alert that names a version also names a model (so it joins its model's incident).
    for name, labels in _tested_alerts():
        assert "model_version" not in labels or "model" in labels, name


_MATCHER = re.compile(r'^\s*([a-zA-Z_]+)\s*(=~|!~|!=|=)\s*"(.*)"\s*$')


def _matches(matchers: list[str], labels: Mapping[str, str]) -> bool:
    """Alertmanager matcher semantics: a missing label is the empty string; regexes are anchored."""
    for matcher in matchers:
        parsed = _MATCHER.match(matcher)
        assert parsed, matcher
        name, op, value = parsed.groups()
        have = labels.get(name, "")
        ok = {
            "=": have == value,
            "!=": have != value,
            "=~": re.fullmatch(value, have) is not None,
            "!~": re.fullmatch(value, have) is None,
        }[op]
        if not ok:
            return False
    return True


def _inhibited(target: Mapping[str, str], firing: list[Mapping[str, str]]) -> bool:
    for rule in _alertmanager()["inhibit_rules"]:
        source_m, target_m = rule["source_matchers"], rule["target_matchers"]
        if not _matches(target_m, target):
            continue
        target_is_both = _matches(source_m, target)
        for source in firing:
            if source is target or not _matches(source_m, source):
                continue
            # An alert matching both sides cannot be inhibited by another that does too.
            if target_is_both and _matches(target_m, source):
                continue
            if all(source.get(k, "") == target.get(k, "") for k in rule.get("equal", [])):
                return True
    return False


def _alert(name: str, **labels: str) -> dict[str, str]:
    """The one alert of that name the promtool tests expect with these labels (so: real rule output)."""
    found = [
        dict(a) for n, a in _tested_alerts() if n == name and all(a.get(k) == v for k, v in labels.items())
    ]
    assert found, (name, labels)
    return found[0]


def test_inhibition_cause_silences_symptom() -> None:
    stale = _alert("StreamMonitorFeatureStale", feature="watch_minutes_7d", severity="warning")
    drift = _alert("StreamMonitorFeatureDrift", feature="watch_minutes_7d")
    other_drift = {**drift, "feature": "country"}
    score = _alert("StreamMonitorScoreDrift")
    assert _inhibited(drift, [stale, drift])
    assert not _inhibited(other_drift, [stale, other_drift]), "another feature's drift is news"
    assert not _inhibited({**drift, "model": "search-ranker"}, [stale]), "another model"
    assert _inhibited({**score, "model_version": stale["model_version"]}, [stale])
    assert not _inhibited(stale, [stale, drift]), "the cause itself stays"

    silent = _alert("StreamMonitorTrafficSilent", segment="*")
    source_drop = _alert("StreamMonitorCandidateSourceDrop", metric="share.collab")
    ctr = _alert("StreamMonitorCTRDrop")
    assert _inhibited({**source_drop, "surface": silent["surface"]}, [silent])
    assert _inhibited({**ctr, "surface": silent["surface"]}, [silent])
    assert not _inhibited({**source_drop, "segment": "region=us"}, [silent]), "another slice"
    errors = _alert("StreamMonitorErrorRateHigh", severity="warning", segment="region=eu")
    assert not _inhibited(errors, [silent]), "errors are not explained by traffic loss"


def test_inhibition_rollback_verdict_silences_that_versions_alerts() -> None:
    rollback = _alert("StreamMonitorCanaryRollback", model="home-ranker")
    version = rollback["model_version"]
    errors = {**_alert("StreamMonitorErrorRateHigh", severity="critical"), "model_version": version}
    drift = {**_alert("StreamMonitorScoreDrift"), "model_version": version}
    assert _inhibited(errors, [rollback, errors])
    assert _inhibited(drift, [rollback, drift])
    assert not _inhibited({**errors, "model_version": "v1"}, [rollback]), "control's alerts stay"
    assert not _inhibited(rollback, [rollback])
    lag = _alert("StreamMonitorConsumerLagHigh")
    assert not _inhibited(lag, [rollback])


def test_inhibition_critical_silences_warning_of_the_same_alert_and_series() -> None:
    critical = _alert("StreamMonitorErrorRateHigh", severity="critical")
    warning = _alert(
        "StreamMonitorErrorRateHigh", severity="warning", model_version=critical["model_version"]
    )
    other_slice = _alert("StreamMonitorErrorRateHigh", severity="warning", segment="region=eu")
    assert _inhibited(warning, [critical, warning])
    assert not _inhibited(other_slice, [critical, other_slice])
    assert not _inhibited(critical, [critical, warning])
    page = _alert("StreamMonitorErrorBudgetBurn", window="page")
    ticket = {
        **_alert("StreamMonitorErrorBudgetBurn", window="ticket"),
        **{k: page[k] for k in ("slo", "model", "model_version", "arm")},
    }
    assert _inhibited(ticket, [page, ticket])


def test_inhibition_blind_monitor_silences_signal_alerts_only() -> None:
    down = _alert("StreamMonitorWorkerDown", instance="w1:9464")
    silent = _alert("StreamMonitorTrafficSilent", segment="*")
    lag = _alert("StreamMonitorConsumerLagHigh")
    store = _alert("StreamMonitorStateStoreDown")
    assert _inhibited(silent, [down, silent])
    assert not _inhibited(lag, [down, lag])
    assert not _inhibited(store, [down, store])


def test_inhibition_labels_exist_on_the_alerts() -> None:
    """Every label an inhibition rule compares is produced by some rule on both sides (a typo in `equal`
    would make the rule match everything or nothing)."""
    produced: set[str] = {"alertname"}
    for _name, labels in _tested_alerts():
        produced |= set(labels)
    for rule in _alertmanager()["inhibit_rules"]:
        assert set(rule.get("equal", [])) <= produced, rule
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            parsed = _MATCHER.match(matcher)
            assert parsed and parsed.group(1) in produced, matcher


def test_inline_factors_equal_the_default_topology() -> None:
    """The baseline comparisons written into the expressions use the topology's ratios and floors."""
    topology = load_topology(ROOT / "topologies" / "default.yaml")

    def exprs(name: str) -> list[str]:
        found = [" ".join(r["expr"].split()) for r in ALERTS if r["alert"] == name]
        assert found, name
        return found

    def factor(expr: str) -> float:
        match = re.search(r"< ([0-9.]+) \*", expr)
        assert match, expr
        return float(match.group(1))

    volume = topology.volume
    for expr in exprs("StreamMonitorTrafficSilent") + exprs("StreamMonitorTrafficDrop"):
        assert set(re.findall(r"median1h >= ([0-9.]+)", expr)) == {f"{volume.min_expected:g}"}, expr
    assert factor(exprs("StreamMonitorTrafficDrop")[0]) == pytest.approx(1 - volume.drop_ratio)
    sources = topology.sources
    drop, lost = exprs("StreamMonitorCandidateSourceDrop")
    assert factor(drop) == pytest.approx(1 - sources.drop_ratio)
    for expr in (drop, lost):
        assert expr.endswith(f">= {sources.min_share:g}"), expr
    (engagement,) = exprs("StreamMonitorEngagementLoggingDrop")
    assert factor(engagement) == pytest.approx(1 - topology.engagement.drop_ratio)
    (ctr,) = exprs("StreamMonitorCTRDrop")
    # The rule's floor counts matured requests (impressions are not exported), at min_impressions.
    assert factor(ctr) == pytest.approx(1 - topology.labels.drop_ratio)
    assert ctr.endswith(f">= {topology.labels.min_impressions:g}"), ctr
