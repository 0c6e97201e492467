"""The window field codec: every producer and reader of ``"<series>#<metric>"`` goes through it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from stream_monitor.core import fields
from stream_monitor.core.aggregates import SeriesKeyer, WindowAccumulator
from stream_monitor.core.events import ServingEvent
from stream_monitor.core.series import parse_window
from stream_monitor.core.topology import Topology
from stream_monitor.core.windows import WindowSpec

HOSTILE = ["a|b", "x#y", "*", "#", "|", "", "ok", "\u00e9|\u00e8#x"]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_cleaned_value_survives_a_round_trip_through_a_field_name(value: str) -> None:
    values = ("m", fields.clean_value(value), "eu")
    series = fields.join_series(values)
    name = fields.field_name(series, "lat.total.3")
    back_series, metric = fields.split_field(name)
    assert (fields.split_series(back_series), metric) == (values, "lat.total.3")
    assert fields.series_of(name) == series


def test_the_first_metric_separator_ends_the_series_even_when_the_metric_holds_one() -> None:
    assert fields.split_field("m|eu#feat.a#b.3") == ("m|eu", "feat.a#b.3")


def test_cleaned_values_never_look_rolled_up_or_carry_a_separator() -> None:
    for value in HOSTILE:
        clean = fields.clean_value(value)
        assert clean != fields.ALL
        assert fields.SEP_SERIES not in clean and fields.SEP_METRIC not in clean


def test_the_accumulator_writes_what_the_window_parser_reads() -> None:
    topo = Topology(name="t", window=WindowSpec(60_000), segment_dims=("region",))
    acc = WindowAccumulator(topo)
    ev = ServingEvent(
        "r1", 1_764_086_400_123, "m#1", "v|1", "control", "*", {"region": "e#u"}, {"total": 80.0}
    )
    acc.add_serving("p/0", 0, ev)
    (delta,) = acc.take().values()
    (window,) = delta.windows.values()
    stats, _ = parse_window(window, n_dims=5)
    assert list(stats) == [("m_1", "v_1", "control", "_", "e_u")]
    assert stats[("m_1", "v_1", "control", "_", "e_u")].n == 1


def test_the_keyer_folds_with_the_codec_s_other() -> None:
    keyer = SeriesKeyer(("region",), max_values=1)
    keyer.key(("us",))
    assert keyer.key(("eu",)) == fields.OTHER


def _spells_a_separator(node: ast.AST) -> bool:
    """``"|".join(...)``, ``"#".join(...)`` or ``x.split("#")`` (and partitions) in source."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return False
    owner, method = node.func.value, node.func.attr
    if method == "join":
        return isinstance(owner, ast.Constant) and owner.value in ("|", "#")
    if method in ("split", "partition", "rpartition"):
        return any(isinstance(a, ast.Constant) and a.value == "#" for a in node.args)
    return False


def test_no_module_outside_the_codec_spells_the_separators() -> None:
    """The format lives in one module: a literal separator next to a split/join/partition elsewhere in
    core/ is a second copy of it."""
    core = Path(fields.__file__).parent
    offenders = [
        f"{path.name}:{node.lineno}"
        for path in sorted(core.rglob("*.py"))
        if path.name != "fields.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if _spells_a_separator(node)
    ]
    assert offenders == []
