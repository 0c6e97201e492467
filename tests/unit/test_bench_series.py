"""``bench series`` (stream_monitor.bench.series and series_corpus): NAB's scoring on hand-computed cases,
the threshold sweep against brute force, the generated corpus and its NAB layout, and the command."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
import pytest

from stream_monitor.bench.series import (
    CONTENDERS,
    CorpusError,
    FileWeights,
    best_threshold,
    detection_weights,
    read_corpus,
    scaled_sigmoid,
    score_corpus,
    score_file,
    sweep_thresholds,
    write_corpus,
)
from stream_monitor.bench.series_corpus import (
    FAMILIES,
    WINDOW_SHARE,
    LabelledSeries,
    anomaly_windows,
    build_corpus,
    probation_rows,
)
from stream_monitor.cli.main import main

pytestmark = pytest.mark.unit

# A file of 100 rows (probation: rows 0-14) with one window of 20 rows, 40 to 59.
ROWS, WINDOW = 100, (40, 59)


def _raw(detections: list[int], rows: int = ROWS, windows: tuple[tuple[int, int], ...] = (WINDOW,)) -> float:
    scores = [0.0] * rows
    for row in detections:
        scores[row] = 1.0
    return score_file(detection_weights(rows, windows), scores, 0.5).raw


def test_a_detection_on_the_first_row_of_a_window_earns_a_tp_in_full() -> None:
    # The scaled sigmoid of the window's left edge is 0.9866; NAB (sweeper.py) divides by it, so the
    # earliest detection is worth A_TP = 1 exactly.
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert _raw([40]) == pytest.approx(1.0, abs=1e-12)


def test_a_detection_on_the_last_row_of_a_window_earns_about_nothing() -> None:
    window = (1800, 2199)  # 400 rows
    expected = math.tanh(2.5 / 400) / math.tanh(2.5)  # sigma(-1/400) / sigma(-1)
    assert _raw([2199], rows=4000, windows=(window,)) == pytest.approx(expected, rel=1e-9)
    assert 0.0 < expected < 0.01
    # Earlier is better all along the window.
    raws = [_raw([row]) for row in range(40, 60)]
    assert raws == sorted(raws, reverse=True)


def test_a_missed_window_costs_a_fn() -> None:
    assert _raw([]) == -1.0
    assert _raw([], windows=(WINDOW, (70, 89))) == -2.0


def test_a_false_positive_far_after_a_window_costs_the_full_fp_weight() -> None:
    # Three window lengths (W - 1 = 19 rows each) after the window's last row and beyond: -0.11.
    for row in (59 + 3 * 19, 190):
        assert _raw([40, row], rows=200) == pytest.approx(1.0 - 0.11, abs=1e-12)


def test_a_false_positive_right_after_a_window_costs_less() -> None:
    cost_after = [1.0 - _raw([40, row], rows=200) for row in (60, 70, 90, 116)]
    assert cost_after[0] == pytest.approx(0.11 * math.tanh(2.5 / 19), rel=1e-9)  # |A_FP| * -sigma(1/19)
    assert cost_after == sorted(cost_after)
    assert cost_after[0] < 0.02 < cost_after[1] < 0.11


def test_a_false_positive_before_the_first_window_costs_the_full_fp_weight() -> None:
    assert _raw([20]) == pytest.approx(-1.0 - 0.11, abs=1e-12)
    assert _raw([20, 30, 40]) == pytest.approx(1.0 - 0.22, abs=1e-12)


def test_detections_in_the_probationary_period_are_ignored() -> None:
    assert probation_rows(ROWS) == 15
    assert _raw(list(range(15))) == _raw([]) == -1.0
    assert _raw([*range(15), 40]) == _raw([40])
    # A window that ends inside the probationary period is not scored at all.
    assert _raw([], windows=((2, 10), WINDOW)) == -1.0


def test_the_probationary_period_is_capped_at_750_rows() -> None:
    assert [probation_rows(n) for n in (100, 4032, 5000, 10_000, 22_695)] == [15, 604, 750, 750, 750]
    assert detection_weights(10_000, []).first_row == 750


def test_only_the_first_detection_in_a_window_counts() -> None:
    assert _raw([40, 45]) == _raw([40])
    assert _raw([45, 50, 59]) == _raw([45]) < _raw([40])


def test_null_scores_0_and_the_perfect_detector_100() -> None:
    corpus = build_corpus(seed=1, quick=True)
    weights = [detection_weights(len(s), s.windows) for s in corpus]
    null = score_corpus([(w, [0.0] * len(s)) for w, s in zip(weights, corpus, strict=True)], 0.5)
    perfect_scores = []
    for series in corpus:
        scores = [0.0] * len(series)
        for start, _ in series.windows:
            scores[start] = 1.0
        perfect_scores.append(scores)
    perfect = score_corpus(list(zip(weights, perfect_scores, strict=True)), 0.5)
    assert null.windows == perfect.windows == sum(len(s.windows) for s in corpus) > 0
    assert null.normalised == 0.0
    assert perfect.normalised == pytest.approx(100.0, abs=1e-9)
    assert (perfect.detected, perfect.fp_rows) == (perfect.windows, 0)


def _random_files(rng: random.Random) -> list[tuple[FileWeights, list[float]]]:
    files = []
    for _ in range(rng.randint(1, 5)):
        rows = rng.randint(20, 120)
        edges = sorted(rng.sample(range(rows), 2 * rng.randint(0, 3)))
        windows = tuple((edges[i], edges[i + 1]) for i in range(0, len(edges), 2))
        scores = [round(rng.random(), 1) for _ in range(rows)]  # ties on purpose
        files.append((detection_weights(rows, windows), scores))
    return files


@pytest.mark.parametrize("seed", range(8))
def test_the_threshold_sweep_equals_scoring_at_every_threshold(seed: int) -> None:
    files = _random_files(random.Random(seed))
    points = sweep_thresholds(files)
    scored = {s for w, scores in files for s in scores[w.first_row :]}
    assert [p.threshold for p in points] == [math.inf, *sorted(scored, reverse=True)]
    for point in points:
        brute = score_corpus(files, point.threshold)
        assert point.score.raw == pytest.approx(brute.raw, abs=1e-9)
        assert (point.score.detected, point.score.fp_rows, point.score.windows) == (
            brute.detected,
            brute.fp_rows,
            brute.windows,
        )
    best = best_threshold(points)
    assert best.score.raw == pytest.approx(max(score_corpus(files, t).raw for t in [2.0, *scored]))


def test_nab_windows_are_a_tenth_of_the_file_split_among_its_anomalies_and_centred() -> None:
    assert anomaly_windows(4032, [2000]) == ((2000 - 201, 2000 + 201),)
    assert anomaly_windows(2016, [900, 1500]) == ((850, 950), (1450, 1550))
    assert anomaly_windows(1000, [990]) == ((940, 999),)  # clipped to the file
    assert anomaly_windows(1000, [500, 520]) == ((475, 545),)  # overlapping: merged


def test_the_corpus_is_deterministic_per_seed() -> None:
    assert build_corpus(seed=7, quick=True) == build_corpus(seed=7, quick=True)
    other = build_corpus(seed=8, quick=True)
    assert [s.name for s in other] == [s.name for s in build_corpus(seed=7, quick=True)]
    assert other[0].values != build_corpus(seed=7, quick=True)[0].values


def test_the_corpus_labels_lie_in_their_series_as_nab_sizes_them() -> None:
    corpus = build_corpus(seed=0)
    assert (len(corpus), sum(len(s) for s in corpus), sum(len(s.windows) for s in corpus)) == (
        57,
        191_520,
        64,
    )
    assert len(corpus) == sum(len(f.variants) for f in FAMILIES)
    for series in corpus:
        if series.family.startswith("clean_"):
            assert series.windows == (), series.name
            continue
        assert series.windows, series.name
        half = int(WINDOW_SHARE * len(series) / len(series.windows)) // 2
        for start, end in series.windows:
            assert probation_rows(len(series)) <= start and end < len(series), series.name
            assert end - start == 2 * half, series.name


def test_the_corpus_labels_point_at_the_anomalies() -> None:
    # Where the anomaly is one row, the window's centre (its onset) is where the series departs most
    # from its neighbours.
    for series in build_corpus(seed=3):
        values = np.asarray(series.values)
        centres = {(start + end) // 2 for start, end in series.windows}
        if series.family == "random_walk_spike":
            residual = np.abs(values[1:-1] - (values[:-2] + values[2:]) / 2)
            assert {int(np.argmax(residual)) + 1} == centres, series.name
        if series.family == "yahoo_a3_outliers":
            medians = np.median(np.lib.stride_tricks.sliding_window_view(values, 7), axis=1)
            residual = np.abs(values[3:-3] - medians)
            assert set((np.argsort(residual)[-3:] + 3).tolist()) == centres, series.name


def test_a_written_corpus_reads_back_the_same(tmp_path: Path) -> None:
    corpus = build_corpus(seed=2, quick=True)
    write_corpus(corpus, tmp_path)
    labels = json.loads((tmp_path / "labels" / "combined_windows.json").read_text())
    assert sorted(labels) == sorted(s.name for s in corpus)
    stamps = [t for windows in labels.values() for window in windows for t in window]
    assert stamps and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", t) for t in stamps)
    first = (tmp_path / "data" / corpus[0].name).read_text().splitlines()
    assert first[:2] == ["timestamp,value", f"2014-04-01 00:00:00,{corpus[0].values[0]!r}"]
    assert read_corpus(tmp_path) == (sorted(corpus, key=lambda s: s.name), [])


def test_reading_a_corpus_names_what_is_wrong(tmp_path: Path) -> None:
    series = LabelledSeries(
        "x/a.csv", ("2014-04-01 00:00:00", "2014-04-01 00:05:00"), (0.0, 300.0), (1.0, 2.0), ((1, 1),)
    )
    write_corpus([series], tmp_path)
    (tmp_path / "data" / "x" / "extra.csv").write_text("timestamp,value\n2014-04-01 00:00:00,1\n")
    corpus, notes = read_corpus(tmp_path)
    assert [s.name for s in corpus] == ["x/a.csv"] and corpus[0].windows == ((1, 1),)
    assert notes == ["x/extra.csv: no entry in labels/combined_windows.json, skipped"]
    (tmp_path / "data" / "x" / "a.csv").write_text(
        "timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01 00:05:00,x\n"
    )
    with pytest.raises(CorpusError, match=r"data/x/a.csv:3: value 'x' is not a finite number"):
        read_corpus(tmp_path)
    (tmp_path / "labels" / "combined_windows.json").write_text('{"x/a.csv": [["2015-01-01", "2015-01-02"]]}')
    (tmp_path / "data" / "x" / "a.csv").write_text("timestamp,value\n2014-04-01 00:00:00,1\n")
    with pytest.raises(CorpusError, match="holds no row"):
        read_corpus(tmp_path)


@pytest.mark.parametrize("name", sorted(CONTENDERS))
def test_every_contender_is_online_and_scores_in_0_1(name: str) -> None:
    rng = np.random.default_rng(5)
    values = (50 + 10 * np.sin(np.arange(400) * 2 * np.pi / 96) + rng.normal(0, 1, 400)).round(4)
    values[300] += 40
    times = [300.0 * i for i in range(400)]
    score = CONTENDERS[name].score
    full = score(times, values.tolist())
    assert len(full) == 400 and all(0.0 <= s <= 1.0 for s in full)
    assert score(times[:250], values[:250].tolist()) == full[:250]  # no row's score sees a later row


def test_bench_series_quick_reports_every_contender(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "series.json"
    assert main(["bench", "series", "--quick", "--jobs", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "built-in synthetic corpus, seed 0 (quick): 15 files" in printed
    table = printed.split("\n\n")[1].splitlines()
    assert [line.split()[0] for line in table[1:]] == list(CONTENDERS)
    report = json.loads(out.read_text())
    assert list(report["contenders"]) == list(CONTENDERS)
    assert report["contenders"]["null"]["score"] == 0.0
    assert report["contenders"]["null"]["best"]["threshold"] is None  # never alert
    assert set(report["contenders"]["stack"]["families"]) == {f.name for f in FAMILIES}
    for contender in report["contenders"].values():
        assert contender["best"]["raw"] >= contender["raw"] - 1e-9  # the best threshold is never worse


def test_bench_series_runs_on_a_written_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "series", "--quick", "--write", str(tmp_path)]) == 0
    assert (
        main(["bench", "series", str(tmp_path), "--contenders", "null,windowed_gaussian", "--jobs", "1"]) == 0
    )
    printed = capsys.readouterr().out
    assert f"corpus {tmp_path}: 15 files, 12,600 rows" in printed
    assert "windowed_gaussian" in printed and "halfspacetrees" not in printed
    assert main(["bench", "series", str(tmp_path), "--contenders", "nope"]) == 2
