"""Honest resolution, once for every signal (core/alerts.py ``AlertBook``).

* a floor alert (observed below its threshold) never resolves while the value stays under the threshold
  it opened at, even when the window no longer "breaches" (its baseline moved, or too little evidence);
  a ceiling alert likewise stays open above threshold x clear_ratio;
* an alert resolves only after ``clear_windows`` evaluated windows in a row inside its band; a breach or
  a value outside the band starts the count over; a window with no value neither counts nor resets;
* the count is part of the checkpoint (a restart does not forget it);
* ``alerts.clear_windows`` is a topology setting.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from stream_monitor.core.alerts import Alert, AlertBook, DetectorState
from stream_monitor.core.series import Breach
from stream_monitor.topology import TopologyError, load_topology

pytestmark = pytest.mark.unit

DIMS = ("model", "surface")
KEY = ("home-ranker", "home")
MINUTE = 60_000

# "distinct items per window" below its floor of 20 (a diversity collapse), and an error-rate ceiling.
FLOOR = Breach("diversity", "distinct_items", KEY, 3.0, 40.0, 20.0, "items", "warning", "3 distinct items")
CEILING = Breach("error_rate", "ratio", KEY, 0.3, 0.01, 0.05, "ratio", "critical", "30 % errors")


def _book(clear_windows: int = 1) -> AlertBook:
    return AlertBook(DIMS, "t", {"diversity": 0.8, "error_rate": 0.8}, clear_windows=clear_windows)


def _run(
    book: AlertBook,
    windows: list[tuple[list[Breach], dict[Breach, float]]],
    state: DetectorState | None = None,
) -> list[tuple[int, str]]:
    """(window index, status) of every alert the book emits over ``windows`` of (breaches, values)."""
    state = state or DetectorState()
    out: list[tuple[int, str]] = []
    for i, (breaches, values) in enumerate(windows):
        evaluated = {b.identity: v for b, v in values.items()}
        emitted = book.update(state, breaches, (i * MINUTE, (i + 1) * MINUTE), i * MINUTE + 1, evaluated)
        out.extend((i, a.status) for a in emitted)
    return out


def test_a_floor_alert_stays_open_while_the_value_is_under_the_threshold_it_opened_at() -> None:
    # The window stops breaching (its baseline fell with it) at 16 items, still under the floor of 20.
    windows = [([FLOOR], {FLOOR: 3.0}), ([], {FLOOR: 16.0}), ([], {FLOOR: 16.0}), ([], {FLOOR: 22.0})]
    assert _run(_book(), windows) == [(0, "firing"), (3, "resolved")]


def test_a_ceiling_alert_stays_open_above_its_clearing_level() -> None:
    # 0.045 is under the threshold (0.05) but above threshold x clear_ratio (0.04): no flap at the edge.
    windows = [([CEILING], {CEILING: 0.3}), ([], {CEILING: 0.045}), ([], {CEILING: 0.03})]
    assert _run(_book(), windows) == [(0, "firing"), (2, "resolved")]


def test_it_resolves_after_clear_windows_in_a_row_and_a_breach_starts_the_count_over() -> None:
    inside = {CEILING: 0.01}
    windows = [
        ([CEILING], {CEILING: 0.3}),
        ([], inside),  # 1 of 2
        ([CEILING], {CEILING: 0.2}),  # breaching again: over
        ([], inside),  # 1
        ([], {CEILING: 0.045}),  # outside the band: over
        ([], inside),  # 1
        ([], {}),  # not evaluated (too little data): neither counts nor resets
        ([], inside),  # 2: resolves
    ]
    assert _run(_book(clear_windows=2), windows) == [(0, "firing"), (7, "resolved")]


def test_the_clearing_count_survives_a_checkpoint() -> None:
    book, state = _book(clear_windows=3), DetectorState()
    _run(book, [([CEILING], {CEILING: 0.3}), ([], {CEILING: 0.01}), ([], {CEILING: 0.01})], state)
    restored = DetectorState.from_json_dict(orjson.loads(orjson.dumps(state.to_json_dict())))
    emitted = book.update(restored, [], (3 * MINUTE, 4 * MINUTE), 1, {CEILING.identity: 0.01})
    assert [a.status for a in emitted] == ["resolved"]
    # The count is bookkeeping, not part of the alert a consumer reads.
    assert set(emitted[0].to_dict()) == set(Alert.__dataclass_fields__)


def test_clear_windows_is_a_topology_setting(tmp_path: Path) -> None:
    assert load_topology(None).alerts.clear_windows == 2
    path = tmp_path / "t.yaml"
    path.write_text("name: t\nwindow: {size: 60s}\nalerts: {clear_windows: 4}\n")
    assert load_topology(path).alerts.clear_windows == 4
    path.write_text("name: t\nwindow: {size: 60s}\nalerts: {clear_after: 4}\n")
    with pytest.raises(TopologyError, match="alerts: unknown keys"):
        load_topology(path)
