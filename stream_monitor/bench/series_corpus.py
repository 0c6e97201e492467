"""The built-in labelled corpus of ``stream-monitor bench series``: seeded synthetic series, NAB's windows.

A corpus is a list of :class:`LabelledSeries`: one file's rows in time order and its anomaly windows as
inclusive row ranges. This module holds the labelling conventions of the Numenta Anomaly Benchmark (NAB;
Lavin & Ahmad 2015, https://github.com/numenta/NAB, nab/labeler.py) that the generator and the scorer in
:mod:`stream_monitor.bench.series` share:

* :func:`probation_rows`: the first 15 % of a file, at most 750 rows (NAB's ``getProbationPeriod``:
  ``min(floor(0.15 n), 0.15 * 5000)``), where detections are not scored;
* :func:`anomaly_windows`: a file with ``k`` anomalies gets windows of ``int(0.10 n / k)`` rows in all,
  each centred on its anomaly's first row (``a - L // 2`` to ``a + L // 2``, clipped to the file); a
  window that starts inside the probationary period is dropped and overlapping ones are merged, as NAB's
  labeler does. A file without anomalies has no window.

:func:`build_corpus` generates the default corpus from the synthetic families that public benchmarks
publish or describe, each with the labels the generator knows (the anomaly's first row), deterministic
for a seed. Values are rounded to 4 decimals so that a written corpus reads back exactly. Timestamps
start on 2014-04-01 00:00:00 like NAB's artificial files and are written ``YYYY-MM-DD HH:MM:SS``.

===========================  ==============  =======================================================
family (folder)              sampling, rows  follows
===========================  ==============  =======================================================
art_daily_jumps              5 min, 4,032    NAB art_daily_jumpsup / jumpsdown: the daily cycle's
                                             level jumps up or down for one to two days
art_daily_flatmiddle         5 min, 4,032    NAB art_daily_flatmiddle: the cycle goes flat at its
                                             middle level for half a day or more
art_daily_nojump             5 min, 4,032    NAB art_daily_nojump: one night the cycle fails to dip
art_increase_spike_density   5 min, 4,032    NAB art_increase_spike_density: rare spikes, then a day
                                             of dense ones
art_load_balancer_spikes     5 min, 4,032    NAB art_load_balancer_spikes: a routine spike every six
                                             hours; the anomaly is a level shift or a spike of
                                             another type (wide, negative, 2.5 times as tall)
yahoo_a3_outliers            1 h, 2,016      Yahoo S5 A3: trend + daily and weekly seasonality +
                                             noise, three point outliers
yahoo_a4_level_shift         1 h, 2,016      Yahoo S5 A4 change points: two lasting level shifts
yahoo_a4_variance_change     1 h, 2,016      Yahoo S5 A4 change points: the noise grows 3-6 times
yahoo_a4_trend_change        1 h, 2,016      Yahoo S5 A4 change points: the trend's slope changes
twitter_seasonal_spikes      5 min, 4,032    Twitter AnomalyDetection's examples: a daily cycle
                                             with one global anomaly (beyond the daily range) and
                                             one local one (in range, wrong for the time of day)
twitter_breakout             5 min, 4,032    Twitter BreakoutDetection's mean shift and ramp up/down
random_walk_spike            5 min, 4,032    a Gaussian random walk with one spike of 10-15 steps'
                                             standard deviations
clean_daily                  5 min, 4,032    NAB artificialNoAnomaly art_daily_no_noise,
                                             art_daily_small_noise, art_daily_perfect_square_wave
clean_flat                   5 min, 4,032    NAB artificialNoAnomaly art_flatline, art_noisy
clean_weekly_hourly          1 h, 2,016      Yahoo S5 A3's base series without outliers
===========================  ==============  =======================================================

Four series per family with anomalies and three per clean family: 57 series, 191,520 rows, 64 windows
for a seed. May import the standard library and numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

__all__ = [
    "FAMILIES",
    "PROBATION_CAP_ROWS",
    "PROBATION_SHARE",
    "WINDOW_SHARE",
    "Family",
    "LabelledSeries",
    "anomaly_windows",
    "build_corpus",
    "probation_rows",
]

PROBATION_SHARE = 0.15
PROBATION_CAP_ROWS = 750  # NAB caps the probationary period at 15 % of 5,000 rows
WINDOW_SHARE = 0.10
START = datetime(2014, 4, 1, tzinfo=UTC)
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"


def probation_rows(n_rows: int) -> int:
    """Rows at the start of a file where NAB scores no detection: 15 % of them, at most 750.

    >>> probation_rows(4032), probation_rows(100), probation_rows(22695)
    (604, 15, 750)
    """
    return int(min(math.floor(PROBATION_SHARE * n_rows), PROBATION_SHARE * 5000))


def anomaly_windows(n_rows: int, onsets: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """NAB's windows for anomalies starting at ``onsets``: inclusive row ranges, in order.

    >>> anomaly_windows(4032, [2000])
    ((1799, 2201),)
    >>> anomaly_windows(4032, [100, 3000])  # the first starts inside the probationary period
    ((2900, 3100),)
    >>> anomaly_windows(4032, [])
    ()
    """
    if not onsets:
        return ()
    for onset in onsets:
        if not 0 <= onset < n_rows:
            raise ValueError(f"anomaly onset {onset} is not a row of a file of {n_rows} rows")
    half = int(WINDOW_SHARE * n_rows / len(onsets)) // 2
    windows = [(max(a - half, 0), min(a + half, n_rows - 1)) for a in sorted(onsets)]
    probation = probation_rows(n_rows)
    merged: list[tuple[int, int]] = []
    for start, end in windows:
        if start < probation:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return tuple(merged)


@dataclass(frozen=True, slots=True)
class LabelledSeries:
    """One labelled file: its rows in time order and its anomaly windows as inclusive row ranges.

    ``name`` is the path relative to the corpus's ``data`` folder; its folder is the family.

    >>> s = LabelledSeries("demo/flat.csv", ("2014-04-01 00:00:00", "2014-04-01 00:05:00"), (0.0, 300.0),
    ...                    (1.0, 1.0))
    >>> s.family, len(s), s.windows
    ('demo', 2, ())
    """

    name: str
    timestamps: tuple[str, ...]
    times_s: tuple[float, ...]
    values: tuple[float, ...]
    windows: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        n = len(self.values)
        if len(self.timestamps) != n or len(self.times_s) != n:
            raise ValueError(
                f"{self.name}: {len(self.timestamps)} timestamps, {len(self.times_s)} times and {n} values"
            )
        previous_end = -1
        for start, end in self.windows:
            if not previous_end < start <= end < n:
                raise ValueError(
                    f"{self.name}: window rows ({start}, {end}) are not in order, disjoint and within "
                    f"the file's {n} rows"
                )
            previous_end = end

    @property
    def family(self) -> str:
        folder, _, _ = self.name.rpartition("/")
        return folder or "."

    def __len__(self) -> int:
        return len(self.values)


FloatArray = npt.NDArray[np.float64]
Generated = tuple[FloatArray, list[int]]  # values, and the first row of each anomaly
# A family's generator: (random generator, rows, rows per day, variant tag) -> values, anomaly onsets.
Shape = Callable[[np.random.Generator, int, int, str], Generated]


@dataclass(frozen=True, slots=True)
class Family:
    """One synthetic family: its sampling, its variants and its generator (see the module's table).

    >>> family = FAMILIES[0]
    >>> family.name, family.step_s, family.rows, family.variants[0]
    ('art_daily_jumps', 300, 4032, 'up_sine')
    """

    name: str
    step_s: int
    rows: int
    variants: tuple[str, ...]
    shape: Shape


def _onsets(
    rng: np.random.Generator, n: int, count: int, period: int = 1, phases: Sequence[int] | None = None
) -> list[int]:
    """``count`` anomaly onsets whose NAB windows fit after the probationary period without overlapping.

    The scored span is cut into ``count`` equal parts and one onset drawn in each, far enough from the
    part's ends for its window; with ``period``, only rows at the part's phase of it (``phases[k]``, a
    time of day; 0 by default) are drawn.
    """
    half = int(WINDOW_SHARE * n / count) // 2
    low, high = probation_rows(n) + half + 1, n - half - 2
    part = (high - low) / count
    onsets = []
    for k in range(count):
        phase = phases[k] if phases is not None else 0
        first, last = int(low + k * part) + half, int(low + (k + 1) * part) - half
        candidates = [i for i in range(first, last + 1) if i % period == phase % period]
        if not candidates:
            raise ValueError(f"no room for {count} anomalies at phase {phase} of {period} rows in {n} rows")
        onsets.append(int(rng.choice(candidates)))
    return onsets


def _day_shape(n: int, per_day: int, kind: str) -> FloatArray:
    """A daily cycle in [0, 1]: a sine lowest at midnight, or NAB's square wave (high 08:00-20:00)."""
    phase = (np.arange(n) % per_day) / per_day
    if kind == "square":
        return ((phase >= 8 / 24) & (phase < 20 / 24)).astype(float)
    return 0.5 - 0.5 * np.cos(2 * np.pi * phase)


def _daily_base(
    rng: np.random.Generator, n: int, per_day: int, kind: str, noise: float
) -> tuple[FloatArray, float, float]:
    low = rng.uniform(10, 30)
    high = low + rng.uniform(40, 80)
    values = low + (high - low) * _day_shape(n, per_day, kind) + rng.normal(0, noise * (high - low), n)
    return values, low, high


def _daily_jumps(rng: np.random.Generator, n: int, per_day: int, variant: str) -> Generated:
    direction, kind = variant.split("_")
    values, low, high = _daily_base(rng, n, per_day, kind, 0.02)
    onset = _onsets(rng, n, 1)[0]
    duration = int(per_day * rng.uniform(1.0, 2.0))
    jump = (high - low) * rng.uniform(0.5, 1.0) * (1 if direction == "up" else -1)
    values[onset : onset + duration] += jump
    return values, [onset]


def _daily_flatmiddle(rng: np.random.Generator, n: int, per_day: int, variant: str) -> Generated:
    kind, noise = variant.split("_", 1)
    sigma = 0.01 if noise == "small_noise" else 0.05
    values, low, high = _daily_base(rng, n, per_day, kind, sigma)
    onset = _onsets(rng, n, 1)[0]
    duration = min(n - onset, int(per_day * rng.uniform(0.5, 0.8)))
    values[onset : onset + duration] = (low + high) / 2 + rng.normal(0, sigma * (high - low), duration)
    return values, [onset]


def _daily_nojump(rng: np.random.Generator, n: int, per_day: int, variant: str) -> Generated:
    kind, noise = variant.split("_", 1)
    sigma = 0.01 if noise == "small_noise" else 0.05
    values, low, high = _daily_base(rng, n, per_day, kind, sigma)
    # The night the cycle should fall: from 20:00 for the square wave, from 18:00 (below its middle) for
    # the sine; for twelve hours it stays high (the sine is mirrored about its middle).
    dip_phase = int(per_day * (20 / 24 if kind == "square" else 18 / 24))
    onset = _onsets(rng, n, 1, period=per_day, phases=[dip_phase])[0]
    night = slice(onset, onset + per_day // 2)
    shape = _day_shape(n, per_day, kind)[night]
    flipped = np.ones_like(shape) if kind == "square" else 1.0 - shape
    values[night] += (high - low) * (flipped - shape)
    return values, [onset]


def _spike_density(rng: np.random.Generator, n: int, per_day: int, variant: str) -> Generated:
    level = rng.uniform(10, 30)
    values = level + rng.normal(0, 0.05 * level, n)
    rare, dense = {"a": (1.0, 12), "b": (2.0, 8), "c": (0.5, 20), "d": (1.0, 6)}[variant]
    spikes = rng.random(n) < rare / per_day
    onset = _onsets(rng, n, 1)[0]
    end = min(n, onset + int(per_day * rng.uniform(0.5, 1.5)))
    spikes[onset:end] = rng.random(end - onset) < 1 / dense
    spikes[onset] = True
    values[spikes] += level * rng.uniform(2, 4, int(spikes.sum()))
    return values, [onset]


def _routine_spikes(rng: np.random.Generator, n: int, per_day: int, variant: str) -> Generated:
    level = rng.uniform(10, 30)
    values = level + rng.normal(0, 0.05 * level, n)
    period, offset = per_day // 4, int(rng.integers(0, per_day // 4))
    height = level * rng.uniform(3, 5)
    for start in range(offset, n, period):
        values[start : start + 2] += height
    # The anomaly starts between two routine spikes so that it is not mistaken for one.
    onset = _onsets(rng, n, 1, period=period, phases=[offset + period // 2])[0]
    if variant == "level_shift":
        values[onset:] += level * rng.uniform(0.5, 1.0)
    elif variant == "wide_spike":
        values[onset : onset + 12] += height
    elif variant == "negative_spike":
        values[onset : onset + 3] -= level * rng.uniform(0.6, 0.9)
    else:  # tall_spike
        values[onset] += 2.5 * height
    return values, [onset]


def _yahoo_base(rng: np.random.Generator, n: int, per_day: int) -> tuple[FloatArray, float, float]:
    """Yahoo S5 A3/A4's synthetic base: level + trend + daily and weekly seasonality + Gaussian noise."""
    level = rng.uniform(50, 200)
    daily, weekly = level * rng.uniform(0.1, 0.3), level * rng.uniform(0.05, 0.2)
    slope = level * rng.uniform(-0.3, 0.3) / n
    i = np.arange(n)
    sigma = level * rng.uniform(0.02, 0.05)
    values = (
        level
        + slope * i
        + daily * np.sin(2 * np.pi * i / per_day + rng.uniform(0, 2 * np.pi))
        + weekly * np.sin(2 * np.pi * i / (7 * per_day) + rng.uniform(0, 2 * np.pi))
        + rng.normal(0, sigma, n)
    )
    return values, daily + weekly, sigma


def _a3_outliers(rng: np.random.Generator, n: int, per_day: int, variant: str) -> Generated:
    values, amplitude, sigma = _yahoo_base(rng, n, per_day)
    onsets = _onsets(rng, n, 3)
    for onset in onsets:
        values[onset] += rng.choice([-1.0, 1.0]) * (rng.uniform(0.8, 1.2) * amplitude + 6 * sigma)
    return values, onsets


def _a4_level_shift(rng: np.random.Generator, n: int, per_day: int, variant: str) -> Generated:
    values, amplitude, _ = _yahoo_base(rng, n, per_day)
    onsets = _onsets(rng, n, 2)
    for onset in onsets:
        values[onset:] += rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0) * amplitude
    return values, onsets


def _a4_variance(rng: np.random.Generator, n: int, per_day: int, variant: str) -> Generated:
    values, _, sigma = _yahoo_base(rng, n, per_day)
    onset = _onsets(rng, n, 1)[0]
    values[onset:] += rng.normal(0, sigma * rng.uniform(3, 6), n - onset)
    return values, [onset]


def _a4_trend(rng: np.random.Generator, n: int, per_day: int, variant: str) -> Generated:
    values, amplitude, _ = _yahoo_base(rng, n, per_day)
    onset = _onsets(rng, n, 1)[0]
    drift = rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 2.0) * amplitude
    values[onset:] += drift * np.arange(n - onset) / (n - onset)
    return values, [onset]


def _twitter_spikes(rng: np.random.Generator, n: int, per_day: int, variant: str) -> Generated:
    values, low, high = _daily_base(rng, n, per_day, "sine", 0.03)
    span = high - low
    # The global anomaly at any time of day; the local one in the night's trough (midnight +- 2 hours),
    # first or second by variant.
    any_time, trough = int(rng.integers(0, per_day)), int(rng.integers(-per_day // 12, per_day // 12))
    local_first = variant in ("c", "d")
    phases = [trough, any_time] if local_first else [any_time, trough]
    onsets = _onsets(rng, n, 2, period=per_day, phases=phases)
    local_onset, global_onset = onsets if local_first else onsets[::-1]
    sign = -1.0 if variant in ("b", "d") else 1.0
    width = int(rng.integers(1, 4))
    edge = low if sign < 0 else high
    values[global_onset : global_onset + width] = edge + sign * span * rng.uniform(0.3, 0.6)
    values[local_onset : local_onset + int(rng.integers(3, 7))] = low + span * rng.uniform(0.5, 0.7)
    return values, sorted([global_onset, local_onset])


def _breakout(rng: np.random.Generator, n: int, per_day: int, variant: str) -> Generated:
    level = rng.uniform(50, 150)
    values = level + 0.1 * level * _day_shape(n, per_day, "sine") + rng.normal(0, 0.03 * level, n)
    kind, direction = variant.rsplit("_", 1)
    onset = _onsets(rng, n, 1)[0]
    shift = level * rng.uniform(0.3, 0.6) * (1 if direction == "up" else -1)
    ramp = 1 if kind == "mean_shift" else int(per_day * rng.uniform(0.25, 1.0))
    values[onset:] += shift * np.minimum(np.arange(1, n - onset + 1) / ramp, 1.0)
    return values, [onset]


def _random_walk_spike(rng: np.random.Generator, n: int, per_day: int, variant: str) -> Generated:
    values = rng.uniform(50, 100) + np.cumsum(rng.normal(0, 1.0, n))
    onset = _onsets(rng, n, 1)[0]
    values[onset] += rng.choice([-1.0, 1.0]) * rng.uniform(10, 15)
    return values, [onset]


def _clean_daily(rng: np.random.Generator, n: int, per_day: int, variant: str) -> Generated:
    kind, noise = {
        "sine_no_noise": ("sine", 0.0),
        "sine_small_noise": ("sine", 0.02),
        "perfect_square_wave": ("square", 0.0),
    }[variant]
    values, _, _ = _daily_base(rng, n, per_day, kind, noise)
    return values, []


def _clean_flat(rng: np.random.Generator, n: int, per_day: int, variant: str) -> Generated:
    level = rng.uniform(10, 60)
    sigma = {"flatline": 0.0, "noisy": 0.05, "very_noisy": 0.2}[variant] * level
    return level + rng.normal(0, sigma, n) if sigma else np.full(n, level), []


def _clean_weekly(rng: np.random.Generator, n: int, per_day: int, variant: str) -> Generated:
    values, _, _ = _yahoo_base(rng, n, per_day)
    return values, []


_FIVE_MINUTES, _HOUR = 300, 3600
_TWO_WEEKS_5MIN, _TWELVE_WEEKS_HOURLY = 14 * 288, 12 * 7 * 24
_SEEDS4 = ("a", "b", "c", "d")

FAMILIES: tuple[Family, ...] = (
    Family(
        "art_daily_jumps",
        _FIVE_MINUTES,
        _TWO_WEEKS_5MIN,
        ("up_sine", "down_sine", "up_square", "down_square"),
        _daily_jumps,
    ),
    Family(
        "art_daily_flatmiddle",
        _FIVE_MINUTES,
        _TWO_WEEKS_5MIN,
        ("sine_small_noise", "square_small_noise", "sine_noisy", "square_noisy"),
        _daily_flatmiddle,
    ),
    Family(
        "art_daily_nojump",
        _FIVE_MINUTES,
        _TWO_WEEKS_5MIN,
        ("square_small_noise", "square_noisy", "sine_small_noise", "sine_noisy"),
        _daily_nojump,
    ),
    Family("art_increase_spike_density", _FIVE_MINUTES, _TWO_WEEKS_5MIN, _SEEDS4, _spike_density),
    Family(
        "art_load_balancer_spikes",
        _FIVE_MINUTES,
        _TWO_WEEKS_5MIN,
        ("level_shift", "wide_spike", "negative_spike", "tall_spike"),
        _routine_spikes,
    ),
    Family("yahoo_a3_outliers", _HOUR, _TWELVE_WEEKS_HOURLY, _SEEDS4, _a3_outliers),
    Family("yahoo_a4_level_shift", _HOUR, _TWELVE_WEEKS_HOURLY, _SEEDS4, _a4_level_shift),
    Family("yahoo_a4_variance_change", _HOUR, _TWELVE_WEEKS_HOURLY, _SEEDS4, _a4_variance),
    Family("yahoo_a4_trend_change", _HOUR, _TWELVE_WEEKS_HOURLY, _SEEDS4, _a4_trend),
    Family("twitter_seasonal_spikes", _FIVE_MINUTES, _TWO_WEEKS_5MIN, _SEEDS4, _twitter_spikes),
    Family(
        "twitter_breakout",
        _FIVE_MINUTES,
        _TWO_WEEKS_5MIN,
        ("mean_shift_up", "ramp_up", "mean_shift_down", "ramp_down"),
        _breakout,
    ),
    Family("random_walk_spike", _FIVE_MINUTES, _TWO_WEEKS_5MIN, _SEEDS4, _random_walk_spike),
    Family(
        "clean_daily",
        _FIVE_MINUTES,
        _TWO_WEEKS_5MIN,
        ("sine_no_noise", "sine_small_noise", "perfect_square_wave"),
        _clean_daily,
    ),
    Family("clean_flat", _FIVE_MINUTES, _TWO_WEEKS_5MIN, ("flatline", "noisy", "very_noisy"), _clean_flat),
    Family("clean_weekly_hourly", _HOUR, _TWELVE_WEEKS_HOURLY, ("a", "b", "c"), _clean_weekly),
)


def build_corpus(seed: int = 0, *, quick: bool = False) -> list[LabelledSeries]:
    """The built-in corpus for ``seed``: every variant of every family (``quick``: the first variant of
    each, a quarter as long), files named ``family/family_variant.csv``.

    Each series draws from its own generator seeded with (seed, family, variant), so one family's
    series do not change when another family is added.

    >>> corpus = build_corpus(seed=0, quick=True)
    >>> len(corpus), corpus[0].name, len(corpus[0]), corpus[0].windows
    (15, 'art_daily_jumps/art_daily_jumps_up_sine.csv', 1008, ((543, 643),))
    >>> build_corpus(seed=0, quick=True) == corpus
    True
    """
    corpus = []
    for family_index, family in enumerate(FAMILIES):
        variants = family.variants[:1] if quick else family.variants
        rows = family.rows // 4 if quick else family.rows
        per_day = 86_400 // family.step_s
        for variant_index, variant in enumerate(variants):
            rng = np.random.default_rng([seed, family_index, variant_index])
            values, onsets = family.shape(rng, rows, per_day, variant)
            start_s = START.timestamp()
            corpus.append(
                LabelledSeries(
                    name=f"{family.name}/{family.name}_{variant}.csv",
                    timestamps=tuple(
                        (START + timedelta(seconds=i * family.step_s)).strftime(TIMESTAMP_FORMAT)
                        for i in range(rows)
                    ),
                    times_s=tuple(start_s + i * family.step_s for i in range(rows)),
                    values=tuple(round(float(v), 4) for v in values),
                    windows=anomaly_windows(rows, onsets),
                )
            )
    return corpus
