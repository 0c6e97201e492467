"""Helpers shared by the rule and dashboard tests: PromQL metric names, the series the worker registers,
and the promtool/amtool binaries.

The metric-name extraction is deliberately simple (no PromQL parser in Python): it removes string
literals, label matchers, grouping clauses, ranges and offsets, then every identifier not followed by "("
that is not a keyword is a metric name. It is checked against expressions with known answers in
tests/unit/test_prometheus_rules.py.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from stream_monitor.sinks.metrics import MonitorMetrics

ROOT = Path(__file__).resolve().parents[2]

# Series Prometheus itself makes: per target (up) and per active alert (ALERTS).
PROMETHEUS_SERIES = frozenset({"up", "ALERTS"})
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset({"instance", "job"})

_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"inf", "nan", "atan2"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+")
_IDENT = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects.

    >>> sorted(metric_names('sum by (topic) (rate(a_total{x="b c"}[5m] offset 1h)) / on(topic) b:rec > 0.5'))
    ['a_total', 'b:rec']
    """
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _CLAUSE.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name = match.group(1)
        if name.lower() in _KEYWORDS or re.fullmatch(r"[0-9.e+-]+", name):
            continue
        names.add(name)
    return names


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """(metric, {label: (op, value)}) for every ``name{...}`` selector of an expression."""
    out = []
    for match in _SELECTOR.finditer(expr):
        matchers = {m.group(1): (m.group(2), m.group(3)) for m in _MATCHER.finditer(match.group(2))}
        out.append((match.group(1), matchers))
    return out


def registered_series() -> dict[str, frozenset[str]]:
    """Every series name MonitorMetrics exports (with _total/_bucket/... suffixes) -> its label names."""
    registry = CollectorRegistry()
    metrics = MonitorMetrics(registry, segment_dims=("platform", "region", "tenure"))
    labels: dict[str, frozenset[str]] = {}
    bases = set()
    for wrapper in vars(metrics).values():
        # _labelnames is private in prometheus_client, but a labelled metric without children exports no
        # sample to read its labels from.
        names = getattr(wrapper, "_labelnames", None)
        base = getattr(wrapper, "_name", None)
        if names is None or base is None:
            continue
        bases.add(base.removesuffix("_total"))
        kind = getattr(wrapper, "_type", "")
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(kind, ("",))
        for suffix in suffixes:
            extra = {"le"} if suffix == "_bucket" else set()
            labels[base + suffix] = frozenset(names) | extra
    collected = {m.name for m in registry.collect()}
    assert bases == collected, f"metrics the attribute scan missed: {collected - bases}"
    return labels


def tool(name: str) -> str:
    """Path of promtool/amtool; fails under CI when missing, else skips (run scripts/install_promtool.sh)."""
    cache = Path(os.environ.get("STREAM_MONITOR_CACHE", Path.home() / ".cache" / "stream-monitor"))
    found = shutil.which(name) or next(
        (str(p) for p in (cache / "bin" / name,) if p.is_file() and os.access(p, os.X_OK)), None
    )
    if found:
        return found
    message = f"{name} not found on PATH or in {cache / 'bin'}; run scripts/install_promtool.sh"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI must install it: .ci/run does)")
    pytest.skip(message)
