"""``stream-monitor score-series FILE.csv``: anomaly scores for one time series with the default detectors.

Input: CSV rows ``timestamp,value`` (or more columns, the value one chosen with ``--column``), in time
order at a regular interval (one row per window), with an optional header row. Timestamps may be ISO 8601
dates or date-times (``2025-11-24T10:00:00Z``, ``2025-11-24 10:00``), ``YYYY/MM/DD[ HH:MM[:SS]]``, or
epoch numbers (seconds or milliseconds, consistently).
Output (``--out``, default standard output): ``timestamp,value,anomaly_score,alert`` with the input's
timestamp and value as written, the score in [0, 1] from the default detector stack run online in row
order (each score uses only the rows before it; the first 20 rows are its warm-up and score 0), and
``alert`` 1 where the score reaches ``--threshold``. Scores are written with 8 significant digits.

FILE may be a directory: every ``*.csv`` in it is scored in this one process, and ``--out`` (required
then) is the directory the scored files are written to under the same names.

A malformed row stops the command with its line number and value (exit code 2; with a directory, that
file is skipped and the others are scored). An irregular interval, a repeated timestamp (a duplicated
row, a daylight-saving hour written in local time) or one that steps back is only a warning, one line
each, and the rows are kept in file order, because the detectors take each row as the next interval
whatever its timestamp says.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from stream_monitor.core.detectors import DEFAULT_THRESHOLD
from stream_monitor.core.detectors.calibrated import CalibratedDetector, periods_for_interval, usual_step

__all__ = [
    "InputError",
    "Row",
    "add_parser",
    "parse_timestamp",
    "read_series",
    "run",
    "score_rows",
    "usual_interval_s",
]

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
    p.add_argument(
        "file", type=Path, help="CSV of timestamp,value rows ('-' for standard input), or a directory of them"
    )
    p.add_argument(
        "--out", type=Path, help="write the scored CSV here instead of standard output (a directory for one)"
    )
    p.add_argument(
        "--column",
        help="the value column, by header name or 1-based number (default: the second of two columns, "
        "or the one named 'value')",
    )
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


def read_series(lines: Iterable[str], column: str | None = None) -> tuple[list[Row], list[str]]:
    """Parse and check the rows; returns them with warnings. Raises :class:`InputError` on a bad row.

    The timestamp is the first column; the value is the second of two, or ``column`` (a header name or a
    1-based number), or the column named ``value``.

    >>> rows, warnings = read_series(["timestamp,value", "0,1.5", "60,2", "120,2.5", "240,2"])
    >>> [r.value for r in rows], warnings
    ([1.5, 2.0, 2.5, 2.0], ['1 irregular interval (first at line 5: 120 instead of 60)'])
    >>> read_series(["0,1", "60,abc"])
    Traceback (most recent call last):
    ...
    stream_monitor.cli.score_series.InputError: line 2: value 'abc' is not a finite number
    >>> rows, warnings = read_series(["t,host,cpu", "0,a,1", "60,a,2", "60,a,3", "30,a,4"], column="cpu")
    >>> [r.value for r in rows]
    [1.0, 2.0, 3.0, 4.0]
    >>> for warning in warnings: print(warning)
    1 repeated timestamp (first at line 4: '60', as on line 3)
    1 timestamp before the previous one (first at line 5: '30' after '60')
    """
    reader = csv.reader(lines)
    rows: list[Row] = []
    kind: str | None = None
    header: list[str] | None = None
    width = index = 0
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue
        if not width:
            width = len(fields)
            if width < 2:
                raise InputError(f"line {line}: expected 2 fields (timestamp,value), got {width}: {fields!r}")
        elif len(fields) != width:
            expected = "timestamp,value" if width == 2 else f"as on line {rows[0].line if rows else line}"
            raise InputError(
                f"line {line}: expected {width} fields ({expected}), got {len(fields)}: {fields!r}"
            )
        ts_text = fields[0].strip()
        try:
            row_kind, when = parse_timestamp(ts_text)
        except ValueError as exc:
            if not rows and kind is None and not any(_is_number(f) for f in fields[1:]):
                kind = "header"  # a first row with neither a timestamp nor a number is the header
                header = [f.strip() for f in fields]
                continue
            raise InputError(f"line {line}: {exc}") from None
        if not index:
            index = _value_index(width, header, column)
        value_text = fields[index].strip()
        try:
            value = float(value_text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise InputError(f"line {line}: value {value_text!r} is not a finite number")
        if kind not in (None, "header", row_kind):
            raise InputError(f"line {line}: timestamp {ts_text!r} is a {row_kind}, earlier ones were {kind}s")
        kind = row_kind
        rows.append(Row(line, ts_text, value_text, when, value))
    if not rows:
        raise InputError("no data rows")
    return rows, _order_warnings(rows) + _interval_warnings(rows, "s" if kind == "datetime" else "")


def _value_index(width: int, header: list[str] | None, column: str | None) -> int:
    """The 0-based index of the value column (the timestamp is column 0)."""
    if column is None:
        if width == 2:
            return 1
        if header is not None and "value" in header[1:]:
            return header.index("value", 1)
        names = f" ({', '.join(header)})" if header else ""
        raise InputError(
            f"{width} columns{names}: choose the value column with --column "
            "(a header name or a 1-based number)"
        )
    if column.isdigit():
        number = int(column)
        if not 2 <= number <= width:
            raise InputError(f"--column {column}: the value column is a number from 2 to {width}")
        return number - 1
    if header is None or column not in header[1:]:
        known = f"; the header has {', '.join(header[1:])}" if header else "; the file has no header row"
        raise InputError(f"--column {column!r}: no such column{known}")
    return header.index(column, 1)


def _order_warnings(rows: list[Row]) -> list[str]:
    """Repeated timestamps and steps back: counted, the first named; the rows stay in file order."""
    repeated = [(b, a) for a, b in itertools.pairwise(rows) if b.time == a.time]
    back = [(b, a) for a, b in itertools.pairwise(rows) if b.time < a.time]
    out = []
    if repeated:
        row, prev = repeated[0]
        plural = "s" if len(repeated) > 1 else ""
        out.append(
            f"{len(repeated)} repeated timestamp{plural} (first at line {row.line}: {row.timestamp!r}, "
            f"as on line {prev.line})"
        )
    if back:
        row, prev = back[0]
        plural = "s" if len(back) > 1 else ""
        out.append(
            f"{len(back)} timestamp{plural} before the previous one (first at line {row.line}: "
            f"{row.timestamp!r} after {prev.timestamp!r})"
        )
    return out


def _interval_warnings(rows: list[Row], unit: str) -> list[str]:
    # Only forward steps: a repeated or backward timestamp has its own warning.
    pairs = [(b, b.time - a.time) for a, b in itertools.pairwise(rows) if b.time > a.time]
    steps = [step for _, step in pairs]
    if len(steps) < 2:
        return []
    # The usual interval is the most common step (the smallest of equally common ones): a median would
    # blame the regular rows when gaps are frequent.
    usual = min(statistics.multimode(steps))
    odd = [(row, step) for row, step in pairs if abs(step - usual) > 1e-6 * max(usual, 1.0)]
    if not odd:
        return []
    row, step = odd[0]
    plural = "s" if len(odd) > 1 else ""
    where = f"first at line {row.line}: {step:g}{unit} instead of {usual:g}{unit}"
    return [f"{len(odd)} irregular interval{plural} ({where})"]


def score_rows(rows: Sequence[Row]) -> list[float]:
    """Scores of the default detector stack, fed the rows one at a time in order.

    The stack looks for a daily and a weekly cycle at the rows' usual interval (the most common step
    between timestamps; epoch numbers above 10^11 are taken as milliseconds).
    """
    detector = CalibratedDetector(periods=periods_for_interval(usual_interval_s(rows)))
    return [detector.update(row.value) for row in rows]


def usual_interval_s(rows: Sequence[Row]) -> float:
    """The most common forward step between the rows' timestamps, in seconds (nan with fewer than 2).

    >>> rows, _ = read_series(["1763978460000,1", "1763978520000,2", "1763978580000,3"])
    >>> usual_interval_s(rows)
    60.0
    """
    step = usual_step([row.time for row in rows])
    return step / 1000.0 if rows and rows[0].time > 1e11 else step


def run(args: argparse.Namespace) -> int:
    if args.file.is_dir():
        return _run_directory(args)
    return _score_file(args.file, args.out, args)


def _run_directory(args: argparse.Namespace) -> int:
    if args.out is None:
        print(f"score-series: {args.file}: a directory needs --out DIR for the scored files", file=sys.stderr)
        return 2
    sources = sorted(p for p in args.file.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
    if not sources:
        print(f"score-series: {args.file}: no *.csv files", file=sys.stderr)
        return 2
    if args.out.resolve() == args.file.resolve():
        print("score-series: --out must not be the input directory (it would overwrite it)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    failed = [source for source in sources if _score_file(source, args.out / source.name, args) != 0]
    print(f"score-series: {len(sources) - len(failed)} of {len(sources)} files scored", file=sys.stderr)
    return 2 if failed else 0


def _score_file(path: Path, out_path: Path | None, args: argparse.Namespace) -> int:
    name = str(path)
    try:
        if name == "-":
            rows, warnings = read_series(sys.stdin, args.column)
        else:
            if not path.is_file():
                print(f"score-series: {name}: no such file", file=sys.stderr)
                return 2
            with open(path, encoding="utf-8-sig", newline="") as handle:
                rows, warnings = read_series(handle, args.column)
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
    out: IO[str] = open(out_path, "w", encoding="utf-8", newline="") if out_path else sys.stdout  # noqa: SIM115
    try:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["timestamp", "value", "anomaly_score", "alert"])
        for row, score in zip(rows, scores, strict=True):
            writer.writerow([row.timestamp, row.value_text, f"{score:.8g}", int(score >= args.threshold)])
    finally:
        if out_path:
            out.close()
    alerts = sum(score >= args.threshold for score in scores)
    print(f"score-series: {name}: {len(rows)} rows, {alerts} at or above {args.threshold:g}", file=sys.stderr)
    return 0
