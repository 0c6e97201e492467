"""Offline is the production path: ``replay`` routes each recorded line as the worker's topics carry it.

* the in-process harness puts a request's serving event and its engagement on the same partition number
  of their two topics (the late-label join's co-partitioned pair), deployments and datasets on theirs,
  and decodes each line once;
* ``replay`` of a recording made by ``simulate --out`` runs the late-label join: a canary recording's
  verdicts report CTR for both arms, and a ``ctr_drop_after_release`` recording raises ``release_ctr``
  naming the new version (before, every line went to one "replay" topic and no label was ever joined).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_monitor.cli.main import main
from stream_monitor.core import events
from stream_monitor.inprocess import UNROUTED_TOPIC, InProcessPipeline
from stream_monitor.sinks.base import ListSink
from stream_monitor.topology import load_topology

pytestmark = pytest.mark.unit

START = 1_764_028_800_000
TS = START + 5_000


def _line(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


SERVING = {
    "type": "serving",
    "request_id": "req-42",
    "ts": TS,
    "model": "home-ranker",
    "model_version": "v1",
    "arm": "control",
    "surface": "home",
    "segment": {"region": "eu"},
    "items": ["a", "b"],
    "scores": [0.5, 0.4],
    "latency_ms": {"total": 20.0},
}
CLICK = {"type": "engagement", "request_id": "req-42", "ts": TS + 900, "action": "click", "position": 0}
DEPLOY = {
    "type": "deployment",
    "ts": START,
    "model": "home-ranker",
    "model_version": "v1",
    "arm": "control",
    "reason": "release",
}


def _pipeline(partitions: int = 4) -> tuple[InProcessPipeline, ListSink]:
    sink = ListSink()
    return InProcessPipeline.build(
        load_topology(None), alerts=sink, deadletters=sink, partitions=partitions
    ), sink


def test_a_request_and_its_engagement_land_on_one_partition_number_of_their_own_topics() -> None:
    pipeline, sink = _pipeline()
    for doc in (DEPLOY, SERVING, CLICK):
        assert pipeline.feed_line(_line(doc)) == doc
    pipeline.step()
    assert sink.dead_letters == []
    counted = {tp.rsplit("/", 1)[0]: int(tp.rsplit("/", 1)[1]) for tp in pipeline.engine.committed_offsets}
    topics = pipeline.topic_of
    expected = pipeline.partition_of(b"req-42", 4)
    assert {t: counted[t] for t in (topics["serving"], topics["engagement"])} == {
        topics["serving"]: expected,
        topics["engagement"]: expected,
    }
    assert topics["deployment"] in counted
    # The join holds the request, paired with its click, waiting for maturity.
    assert pipeline.engine.labels is not None and pipeline.engine.labels.pending == 1
    assert pipeline.clock is not None and pipeline.clock.now_ms() == TS + 900


def test_lines_of_no_known_type_are_dead_lettered_with_their_reason() -> None:
    pipeline, sink = _pipeline()
    bad = [b"not json", b"[1, 2]", _line({"type": "click", "ts": TS}), _line({**SERVING, "items": "x"})]
    docs = [pipeline.feed_line(line) for line in bad]
    assert docs[:2] == [None, None]
    assert [d.reason for d in sink.dead_letters] == [
        "invalid_json",
        "invalid_json",
        "unknown_type",
        "invalid_field",
    ]
    # A serving event that fails validation was still routed to the serving topic, as in the worker.
    assert [d.topic for d in sink.dead_letters] == [UNROUTED_TOPIC] * 3 + [pipeline.topic_of["serving"]]


def test_each_line_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline, _ = _pipeline()
    calls: list[int] = []
    loads: Callable[[bytes], Any] = orjson.loads

    def counting(raw: bytes) -> Any:
        calls.append(1)
        return loads(raw)

    monkeypatch.setattr(events.orjson, "loads", counting)
    for doc in (DEPLOY, SERVING, CLICK):
        pipeline.feed_line(_line(doc))
    assert len(calls) == 3


def _simulate(path: Path, *spec: str) -> None:
    common = ["--rate", "15", "--duration", "2400", "--speed", "0", "--seed", "3"]
    start = ["--start-ms", str(START), "--start-hour", "12"]
    assert main(["simulate", *common, *start, *spec, "--out", str(path)]) == 0


def _replay(recording: Path, out: Path) -> list[dict[str, Any]]:
    assert main(["replay", str(recording), "--out", str(out)]) == 0
    return [orjson.loads(line) for line in out.read_bytes().splitlines()]


def test_replay_of_a_canary_recording_reports_ctr_for_both_arms(tmp_path: Path) -> None:
    recording = tmp_path / "canary.jsonl"
    _simulate(recording, "--canary", "0.5")
    docs = _replay(recording, tmp_path / "out.jsonl")
    verdicts = [d for d in docs if d.get("schema") == "stream-monitor.health/v1" and d["kind"] == "canary"]
    assert verdicts
    ctr = next(m for m in verdicts[-1]["metrics"] if m["name"] == "ctr")
    # 40 minutes at 15 requests a second: the first 25 minutes of impressions have matured.
    assert ctr["classification"] != "NODATA", ctr["detail"]
    assert ctr["n_candidate"] > 1_000 and ctr["n_baseline"] > 1_000
    assert "matured impressions" not in ctr["detail"]


def test_label_signals_fire_in_replay_on_a_release_with_a_lower_ctr(tmp_path: Path) -> None:
    recording = tmp_path / "release.jsonl"
    _simulate(recording, "--incident", "ctr_drop_after_release:onset=600,version=v9")
    docs = _replay(recording, tmp_path / "out.jsonl")
    # The previous version's labels give the baseline (5 matured windows before the release at 10
    # minutes); the release's first label windows mature 15 minutes after they end.
    fired = [d for d in docs if d.get("status") == "firing"]
    assert {(d["signal"], d["key"]["model_version"]) for d in fired} == {("release_ctr", "v9")}
    assert any(d["metric"] == "ctr" for d in fired)
