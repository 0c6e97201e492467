"""``stream-monitor score-series``: CSV in, scores out, precise errors for bad rows."""

from __future__ import annotations

import csv
import io
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stream_monitor.cli.main import COMMANDS, build_parser, main
from stream_monitor.cli.score_series import InputError, read_series, score_rows, usual_interval_s
from stream_monitor.core.detectors import DEFAULT_THRESHOLD, CalibratedDetector
from stream_monitor.core.detectors.calibrated import periods_for_interval

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 11, 24, 10, 0, tzinfo=UTC)


def _values(n: int = 120, shift_at: int = 100, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [200 + rng.gauss(0, 5) + (60 if i >= shift_at else 0) for i in range(n)]


def _write(path: Path, rows: list[tuple[str, str]], header: bool = True) -> Path:
    lines = (["timestamp,value"] if header else []) + [f"{t},{v}" for t, v in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _iso_rows(values: list[float]) -> list[tuple[str, str]]:
    return [
        ((T0 + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ"), f"{v:.3f}") for i, v in enumerate(values)
    ]


def _read_output(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_registered_as_a_command() -> None:
    assert "score_series" in COMMANDS
    args = build_parser().parse_args(["score-series", "x.csv", "--threshold", "0.7"])
    assert args.threshold == 0.7 and args.func.__module__ == "stream_monitor.cli.score_series"


def test_scores_a_level_shift_and_writes_every_row(tmp_path: Path) -> None:
    values = _values()
    source = _write(tmp_path / "in.csv", _iso_rows(values))
    out = tmp_path / "out.csv"
    assert main(["score-series", str(source), "--out", str(out)]) == 0
    rows = _read_output(out)
    assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "alert"]
    assert [r["timestamp"] for r in rows] == [t for t, _ in _iso_rows(values)]  # as written in the input
    assert [r["value"] for r in rows] == [v for _, v in _iso_rows(values)]
    scores = [float(r["anomaly_score"]) for r in rows]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[: CalibratedDetector().warmup] == [0.0] * CalibratedDetector().warmup
    assert [r["alert"] for r in rows] == ["1" if s >= DEFAULT_THRESHOLD else "0" for s in scores]
    flagged = [i for i, r in enumerate(rows) if r["alert"] == "1"]
    assert flagged and min(flagged) in (100, 101)  # the shift, at once or at its second row
    assert max(scores[:100]) < DEFAULT_THRESHOLD


def test_scores_equal_the_detector_run_online(tmp_path: Path) -> None:
    values = _values(seed=2)
    rows, _ = read_series(f"{t},{v}" for t, v in _iso_rows(values))
    detector = CalibratedDetector(periods=periods_for_interval(usual_interval_s(rows)))
    assert detector.periods == (1440,)  # one-minute rows: a day of them (a week is too long to hold)
    assert score_rows(rows) == [detector.update(float(f"{v:.3f}")) for v in values]


def test_header_is_optional_and_timestamp_forms_agree(tmp_path: Path) -> None:
    values = _values(seed=3)
    iso = _iso_rows(values)
    spaced = [(t.replace("T", " ").rstrip("Z"), v) for t, v in iso]
    epoch_s = [(str(int((T0 + timedelta(minutes=i)).timestamp())), v) for i, (_, v) in enumerate(iso)]
    epoch_ms = [(str(int((T0 + timedelta(minutes=i)).timestamp()) * 1000), v) for i, (_, v) in enumerate(iso)]
    outputs = []
    for name, rows, header in (
        ("iso", iso, True),
        ("spaced", spaced, False),
        ("epoch_s", epoch_s, True),
        ("epoch_ms", epoch_ms, False),
    ):
        out = tmp_path / f"{name}.out.csv"
        assert (
            main(["score-series", str(_write(tmp_path / f"{name}.csv", rows, header)), "--out", str(out)])
            == 0
        )
        outputs.append([(r["anomaly_score"], r["alert"]) for r in _read_output(out)])
    assert all(o == outputs[0] for o in outputs)


def test_threshold_option(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.csv", _iso_rows(_values(seed=4)))
    low, high = tmp_path / "low.csv", tmp_path / "high.csv"
    assert main(["score-series", str(source), "--out", str(low), "--threshold", "0.01"]) == 0
    assert main(["score-series", str(source), "--out", str(high), "--threshold", "1"]) == 0
    n_low = sum(r["alert"] == "1" for r in _read_output(low))
    n_high = sum(r["alert"] == "1" for r in _read_output(high))
    assert n_low >= n_high
    with pytest.raises(SystemExit):
        build_parser().parse_args(["score-series", "x.csv", "--threshold", "0"])


def test_writes_to_standard_output_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _write(tmp_path / "in.csv", _iso_rows(_values(n=30)))
    assert main(["score-series", str(source)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "timestamp,value,anomaly_score,alert"
    assert len(captured.out.splitlines()) == 31
    assert "30 rows, 0 at or above 0.5" in captured.err


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ["timestamp,value", "2025-11-24T10:00:00Z,1", "2025-11-24T10:01:00Z,abc"],
            "line 3: value 'abc' is not a finite number",
        ),
        (
            ["2025-11-24T10:00:00Z,1", "2025-11-24T10:01:00Z,nan"],
            "line 2: value 'nan' is not a finite number",
        ),
        (["2025-11-24T10:00:00Z,1", "2025-11-24T10:01:00Z,"], "line 2: value '' is not a finite number"),
        (["0,1", "yesterday,2"], "line 2: timestamp 'yesterday' is not an ISO 8601 date or date-time"),
        (["0,1", "60,2,3"], "line 2: expected 2 fields (timestamp,value), got 3"),
        (["0,1,2", "60,2,3"], "3 columns: choose the value column with --column"),
        (["0,1", "2025-11-24,2"], "line 2: timestamp '2025-11-24' is a datetime, earlier ones were epochs"),
        (["timestamp,value", "", "  "], "no data rows"),
        (["timestamp,value", "when,what"], "line 2: timestamp 'when' is not an ISO 8601"),
    ],
)
def test_bad_rows_are_reported_with_line_and_value(lines: list[str], message: str) -> None:
    with pytest.raises(InputError) as info:
        read_series(lines)
    assert str(info.value).startswith(message)


def test_bad_file_exits_2_with_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "bad.csv"
    source.write_text("timestamp,value\n0,1\n60,1.5e\n", encoding="utf-8")
    assert main(["score-series", str(source)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"score-series: {source}: line 3: value '1.5e' is not a finite number"
    )
    assert main(["score-series", str(tmp_path / "missing.csv")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_irregular_interval_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [(str(60 * i + (60 if i >= 10 else 0)), "1") for i in range(30)]
    assert (
        main(["score-series", str(_write(tmp_path / "gap.csv", rows)), "--out", str(tmp_path / "o.csv")]) == 0
    )
    err = capsys.readouterr().err
    assert "warning: 1 irregular interval (first at line 12: 120 instead of 60)" in err
    assert len(_read_output(tmp_path / "o.csv")) == 30


def test_reads_standard_input(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    text = "\n".join(f"{60 * i},{math.sin(i)}" for i in range(25))
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert main(["score-series", "-"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 26


def test_documented_example_flags_the_documented_rows(tmp_path: Path) -> None:
    example = REPO / "docs" / "examples" / "p99_latency.csv"
    out = tmp_path / "scored.csv"
    assert main(["score-series", str(example), "--out", str(out)]) == 0
    rows = _read_output(out)
    flagged = [r["timestamp"] for r in rows if r["alert"] == "1"]
    doc = (REPO / "docs" / "score-series.md").read_text(encoding="utf-8")
    assert flagged, "the example must show an alert"
    for timestamp in flagged:
        assert timestamp in doc


def test_repeated_and_backward_timestamps_are_one_warning_each_and_keep_file_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A duplicated row and a daylight-saving hour written in local time, as real exports have them.
    rows = _iso_rows(_values(n=60))
    rows = [*rows[:30], rows[29], *rows[30:45], rows[20], *rows[45:]]
    source, out = _write(tmp_path / "in.csv", rows), tmp_path / "out.csv"
    assert main(["score-series", str(source), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    # One line each; the jump forward after the step back is an irregular interval of its own.
    assert err.count("warning:") == 3 and "warning: 1 irregular interval" in err
    assert "warning: 1 repeated timestamp (first at line 32:" in err
    assert "warning: 1 timestamp before the previous one (first at line 48:" in err
    assert [r["timestamp"] for r in _read_output(out)] == [t for t, _ in rows]


def test_the_value_column_is_chosen_by_name_or_number(tmp_path: Path) -> None:
    values = _values(n=40, seed=5)
    wide = tmp_path / "wide.csv"
    wide.write_text(
        "timestamp,host,cpu,mem\n" + "".join(f"{t},h1,{v},7\n" for t, v in _iso_rows(values)),
        encoding="utf-8",
    )
    narrow = _write(tmp_path / "narrow.csv", _iso_rows(values))
    outputs = []
    for source, extra in ((narrow, []), (wide, ["--column", "cpu"]), (wide, ["--column", "3"])):
        out = tmp_path / f"out{len(outputs)}.csv"
        assert main(["score-series", str(source), "--out", str(out), *extra]) == 0
        outputs.append([(r["value"], r["anomaly_score"]) for r in _read_output(out)])
    assert outputs[0] == outputs[1] == outputs[2]
    assert main(["score-series", str(wide), "--column", "disk"]) == 2


def test_scores_keep_enough_digits_to_rank(tmp_path: Path) -> None:
    source, out = _write(tmp_path / "in.csv", _iso_rows(_values())), tmp_path / "out.csv"
    assert main(["score-series", str(source), "--out", str(out)]) == 0
    rows, _ = read_series(f"{t},{v}" for t, v in _iso_rows(_values()))
    written = [float(r["anomaly_score"]) for r in _read_output(out)]
    assert written == pytest.approx(score_rows(rows), rel=1e-7, abs=1e-12)


def test_a_directory_is_scored_in_one_process_and_a_bad_file_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    _write(inputs / "a.csv", _iso_rows(_values(n=30, seed=1)))
    _write(inputs / "b.csv", _iso_rows(_values(n=30, seed=2)))
    (inputs / "bad.csv").write_text("0,1\n60,abc\n", encoding="utf-8")
    (inputs / "notes.txt").write_text("not a series", encoding="utf-8")
    assert main(["score-series", str(inputs), "--out", str(outputs)]) == 2  # one file could not be scored
    assert sorted(p.name for p in outputs.iterdir()) == ["a.csv", "b.csv"]
    assert len(_read_output(outputs / "a.csv")) == 30
    err = capsys.readouterr().err
    assert "bad.csv: line 2: value 'abc' is not a finite number" in err and "2 of 3 files scored" in err
    assert main(["score-series", str(inputs)]) == 2  # a directory needs --out
