"""The no-server commands end to end: ``replay`` and ``demo`` as a user runs them."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from stream_monitor.cli.main import COMMANDS, build_parser, main
from stream_monitor.sim import TrafficSimulator, parse_incident

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
START_MS = 1_764_086_400_000  # aligned to a minute


def test_every_command_has_help() -> None:
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0


def test_replay_turns_a_recording_into_alerts_and_dead_letters(tmp_path: Path) -> None:
    recording = tmp_path / "events.jsonl"
    sim = TrafficSimulator(
        seed=4,
        start_ms=START_MS,
        rate_per_s=30,
        incidents=[parse_incident("error_spike:platform=android,onset=900", START_MS)],
    )
    sim.to_jsonl(recording, duration_s=1500)
    with recording.open("ab") as fh:
        fh.write(b'{"type": "serving", "ts": 1}\n\xff\xfe not json\n')
    alerts_file, dead_file = tmp_path / "alerts.jsonl", tmp_path / "dead.jsonl"

    assert main(["replay", str(recording), "--out", str(alerts_file), "--deadletter", str(dead_file)]) == 0

    everything = [orjson.loads(line) for line in alerts_file.read_bytes().splitlines()]
    # The spike also burns the whole series' error budget: those SLO alerts name the top level.
    burns = [a for a in everything if a["signal"] == "error_budget_burn"]
    assert burns and all(a["key"]["platform"] == a["key"]["region"] == "*" for a in burns)
    alerts = [a for a in everything if a["signal"] != "error_budget_burn"]
    assert [(a["signal"], a["status"], a["key"]["platform"], a["key"]["region"]) for a in alerts] == [
        ("error_rate", "firing", "android", "*")
    ]
    assert START_MS + 900_000 <= alerts[0]["window"]["start"] <= START_MS + 960_000
    dead = [orjson.loads(line) for line in dead_file.read_bytes().splitlines()]
    assert sorted(d["reason"] for d in dead) == ["invalid_json", "missing_field"]


def test_replay_of_a_missing_file_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "/nonexistent/events.jsonl"]) == 2
    assert "no such file" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_prints_the_injected_incident_and_serves_metrics() -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stream_monitor.cli.main",
            "demo",
            "--json",
            "--duration",
            "14",
            "--rate",
            # 40, not 20: at 20 requests/s a slice's window holds few enough requests that the latency
            # incident was localised outside eu in two clean-clone CI runs (wall-clock paced under load).
            "40",
            "--speed",
            "100",
            "--metrics-port",
            str(port),
            "--incident",
            "latency_regression:region=eu,stage=ranking,magnitude=4,onset=300",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    scraped: list[str] = []

    def scrape() -> None:
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
                    if "stream_monitor_windows_closed_total" in text:
                        scraped.append(text)
            except OSError:
                pass
            time.sleep(1)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    out, err = proc.communicate(timeout=60)
    scraper.join()
    assert proc.returncode == 0, err.decode()
    alerts = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    firing = [a for a in alerts if a["status"] == "firing"]
    assert firing and all(a["signal"] == "latency" and a["key"]["region"] == "eu" for a in firing), firing
    assert scraped and "stream_monitor_events_consumed_total" in scraped[-1]


def test_simulate_help_lists_every_incident_kind_the_library_accepts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from stream_monitor.sim import (
        CANARY_INCIDENT_KINDS,
        DATA_INCIDENT_KINDS,
        INCIDENT_KINDS,
        SHADOW_INCIDENT_KINDS,
    )

    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    kinds = [*INCIDENT_KINDS, *DATA_INCIDENT_KINDS, *CANARY_INCIDENT_KINDS, *SHADOW_INCIDENT_KINDS]
    assert len(kinds) >= 21
    missing = [kind for kind in kinds if kind not in text]
    assert not missing, missing


def test_incident_from_a_file_of_garbage_says_there_are_no_valid_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text('not json\n{"hello": "world"}\n[1, 2]\n\n{"type": "serving"}\n')
    assert main(["incident", "--from", str(garbage)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no incident "from 1969 to 1970"
    assert captured.err.strip() == (
        f"incident: {garbage}: no valid events: all 4 non-empty lines rejected (2 not JSON objects, "
        "2 not events as docs/events.md describes them)"
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert main(["incident", "--from", str(empty)]) == 1
    assert "no valid events: the file has no non-empty line" in capsys.readouterr().err


def test_demo_says_first_why_its_windows_are_hours_back(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--duration", "0.3", "--metrics-port", "0", "--no-incidents"]) == 0
    first = capsys.readouterr().err.splitlines()[0]
    assert "simulated time starts at " in first and "6 h before your clock" in first, first
    assert "windows are labelled from then" in first, first


def test_demo_on_a_taken_metrics_port_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--duration", "0.3", "--metrics-port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"demo: the metrics port 127.0.0.1:{port} is in use (another stream-monitor?); choose a free one "
        "with --metrics-port (or STREAM_MONITOR_METRICS_PORT; 0: no endpoint)"
    ]


def test_a_malformed_setting_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STREAM_MONITOR_METRICS_PORT", "ninety")
    assert main(["demo", "--duration", "0.3"]) == 2
    assert capsys.readouterr().err.startswith("demo: STREAM_MONITOR_METRICS_PORT='ninety': ")
    monkeypatch.delenv("STREAM_MONITOR_METRICS_PORT")
    assert main(["demo", "--duration", "0.3", "--topology", "/nonexistent.yaml"]) == 2
    assert capsys.readouterr().err == "demo: topology: /nonexistent.yaml: no such topology file\n"


def test_client_library_logs_stay_at_warning_unless_verbose() -> None:
    import logging

    from stream_monitor.cli._common import CLIENT_LOGGERS, quiet_client_logs

    before = {name: logging.getLogger(name).level for name in CLIENT_LOGGERS}
    try:
        quiet_client_logs(verbose=False)
        assert {logging.getLogger(n).getEffectiveLevel() for n in CLIENT_LOGGERS} == {logging.WARNING}
        quiet_client_logs(verbose=True)
        assert {logging.getLogger(n).getEffectiveLevel() for n in CLIENT_LOGGERS} == {logging.DEBUG}
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)
