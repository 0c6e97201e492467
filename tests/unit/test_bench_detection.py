"""The detection benchmark (stream_monitor.bench.detection): its scoring rules, and the quick path end to end
on a tiny configuration, checking the report's JSON shape (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stream_monitor.bench import detection
from stream_monitor.bench.detection import (
    SYSTEMS,
    DetectionBenchConfig,
    Fired,
    format_report,
    quick_config,
    run_detection_bench,
)
from stream_monitor.cli.main import COMMANDS, main
from stream_monitor.sim import INCIDENT_KINDS, GroundTruth
from stream_monitor.topology import load_topology

pytestmark = pytest.mark.unit

MINUTE = 60_000
ONSET = 1_000 * MINUTE + 23_000  # 23 s into a window


def _tiny(**overrides: Any) -> DetectionBenchConfig:
    base: dict[str, Any] = {
        "kinds": ("error_spike",),
        "rate_per_s": 10.0,
        "run_s": 900,
        "onset_s": 420,
        "incident_s": 300,
        "clean_days": 600 / 86_400,
        "synthetic": False,
        "jobs": 1,
    }
    base.update(overrides)
    return quick_config(**base)


def _fired(system: str, signal: str, key: dict[str, str], window_start: int, emitted: int) -> Fired:
    full = {"model": "m", "model_version": "v", "arm": "control", "surface": "home"}
    full.update({"platform": "*", "region": "*", "tenure": "*"})
    full.update(key)
    return Fired(system, signal, "ratio", full, window_start, window_start + MINUTE, emitted)


def test_scoring_counts_the_right_slice_and_measures_delay_from_the_onset() -> None:
    topology = load_topology()
    truth = GroundTruth("error_rate", {"region": "eu"}, ONSET, end_ms=ONSET + 10 * MINUTE)
    onset_window = ONSET - ONSET % MINUTE
    alerts = [
        _fired("monitor", "error_rate", {"region": "eu"}, onset_window - MINUTE, onset_window),  # before
        _fired("monitor", "error_rate", {}, onset_window + MINUTE, onset_window + 2 * MINUTE + 30_000),
        _fired(
            "monitor",
            "error_rate",
            {"region": "eu"},
            onset_window + MINUTE,
            onset_window + 2 * MINUTE + 30_000,
        ),
        _fired(
            "monitor", "error_rate", {"region": "eu", "platform": "ios"}, onset_window, onset_window + 90_000
        ),
    ]
    result = detection._score_incident("monitor", alerts, truth, topology)
    assert result["detected"] is True
    assert result["delay_windows"] == 2 and result["delay_s"] == (2 * MINUTE + 30_000 - 23_000) / 1000
    # The earliest alert of the signal during the incident named region=eu,platform=ios: not the truth.
    assert result["first_key_right"] is False
    assert result["false_alerts"] == 3  # before the onset, the roll-up, the narrower slice


def test_scoring_of_naive_systems_takes_any_alert_during_the_incident() -> None:
    topology = load_topology()
    truth = GroundTruth("latency", {"region": "eu"}, ONSET, end_ms=ONSET + 10 * MINUTE)
    alerts = [
        Fired("adwin", "volume", "event", {}, 0, MINUTE, ONSET - 1),
        Fired("adwin", "latency", "event", {}, 0, MINUTE, ONSET + 5_000),
    ]
    result = detection._score_incident("adwin", alerts, truth, topology)
    assert (result["detected"], result["delay_s"], result["first_key_right"], result["false_alerts"]) == (
        True,
        5.0,
        None,
        1,
    )


def test_per_feature_signals_must_name_the_feature() -> None:
    topology = load_topology()
    truth = GroundTruth("freshness", {"region": "eu"}, ONSET, detail="watch_minutes_7d")
    key = {"platform": "*", "region": "eu", "tenure": "*"}
    right = Fired("monitor", "freshness", "p95_age_s.watch_minutes_7d", key, 0, 0, 0)
    wrong = Fired("monitor", "freshness", "p95_age_s.days_since_signup", key, 0, 0, 0)
    assert detection._names_truth(right, truth, topology)
    assert not detection._names_truth(wrong, truth, topology)


def test_every_incident_kind_has_magnitudes_ending_with_its_default() -> None:
    config = DetectionBenchConfig()
    assert config.kinds == tuple(INCIDENT_KINDS)
    for kind in config.kinds:
        magnitudes = config.magnitudes[kind]
        assert magnitudes[-1] == INCIDENT_KINDS[kind].default_magnitude
        assert list(magnitudes) == sorted(magnitudes)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown incident kind 'meteor'"):
        DetectionBenchConfig(kinds=("meteor",))
    with pytest.raises(ValueError, match="onset_s"):
        DetectionBenchConfig(onset_s=3000, incident_s=1200)
    with pytest.raises(ValueError, match="out of range for error_spike"):
        DetectionBenchConfig(kinds=("error_spike",), magnitudes={"error_spike": (2.0,)})


def test_quick_path_on_a_tiny_config_reports_the_json_shape() -> None:
    messages: list[str] = []
    report = run_detection_bench(_tiny(), messages.append)
    json.loads(json.dumps(report, allow_nan=False))  # JSON-safe as is
    assert report["suite"] == "detection" and report["version"] == detection.REPORT_VERSION
    assert set(report) >= {
        "config",
        "environment",
        "systems",
        "incidents",
        "clean",
        "goals",
        "synthetic",
        "runtime_s",
    }
    assert report["systems"] == dict(SYSTEMS)
    assert [(r["kind"], r["magnitude"], r["runs"]) for r in report["incidents"]] == [("error_spike", 0.2, 1)]
    row = report["incidents"][0]
    assert row["signal"] == "error_rate" and row["default_magnitude"] is True
    assert set(row["systems"]) == set(SYSTEMS)
    for stats in row["systems"].values():
        assert set(stats) == {
            "recall",
            "detected",
            "delay_windows",
            "delay_s",
            "first_key_right",
            "false_alerts_per_run",
        }
        assert 0.0 <= stats["recall"] <= 1.0
        assert set(stats["delay_windows"]) == set(stats["delay_s"]) == {"median", "p90"}
    assert report["clean"]["days"] == pytest.approx(600 / 86_400)
    assert set(report["clean"]["systems"]) == set(SYSTEMS)
    for stats in report["clean"]["systems"].values():
        assert stats["per_day"] >= 0 and isinstance(stats["by_signal"], dict)
    assert set(report["goals"]) == {"goals", "default_magnitude", "false_alerts_per_day", "met"}
    assert "skipped" in report["synthetic"]
    assert messages[0].startswith("2 runs (1 with incidents)")
    text = format_report(report)
    assert "error_spike" in text and "Clean traffic" in text


def test_bench_command_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "bench" in COMMANDS
    # --quick with a tinier configuration still: the command's wiring, not the numbers, is under test.
    monkeypatch.setattr("stream_monitor.cli.bench.quick_config", lambda **kw: _tiny(**{**kw, "jobs": 1}))
    out = tmp_path / "report.json"
    assert main(["bench", "detection", "--quick", "--no-naive", "--no-synthetic", "--json", str(out)]) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert set(report["incidents"][0]["systems"]) == {"monitor", "static_all", "detectors"}
    assert report["config"]["naive"] is False
    captured = capsys.readouterr()
    assert "Incidents" in captured.out and f"report written to {out}" in captured.err


def test_synthetic_section_shape() -> None:
    synthetic = detection.run_synthetic(seeds=1)
    assert {row["detector"] for row in synthetic["drift"]} == {
        "robust_baseline",
        "adwin",
        "page_hinkley",
        "default",
    }
    for row in synthetic["drift"]:
        assert 0.0 <= row["recall"] <= 1.0 and row["false_alerts_per_1000"] >= 0
    assert all({"precision", "recall"} <= set(row) for row in synthetic["anomalies"])
