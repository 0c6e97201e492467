"""``stream-monitor score-series FILE.csv``: anomaly scores for one time series with the default detectors.

Input: CSV rows ``timestamp,value``, in time order at a regular interval (one row per window), with an
optional header row. Timestamps may be ISO 8601 dates or date-times (``2025-11-24T10:00:00Z``,
``2025-11-24 10:00``), ``YYYY/MM/DD[ HH:MM[:SS]]``, or epoch numbers (seconds or milliseconds, consistently).
Output (``--out``, default standard output): ``timestamp,value,anomaly_score,alert`` with the input's
timestamp and value as written, the score in [0, 1] from the default detector stack run online in row
order (each score uses only the rows before it; the first 20 rows are its warm-up and score 0), and
``alert`` 1 where the score reaches ``--threshold``.

A malformed row stops the command with its line number and value (exit code 2); an irregular interval is
only a warning, because the detectors take each row as the next interval whatever its timestamp says.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from stream_monitor.core.detectors import DEFAULT_THRESHOLD, default_detector

__all__ = ["InputError", "Row", "add_parser", "parse_timestamp", "read_series", "run", "score_rows"]

_DATE_FORMATS = ("%Y/%m/%d %H:%M:%S", "%Y/%m/%d %H:%M", "%Y/%m/%d")


class InputError(ValueError):
    """A row (or the file) that cannot be scored; the message names the line.

    >>> str(InputError("line 3: value 'x' is not a finite number"))
    "line 3: value 'x' is not a finite number"
    """


@dataclass(frozen=True, slots=True)
class Row:
    """One input row: the text as written, and the parsed time (seconds, or epoch units) and value.

    >>> read_series(["2025-11-24T10:00:00Z,1.50"])[0][0].value_text
    '1.50'
    """

    line: int
    timestamp: str
    value_text: str
    time: float
    value: float


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "score-series",
        # The alias is the module name, which is what stream_monitor.cli.main.COMMANDS lists.
        aliases=["score_series"],
        help="anomaly scores for a timestamp,value CSV with the default detector stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, help="CSV of timestamp,value rows ('-' for standard input)")
    p.add_argument("--out", type=Path, help="write the scored CSV here instead of standard output")
    p.add_argument(
        "--threshold",
        type=_threshold,
        default=DEFAULT_THRESHOLD,
        help=f"score at which a row is an alert, in (0, 1] (default {DEFAULT_THRESHOLD:g})",
    )
    p.set_defaults(func=run)


def _threshold(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


def parse_timestamp(text: str) -> tuple[str, float]:
    """The kind (``"epoch"`` or ``"datetime"``) and sortable value of a timestamp.

    Date-times without a zone are taken as UTC (only differences matter here).

    >>> parse_timestamp("2025-11-24T10:01:00Z")
    ('datetime', 1763978460.0)
    >>> parse_timestamp("2025-11-24 10:01") == parse_timestamp("2025/11/24 10:01")
    True
    >>> parse_timestamp("1763978460000")
    ('epoch', 1763978460000.0)
    """
    stripped = text.strip()
    try:
        number = float(stripped)
    except ValueError:
        pass
    else:
        if math.isfinite(number):
            return "epoch", number
        raise ValueError(f"timestamp {text!r} is not finite")
    parsed: datetime | None = None
    try:
        parsed = datetime.fromisoformat(stripped)
    except ValueError:
        for pattern in _DATE_FORMATS:
            try:
                parsed = datetime.strptime(stripped, pattern)
                break
            except ValueError:
                continue
    if parsed is None:
        raise ValueError(f"timestamp {text!r} is not an ISO 8601 date or date-time, nor an epoch number")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return "datetime", parsed.timestamp()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_series(lines: Iterable[str]) -> tuple[list[Row], list[str]]:
    """Parse and check the rows; returns them with warnings. Raises :class:`InputError` on a bad row.

    >>> rows, warnings = read_series(["timestamp,value", "0,1.5", "60,2", "120,2.5", "240,2"])
    >>> [r.value for r in rows], warnings
    ([1.5, 2.0, 2.5, 2.0], ['1 irregular interval (first at line 5: 120 instead of 60)'])
    >>> read_series(["0,1", "60,abc"])
    Traceback (most recent call last):
    ...
    stream_monitor.cli.score_series.InputError: line 2: value 'abc' is not a finite number
    """
    reader = csv.reader(lines)
    rows: list[Row] = []
    kind: str | None = None
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        if len(fields) != 2:
            raise InputError(
                f"line {line}: expected 2 fields (timestamp,value), got {len(fields)}: {fields!r}"
            )
        ts_text, value_text = fields[0].strip(), fields[1].strip()
        try:
            row_kind, when = parse_timestamp(ts_text)
        except ValueError as exc:
            if not rows and kind is None and not _is_number(value_text):
                kind = "header"  # a first row with neither a timestamp nor a number is the header
                continue
            raise InputError(f"line {line}: {exc}") from None
        try:
            value = float(value_text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InputError(f"line {line}: value {value_text!r} is not a finite number")
        if kind not in (None, "header", row_kind):
            raise InputError(f"line {line}: timestamp {ts_text!r} is a {row_kind}, earlier ones were {kind}s")
        kind = row_kind
        if rows and when <= rows[-1].time:
            raise InputError(
                f"line {line}: timestamp {ts_text!r} is not after the previous one "
                f"({rows[-1].timestamp!r}, line {rows[-1].line})"
            )
        rows.append(Row(line, ts_text, value_text, when, value))
    if not rows:
        raise InputError("no data rows")
    return rows, _interval_warnings(rows, "s" if kind == "datetime" else "")


def _interval_warnings(rows: list[Row], unit: str) -> list[str]:
    steps = [b.time - a.time for a, b in itertools.pairwise(rows)]
    if len(steps) < 2:
        return []
    # The usual interval is the most common step (the smallest of equally common ones): a median would
    # blame the regular rows when gaps are frequent.
    usual = min(statistics.multimode(steps))
    odd = [(rows[i + 1], step) for i, step in enumerate(steps) if abs(step - usual) > 1e-6 * max(usual, 1.0)]
    if not odd:
        return []
    row, step = odd[0]
    plural = "s" if len(odd) > 1 else ""
    where = f"first at line {row.line}: {step:g}{unit} instead of {usual:g}{unit}"
    return [f"{len(odd)} irregular interval{plural} ({where})"]


def score_rows(rows: Iterable[Row]) -> list[float]:
    """Scores of the default detector stack, fed the rows one at a time in order."""
    detector = default_detector()
    return [detector.update(row.value) for row in rows]


def run(args: argparse.Namespace) -> int:
    name = str(args.file)
    try:
        if name == "-":
            rows, warnings = read_series(sys.stdin)
        else:
            if not args.file.is_file():
                print(f"score-series: {name}: no such file", file=sys.stderr)
                return 2
            with open(args.file, encoding="utf-8-sig", newline="") as handle:
                rows, warnings = read_series(handle)
    except InputError as exc:
        print(f"score-series: {name}: {exc}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:
        print(f"score-series: {name}: not UTF-8 text ({exc.reason} at byte {exc.start})", file=sys.stderr)
        return 2
    for warning in warnings:
        print(
            f"score-series: {name}: warning: {warning}; each row is taken as the next interval",
            file=sys.stderr,
        )
    scores = score_rows(rows)
    out: IO[str] = open(args.out, "w", encoding="utf-8", newline="") if args.out else sys.stdout  # noqa: SIM115
    try:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["timestamp", "value", "anomaly_score", "alert"])
        for row, score in zip(rows, scores, strict=True):
            writer.writerow([row.timestamp, row.value_text, f"{score:.4f}", int(score >= args.threshold)])
    finally:
        if args.out:
            out.close()
    alerts = sum(score >= args.threshold for score in scores)
    print(f"score-series: {len(rows)} rows, {alerts} at or above {args.threshold:g}", file=sys.stderr)
    return 0
