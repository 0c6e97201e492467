"""``stream-monitor bench series``: univariate streaming anomaly detectors on labelled series, scored as NAB.

The scoring is the standard profile of the Numenta Anomaly Benchmark, written here from its published
definition: A. Lavin and S. Ahmad, "Evaluating Real-time Anomaly Detection Algorithms - the Numenta
Anomaly Benchmark", IEEE ICMLA 2015 (arXiv:1510.03336), and the rules of its reference implementation,
https://github.com/numenta/NAB (nab/sweeper.py, nab/runner.py, nab/labeler.py, config/profiles.json of
NAB 1.x). None of NAB's code is used.

Per file, with ``sigma(y) = 2 / (1 + exp(5 y)) - 1`` (``-1`` from ``y = 3`` on) and the standard weights
``A_TP = 1``, ``A_FP = -0.11``, ``A_FN = -1``:

* rows of the probationary period (:func:`~stream_monitor.bench.series_corpus.probation_rows`: 15 % of
  the file, at most 750 rows) are not scored; a window with no row after it is not scored either;
* a detection is a row whose score reaches the threshold (``score >= threshold``);
* in a window of ``W`` rows ending at row ``e``, only the first detection counts, as a true positive of
  ``A_TP * sigma(-(e - i + 1) / W) / sigma(-1)``: exactly ``A_TP`` on the window's first row, near 0 on
  its last (NAB divides by ``sigma(-1) = 0.9866`` so that the earliest detection earns the full weight);
  later detections in the same window count nothing;
* a detection outside every window is a false positive of ``|A_FP| * sigma((i - e) / (W - 1))`` where
  ``e`` and ``W`` are the end and length of the window before it: nearly free right after a window,
  ``-0.11 * 0.9866`` one window length later, ``-0.11`` from three lengths on and anywhere before the
  first window (NAB puts such a row at position 3);
* each window without a detection costs ``A_FN``.

The corpus's raw score is the sum over its files; the null detector (no detection) scores ``A_FN`` per
window and the perfect one (a detection on the first row of each window) ``A_TP`` per window, and the
reported score is ``100 * (raw - null) / (perfect - null)``: 0 for the null detector, 100 for the perfect
one. NAB sums the raw scores over all files before normalising once, so a file with more windows weighs
more; it is not a mean of per-file scores. The best-threshold score is NAB's optimisation: one threshold
for the whole corpus, the best of every distinct score value (:func:`sweep_thresholds`).

A corpus directory is laid out like NAB: ``DIR/data/**/*.csv`` with ``timestamp,value[,...]`` rows and
``DIR/labels/combined_windows.json`` mapping each file's path under ``data/`` to its windows
``[["start", "end"], ...]`` (timestamps as in the data; NAB writes ``YYYY-MM-DD HH:MM:SS.ffffff``). A
window holds the rows from its start to its end, both included. A file's family is its folder.

Contenders (:data:`CONTENDERS`) are online: each row's score uses the rows up to it only. Add one with one
entry in that dict; it must be defined in a module so that the worker processes find it.

May import the standard library, numpy, river, :mod:`stream_monitor.core` and the corpus module.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from stream_monitor.bench.series_corpus import LabelledSeries, probation_rows
from stream_monitor.core.detectors import DEFAULT_THRESHOLD, default_detector
from stream_monitor.core.detectors.calibrated import CalibratedDetector, periods_for_interval, usual_step

__all__ = [
    "CONTENDERS",
    "STANDARD",
    "Contender",
    "CorpusError",
    "CorpusScore",
    "FileWeights",
    "Profile",
    "SeriesBenchConfig",
    "ThresholdScore",
    "best_threshold",
    "detection_weights",
    "format_report",
    "half_space_trees_scores",
    "normalised_score",
    "null_scores",
    "read_corpus",
    "run_series_bench",
    "scaled_sigmoid",
    "score_corpus",
    "score_file",
    "stack_scores",
    "sweep_thresholds",
    "windowed_gaussian_scores",
    "write_corpus",
]

# -- NAB scoring ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    """A NAB application profile: the weight of a true positive, a false positive and a missed window.

    Signs as in the paper (``config/profiles.json`` stores magnitudes).

    >>> STANDARD
    Profile(a_tp=1.0, a_fp=-0.11, a_fn=-1.0)
    >>> Profile(a_fp=0.11)
    Traceback (most recent call last):
    ...
    ValueError: profile weights need a_tp > 0, a_fp <= 0, a_fn < 0; got 1.0, 0.11, -1.0
    """

    a_tp: float = 1.0
    a_fp: float = -0.11
    a_fn: float = -1.0

    def __post_init__(self) -> None:
        if not (self.a_tp > 0 and self.a_fp <= 0 and self.a_fn < 0):
            raise ValueError(
                "profile weights need a_tp > 0, a_fp <= 0, a_fn < 0; "
                f"got {self.a_tp}, {self.a_fp}, {self.a_fn}"
            )


STANDARD = Profile()


def scaled_sigmoid(position: float) -> float:
    """NAB's weight of a detection at a relative ``position``: ``2 / (1 + exp(5 y)) - 1``, -1 from 3 on.

    >>> [round(scaled_sigmoid(y), 5) for y in (-1.0, -0.5, 0.0, 1.0, 3.0)]
    [0.98661, 0.84828, 0.0, -0.98661, -1.0]
    """
    if position >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


@dataclass(frozen=True, slots=True)
class FileWeights:
    """What a detection on each scored row of a file is worth, computed once per file and profile.

    ``weights[k]`` and ``window_of[k]`` are for row ``first_row + k``: the weight of a detection there,
    and which of the file's scored windows holds it (0 for the first, -1 outside every window).
    ``windows`` counts the scored windows: those with a row after the probationary period.

    >>> w = detection_weights(30, [(1, 3), (10, 14)])  # the first window is over before row 4
    >>> w.first_row, w.windows, w.window_of[:8]
    (4, 1, (-1, -1, -1, -1, -1, -1, 0, 0))
    """

    first_row: int
    weights: tuple[float, ...]
    window_of: tuple[int, ...]
    windows: int
    profile: Profile


def detection_weights(
    n_rows: int, windows: Sequence[tuple[int, int]], profile: Profile = STANDARD
) -> FileWeights:
    """NAB's weight of a detection on every scored row of a file of ``n_rows`` with these ``windows``.

    >>> w = detection_weights(100, [(40, 59)])
    >>> w.first_row, w.windows, w.weights[40 - 15], round(w.weights[59 - 15], 4), w.weights[0]
    (15, 1, 1.0, 0.126, -0.11)
    """
    first = probation_rows(n_rows)
    max_tp = scaled_sigmoid(-1.0)
    weights: list[float] = []
    window_of: list[int] = []
    k = 0
    previous: tuple[int, int] | None = None  # the last window that ended before the current row
    while k < len(windows) and windows[k][1] < first:
        previous = windows[k]
        k += 1
    skipped = k  # windows over before the first scored row: not scored, not counted
    for i in range(first, n_rows):
        if k < len(windows) and windows[k][0] <= i:
            start, end = windows[k]
            weights.append(profile.a_tp * scaled_sigmoid(-(end - i + 1) / (end - start + 1)) / max_tp)
            window_of.append(k - skipped)
            if i == end:
                previous = windows[k]
                k += 1
            continue
        if previous is None:
            position = 3.0
        else:
            start, end = previous
            # NAB divides by W - 1, which is 0 for a one-row window: count such a window as two rows.
            position = (i - end) / max(end - start, 1)
        weights.append(-profile.a_fp * scaled_sigmoid(position))
        window_of.append(-1)
    return FileWeights(first, tuple(weights), tuple(window_of), len(windows) - skipped, profile)


@dataclass(frozen=True, slots=True)
class CorpusScore:
    """A raw NAB score with what made it: windows detected out of ``windows``, and false-positive rows.

    >>> (CorpusScore(1.0, 1, 1, 0) + CorpusScore(-1.11, 1, 0, 1)).normalised
    47.25
    """

    raw: float
    windows: int
    detected: int
    fp_rows: int
    profile: Profile = STANDARD

    @property
    def normalised(self) -> float | None:
        return normalised_score(self.raw, self.windows, self.profile)

    def __add__(self, other: CorpusScore) -> CorpusScore:
        return CorpusScore(
            self.raw + other.raw,
            self.windows + other.windows,
            self.detected + other.detected,
            self.fp_rows + other.fp_rows,
            self.profile,
        )


def normalised_score(raw: float, windows: int, profile: Profile = STANDARD) -> float | None:
    """``100 * (raw - null) / (perfect - null)``; None without a window (null and perfect are both 0).

    >>> [normalised_score(raw, 3) for raw in (-3.0, 0.0, 3.0)], normalised_score(-1.0, 0)
    ([0.0, 50.0, 100.0], None)
    """
    if windows == 0:
        return None
    null, perfect = profile.a_fn * windows, profile.a_tp * windows
    return 100.0 * (raw - null) / (perfect - null)


def score_file(weights: FileWeights, scores: Sequence[float], threshold: float) -> CorpusScore:
    """One file's NAB score with detections where ``scores`` reach ``threshold``, walking rows in order.

    >>> w = detection_weights(100, [(40, 59)])
    >>> score_file(w, [0.0] * 100, 0.5).raw, score_file(w, [0.0] * 40 + [1.0] * 2 + [0.0] * 58, 0.5).raw
    (-1.0, 1.0)
    """
    raw, fp_rows = 0.0, 0
    detected: set[int] = set()
    for k, score in enumerate(scores[weights.first_row :]):
        if score < threshold:
            continue
        window = weights.window_of[k]
        if window < 0:
            raw += weights.weights[k]
            fp_rows += 1
        elif window not in detected:  # only the first detection in a window counts
            detected.add(window)
            raw += weights.weights[k]
    raw += weights.profile.a_fn * (weights.windows - len(detected))
    return CorpusScore(raw, weights.windows, len(detected), fp_rows, weights.profile)


def score_corpus(
    files: Sequence[tuple[FileWeights, Sequence[float]]], threshold: float, profile: Profile = STANDARD
) -> CorpusScore:
    """The corpus's NAB score at one threshold: the files' raw scores summed, as NAB does.

    >>> w = detection_weights(100, [(40, 59)])
    >>> score_corpus([(w, [0.0] * 100), (w, [0.0] * 40 + [1.0] + [0.0] * 59)], 0.5).normalised
    50.0
    """
    total = CorpusScore(0.0, 0, 0, 0, profile)
    for weights, scores in files:
        total += score_file(weights, scores, threshold)
    return total


@dataclass(frozen=True, slots=True)
class ThresholdScore:
    """The corpus's score when rows scoring ``threshold`` or more are detections (inf: none is).

    >>> ThresholdScore(math.inf, CorpusScore(-2.0, 2, 0, 0)).score.normalised
    0.0
    """

    threshold: float
    score: CorpusScore


def sweep_thresholds(
    files: Sequence[tuple[FileWeights, Sequence[float]]], profile: Profile = STANDARD
) -> list[ThresholdScore]:
    """The corpus's score at every distinct score value as the threshold, highest first, after ``inf``.

    NAB's optimiser (nab/sweeper.py): every scored row of every file sorted once by descending score;
    lowering the threshold past a row adds its weight, or for a window only what the row's weight adds
    to the best detection the window has so far (the earliest has the highest weight, so the best is
    the first). Equals :func:`score_corpus` at each threshold.

    >>> w = detection_weights(100, [(40, 59)])
    >>> points = sweep_thresholds([(w, [0.2] * 40 + [0.9] + [0.2] * 59)])
    >>> [(p.threshold, round(p.score.raw, 2), p.score.fp_rows) for p in points]
    [(inf, -1.0, 0), (0.9, 1.0, 0), (0.2, -5.62, 65)]
    """
    scores: list[float] = []
    weights: list[float] = []
    windows: list[int] = []  # corpus-wide window index, -1 outside
    offset = 0
    for file_weights, file_scores in files:
        scores.extend(file_scores[file_weights.first_row :])
        weights.extend(file_weights.weights)
        windows.extend(w + offset if w >= 0 else -1 for w in file_weights.window_of)
        offset += file_weights.windows
    raw, detected, fp_rows = profile.a_fn * offset, 0, 0
    best_in_window: list[float | None] = [None] * offset  # the weight of its best detection so far
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    points = [ThresholdScore(math.inf, CorpusScore(raw, offset, 0, 0, profile))]
    for rank, row in enumerate(order.tolist()):
        weight, window = weights[row], windows[row]
        if window < 0:
            raw += weight
            fp_rows += 1
        else:
            best = best_in_window[window]
            if best is None:
                detected += 1
                raw += weight - profile.a_fn
                best_in_window[window] = weight
            elif weight > best:
                raw += weight - best
                best_in_window[window] = weight
        # A threshold detects every row with a score at least as high: record after the last tie.
        if rank + 1 == len(order) or scores[order[rank + 1]] != scores[row]:
            points.append(ThresholdScore(scores[row], CorpusScore(raw, offset, detected, fp_rows, profile)))
    return points


def best_threshold(points: Iterable[ThresholdScore]) -> ThresholdScore:
    """The point of highest score; of equal ones, the highest threshold (NAB's stable sort keeps it)."""
    best: ThresholdScore | None = None
    for point in points:
        if best is None or point.score.raw > best.score.raw:
            best = point
    if best is None:
        raise ValueError("no threshold to choose from")
    return best


# -- corpus directories ---------------------------------------------------------------------------------

LABELS_PATH = Path("labels") / "combined_windows.json"
_NAB_LABEL_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


class CorpusError(ValueError):
    """A corpus directory that cannot be read; the message names the file (and the line).

    >>> str(CorpusError("data/a.csv:3: value 'x' is not a finite number"))
    "data/a.csv:3: value 'x' is not a finite number"
    """


def _parse_time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.strip())
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _read_data_file(path: Path, name: str) -> tuple[list[str], list[float], list[float]]:
    timestamps: list[str] = []
    times: list[float] = []
    values: list[float] = []
    value_column = 1
    with path.open(newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if not row:
                continue
            if line == 1:
                header = [cell.strip().lower() for cell in row]
                if "value" in header:
                    value_column = header.index("value")
                try:
                    _parse_time(row[0])
                except ValueError:
                    continue  # a header row
            if len(row) <= value_column:
                raise CorpusError(f"data/{name}:{line}: no value column in {row!r}")
            try:
                moment = _parse_time(row[0])
            except ValueError:
                raise CorpusError(
                    f"data/{name}:{line}: timestamp {row[0]!r} is not an ISO date-time"
                ) from None
            try:
                value = float(row[value_column])
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise CorpusError(f"data/{name}:{line}: value {row[value_column]!r} is not a finite number")
            if times and moment.timestamp() < times[-1]:
                raise CorpusError(f"data/{name}:{line}: timestamp {row[0]!r} is before the previous row's")
            timestamps.append(row[0].strip())
            times.append(moment.timestamp())
            values.append(value)
    return timestamps, times, values


def _window_rows(name: str, times: Sequence[float], limits: object) -> tuple[int, int]:
    if not (isinstance(limits, list) and len(limits) == 2 and all(isinstance(t, str) for t in limits)):
        raise CorpusError(f"{LABELS_PATH}: {name}: a window must be [start, end] timestamps, got {limits!r}")
    try:
        start_s, end_s = (_parse_time(t).timestamp() for t in limits)
    except ValueError:
        raise CorpusError(
            f"{LABELS_PATH}: {name}: window {limits!r} has a timestamp that is not ISO"
        ) from None
    start, end = bisect.bisect_left(times, start_s), bisect.bisect_right(times, end_s) - 1
    if start > end:
        raise CorpusError(f"{LABELS_PATH}: {name}: window {limits!r} holds no row of the file")
    return start, end


def read_corpus(root: Path) -> tuple[list[LabelledSeries], list[str]]:
    """The labelled files of a NAB-style directory, by name, and notes on what was skipped or merged.

    Files without an entry in the labels are skipped (as NAB runs only labelled files); overlapping
    windows are merged, as NAB's labeler does.
    """
    data = root / "data"
    labels_path = root / LABELS_PATH
    if not data.is_dir() or not labels_path.is_file():
        raise CorpusError(f"{root}: expected {data} and {labels_path} (NAB's layout)")
    try:
        labels = json.loads(labels_path.read_text())
    except (OSError, ValueError) as exc:
        raise CorpusError(f"{labels_path}: not readable JSON: {exc}") from exc
    if not isinstance(labels, dict):
        raise CorpusError(f"{labels_path}: expected an object of file paths to windows")
    corpus: list[LabelledSeries] = []
    notes: list[str] = []
    names = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.csv"))
    for name in names:
        if name not in labels:
            notes.append(f"{name}: no entry in {LABELS_PATH}, skipped")
            continue
        timestamps, times, values = _read_data_file(data / name, name)
        if not isinstance(labels[name], list):
            raise CorpusError(f"{labels_path}: {name}: expected a list of windows")
        windows: list[tuple[int, int]] = []
        for start, end in sorted(_window_rows(name, times, w) for w in labels[name]):
            if windows and start <= windows[-1][1]:
                notes.append(f"{name}: overlapping windows merged")
                windows[-1] = (windows[-1][0], max(end, windows[-1][1]))
            else:
                windows.append((start, end))
        corpus.append(LabelledSeries(name, tuple(timestamps), tuple(times), tuple(values), tuple(windows)))
    notes.extend(f"{name}: in {LABELS_PATH} but not under data/" for name in sorted(set(labels) - set(names)))
    return corpus, notes


def write_corpus(corpus: Iterable[LabelledSeries], root: Path) -> None:
    """Write ``corpus`` in NAB's layout under ``root``: ``data/NAME`` and ``labels/combined_windows.json``."""
    windows: dict[str, list[list[str]]] = {}
    for series in corpus:
        path = root / "data" / series.name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["timestamp", "value"])
            writer.writerows(zip(series.timestamps, map(repr, series.values), strict=True))
        windows[series.name] = [
            [_parse_time(series.timestamps[i]).strftime(_NAB_LABEL_FORMAT) for i in (start, end)]
            for start, end in series.windows
        ]
    labels = root / LABELS_PATH
    labels.parent.mkdir(parents=True, exist_ok=True)
    labels.write_text(json.dumps(windows, indent=4, sort_keys=True) + "\n")


# -- contenders -----------------------------------------------------------------------------------------

ScoreFunction = Callable[[Sequence[float], Sequence[float]], list[float]]


@dataclass(frozen=True, slots=True)
class Contender:
    """A detector under test: ``score(times_s, values)`` gives one score in [0, 1] per row, online, and
    ``threshold`` (fixed in advance) turns a score into a detection.

    >>> CONTENDERS["null"].score([0.0, 300.0], [1.0, 9.0]), CONTENDERS["null"].threshold
    ([0.0, 0.0], 0.5)
    """

    score: ScoreFunction
    threshold: float
    about: str


def null_scores(times_s: Sequence[float], values: Sequence[float]) -> list[float]:
    """NAB's null detector: never alerts."""
    return [0.0] * len(values)


# NAB's windowed Gaussian (nab/detectors/gaussian): the trailing window and its step, as NAB tuned them.
GAUSSIAN_WINDOW, GAUSSIAN_STEP = 6400, 100


def windowed_gaussian_scores(times_s: Sequence[float], values: Sequence[float]) -> list[float]:
    """NAB's windowed Gaussian baseline: 1 - Q(|z|), Q the Gaussian tail probability (0.5 at the mean).

    The mean and standard deviation are those of the previous values: all of them up to 6,400, then of
    a window of 6,400 moved every 100 values; a zero deviation counts as 1e-6, as in NAB.

    >>> [round(s, 4) for s in windowed_gaussian_scores([], [1.0, 2.0, 1.0, 2.0, 1.5, 9.0])]
    [0.0, 1.0, 0.8413, 0.9214, 0.5, 1.0]
    """
    scores: list[float] = []
    window: list[float] = []
    pending: list[float] = []
    mean, deviation = 0.0, 1.0
    count, running_mean, squares = 0, 0.0, 0.0  # Welford's, while the window grows
    for value in values:
        if window:
            z = abs(value - mean) / deviation
            scores.append(1.0 - 0.5 * math.erfc(z / math.sqrt(2.0)))
        else:
            scores.append(0.0)
        if len(window) < GAUSSIAN_WINDOW:
            window.append(value)
            count += 1
            delta = value - running_mean
            running_mean += delta / count
            squares += delta * (value - running_mean)
            mean, deviation = running_mean, math.sqrt(squares / count) or 1e-6
        else:
            pending.append(value)
            if len(pending) == GAUSSIAN_STEP:
                window = window[GAUSSIAN_STEP:] + pending
                pending = []
                array = np.asarray(window)
                mean, deviation = float(array.mean()), float(array.std()) or 1e-6
    return scores


HST_SEED = 0


def half_space_trees_scores(times_s: Sequence[float], values: Sequence[float]) -> list[float]:
    """river's HalfSpaceTrees on the value scaled by an online MinMaxScaler, as river's documentation
    recommends; the score is the HST score's rank among the previous rows' (the share below it).

    river's HST scores of one feature crowd near 1 (0.97-0.995 on a noisy daily cycle), so a fixed
    threshold on them means little and differs per file; the rank is what river's QuantileFilter (and
    ``bench detection``'s hst baseline, at q = 0.9999) thresholds. Each row is scored before the
    scaler and the trees learn it; the first row, before the scaler has a range, scores 0.

    >>> scores = half_space_trees_scores([], [1.0 + (i % 5) / 10 for i in range(400)])
    >>> len(scores), scores[0], all(0.0 <= s <= 1.0 for s in scores)
    (400, 0.0, True)
    """
    from river import anomaly, preprocessing

    make_scaler: Callable[..., Any] = preprocessing.MinMaxScaler  # river is untyped
    make_trees: Callable[..., Any] = anomaly.HalfSpaceTrees
    scaler, trees = make_scaler(), make_trees(seed=HST_SEED)
    below: list[float] = []  # the previous HST scores, sorted
    scores: list[float] = []
    for i, value in enumerate(values):
        x = {"value": value}
        if i == 0:
            scores.append(0.0)
            scaler.learn_one(x)
            continue
        scaled = scaler.transform_one(x)
        raw = float(trees.score_one(scaled))
        scores.append(bisect.bisect_left(below, raw) / len(below) if below else 0.0)
        bisect.insort(below, raw)
        trees.learn_one(scaled)
        scaler.learn_one(x)
    return scores


def stack_scores(times_s: Sequence[float], values: Sequence[float]) -> list[float]:
    """The project's default detector stack (:func:`~stream_monitor.core.detectors.default_detector`),
    fed one row at a time.

    >>> scores = stack_scores([], [10.0 + (i % 3) for i in range(40)] + [60.0])
    >>> max(scores[:40]), scores[-1] >= DEFAULT_THRESHOLD
    (0.0, True)
    """
    detector = default_detector()
    return [detector.update(value) for value in values]


def calibrated_scores(times_s: Sequence[float], values: Sequence[float]) -> list[float]:
    """:class:`~stream_monitor.core.detectors.CalibratedDetector` as ``score-series`` runs it: daily and
    weekly candidate cycles at the rows' usual interval.

    >>> times, values = [60.0 * i for i in range(201)], [10.0 + (i % 3) for i in range(200)] + [60.0]
    >>> scores = calibrated_scores(times, values)
    >>> max(scores[:200]) < DEFAULT_THRESHOLD <= scores[-1]
    True
    """
    detector = CalibratedDetector(periods=periods_for_interval(usual_step(times_s)))
    return [detector.update(value) for value in values]


CONTENDERS: dict[str, Contender] = {
    "null": Contender(null_scores, 0.5, "never alerts (NAB's null detector)"),
    "windowed_gaussian": Contender(
        windowed_gaussian_scores, 1.0, "NAB's windowed Gaussian; threshold 1.0 as NAB's thresholds.json"
    ),
    "halfspacetrees": Contender(
        half_space_trees_scores, 0.9999, "river HalfSpaceTrees (MinMaxScaler), rank of its score >= 0.9999"
    ),
    "stack": Contender(
        stack_scores, DEFAULT_THRESHOLD, "the previous default stack (robust baseline + Page-Hinkley)"
    ),
    "calibrated": Contender(
        calibrated_scores, DEFAULT_THRESHOLD, "the default stack: seasonal, calibrated, re-learning"
    ),
}


# -- runner and report ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeriesBenchConfig:
    """Which contenders to run, in how many processes, and the scoring profile.

    >>> SeriesBenchConfig(contenders=("null", "stack")).jobs
    1
    >>> SeriesBenchConfig(contenders=("null", "nope"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown contenders ['nope']; expected some of ['calibrated', 'halfspacetrees', 'null', ...]
    """

    contenders: tuple[str, ...] = tuple(CONTENDERS)
    jobs: int = 1
    profile: Profile = STANDARD

    def __post_init__(self) -> None:
        unknown = sorted(set(self.contenders) - set(CONTENDERS))
        if unknown or not self.contenders:
            raise ValueError(f"unknown contenders {unknown}; expected some of {sorted(CONTENDERS)}")
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")


def _score_series(names: Sequence[str], series: LabelledSeries) -> dict[str, tuple[list[float], float]]:
    """Every named contender's scores on one series, and the seconds each took (runs in a worker)."""
    out: dict[str, tuple[list[float], float]] = {}
    for name in names:
        started = time.perf_counter()
        scores = CONTENDERS[name].score(series.times_s, series.values)
        seconds = time.perf_counter() - started
        if len(scores) != len(series):
            raise ValueError(
                f"contender {name} gave {len(scores)} scores for {len(series)} rows of {series.name}"
            )
        bad = next((i for i, s in enumerate(scores) if not 0.0 <= s <= 1.0), None)
        if bad is not None:
            raise ValueError(
                f"contender {name} scored row {bad} of {series.name} {scores[bad]!r}, not in [0, 1]"
            )
        out[name] = (scores, seconds)
    return out


def _score_json(score: CorpusScore) -> dict[str, Any]:
    return {
        "score": score.normalised,
        "raw": score.raw,
        "detected": score.detected,
        "windows": score.windows,
        "fp_rows": score.fp_rows,
    }


def run_series_bench(
    corpus: Sequence[LabelledSeries],
    source: str,
    config: SeriesBenchConfig,
    progress: Callable[[str], None] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Run every contender on every series and score them; the report as JSON-ready data."""
    started = time.perf_counter()
    say = progress or (lambda message: None)
    results: list[dict[str, tuple[list[float], float]]]
    if config.jobs == 1:
        results = [_score_series(config.contenders, series) for series in corpus]
    else:
        with ProcessPoolExecutor(max_workers=config.jobs) as pool:
            futures = [pool.submit(_score_series, config.contenders, series) for series in corpus]
            results = []
            for done, future in enumerate(futures, start=1):
                results.append(future.result())
                if done % 10 == 0 or done == len(futures):
                    say(f"scored {done}/{len(futures)} files")
    weights = [detection_weights(len(series), series.windows, config.profile) for series in corpus]
    families = list(dict.fromkeys(series.family for series in corpus))  # in corpus order
    contenders: dict[str, Any] = {}
    for name in config.contenders:
        contender = CONTENDERS[name]
        files = [(w, result[name][0]) for w, result in zip(weights, results, strict=True)]
        per_file = [score_file(w, scores, contender.threshold) for w, scores in files]
        by_family = {family: CorpusScore(0.0, 0, 0, 0, config.profile) for family in families}
        for series, score in zip(corpus, per_file, strict=True):
            by_family[series.family] += score
        total = sum(per_file, CorpusScore(0.0, 0, 0, 0, config.profile))
        best = best_threshold(sweep_thresholds(files, config.profile))
        contenders[name] = {
            "about": contender.about,
            "threshold": contender.threshold,
            "seconds": sum(result[name][1] for result in results),
            **_score_json(total),
            # JSON has no infinity: a best threshold of null means above every score (never alert).
            "best": {
                "threshold": None if math.isinf(best.threshold) else best.threshold,
                **_score_json(best.score),
            },
            "families": {family: _score_json(score) for family, score in by_family.items()},
            "files": {
                series.name: _score_json(score) for series, score in zip(corpus, per_file, strict=True)
            },
        }
    family_sizes = {
        family: {
            "files": sum(1 for s in corpus if s.family == family),
            "rows": sum(len(s) for s in corpus if s.family == family),
            "windows": sum(len(s.windows) for s in corpus if s.family == family),
        }
        for family in families
    }
    return {
        "suite": "series",
        "corpus": {
            "source": source,
            "files": len(corpus),
            "rows": sum(len(s) for s in corpus),
            "windows": sum(w.windows for w in weights),
            "families": family_sizes,
            "notes": list(notes),
        },
        "scoring": {
            "profile": {
                "a_tp": config.profile.a_tp,
                "a_fp": config.profile.a_fp,
                "a_fn": config.profile.a_fn,
            },
            "probation": "15 % of each file, at most 750 rows",
        },
        "contenders": contenders,
        "seconds": time.perf_counter() - started,
    }


def _cell(score: Mapping[str, Any]) -> str:
    if score["score"] is None:
        return f"{score['fp_rows']} FP"
    return f"{score['score']:.1f}"


def format_report(report: Mapping[str, Any]) -> str:
    """The report as text: one line per contender, then the score per family at the default thresholds."""
    corpus, contenders = report["corpus"], report["contenders"]
    profile = report["scoring"]["profile"]
    lines = [
        f"bench series: {corpus['source']}: {corpus['files']} files, {corpus['rows']:,} rows, "
        f"{corpus['windows']} windows",
        f"NAB profile A_TP {profile['a_tp']:g}, A_FP {profile['a_fp']:g}, A_FN {profile['a_fn']:g}; "
        f"probation {report['scoring']['probation']}; score 0 = never alert, 100 = perfect",
        *(f"note: {note}" for note in corpus["notes"]),
        "",
    ]
    width = max(len("contender"), *(len(name) for name in contenders))
    lines.append(
        f"{'contender':<{width}}  {'score':>7}  {'threshold':>9}  {'best':>7}  {'at':>9}  "
        f"{'windows':>9}  {'FP rows':>7}  {'seconds':>7}"
    )
    for name, c in contenders.items():
        best = c["best"]
        at = "never" if best["threshold"] is None else f"{best['threshold']:.6g}"
        score = "-" if c["score"] is None else f"{c['score']:.1f}"
        best_score = "-" if best["score"] is None else f"{best['score']:.1f}"
        lines.append(
            f"{name:<{width}}  {score:>7}  {c['threshold']:>9.6g}  {best_score:>7}  {at:>9}  "
            f"{c['detected']:>4}/{c['windows']:<4}  {c['fp_rows']:>7}  {c['seconds']:>7.1f}"
        )
    lines += ["", "score per family at the default thresholds (a family without windows: its FP rows)"]
    fam_width = max(len("family"), *(len(f) for f in corpus["families"]))
    columns = [max(len(name), 7) for name in contenders]
    lines.append(
        f"{'family':<{fam_width}}  {'files':>5}  {'windows':>7}  "
        + "  ".join(f"{name:>{w}}" for name, w in zip(contenders, columns, strict=True))
    )
    for family, size in corpus["families"].items():
        cells = (_cell(c["families"][family]) for c in contenders.values())
        lines.append(
            f"{family:<{fam_width}}  {size['files']:>5}  {size['windows']:>7}  "
            + "  ".join(f"{cell:>{w}}" for cell, w in zip(cells, columns, strict=True))
        )
    return "\n".join(lines)
