"""Context capture, pure part: sampler determinism and rate, caps, truncation, encoding, bad bytes."""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_monitor.cli.main import build_parser
from stream_monitor.cli.trace import render_trace
from stream_monitor.cli.trace import run as run_trace
from stream_monitor.core.events import EngagementEvent, ServingEvent, parse_event
from stream_monitor.core.topology import TraceRule
from stream_monitor.core.traces import (
    TraceBatch,
    TraceCapture,
    TraceFormatError,
    TraceRecord,
    TraceSampler,
    decode_trace,
    encode_engagement,
    encode_trace,
    fallback_pattern,
    matching_slices,
)
from stream_monitor.state.traces import MemoryTraceStore, example_ids, load_trace, recent_traces
from stream_monitor.topology import TopologyError, parse_topology

pytestmark = pytest.mark.unit

TS = 1_764_086_400_000
DIMS = ("model", "model_version", "arm", "surface", "platform", "region", "tenure")
SERIES = "home-ranker|v1|control|home|ios|eu|new"


def serving(rid: str = "r1", ts: int = TS, **extra: Any) -> ServingEvent:
    doc: dict[str, Any] = {
        "type": "serving",
        "request_id": rid,
        "ts": ts,
        "model": "home-ranker",
        "model_version": "v1",
        "arm": "control",
        "surface": "home",
        "segment": {"platform": "ios", "region": "eu", "tenure": "new"},
        "latency_ms": {"total": 84.2, "retrieval": 21.0, "ranking": 25.1},
        "funnel": {"retrieved": 1200, "ranked": 200, "returned": 3},
        "sources": {"collab": 600, "trending": 300},
        "items": [{"id": f"s{i}", "score": 1 - i / 10, "source": "collab"} for i in range(3)],
        "features": {"watch_minutes_7d": 312.0, "country": "US", "email_domain": "example.com"},
        "feature_ts": {"watch_minutes_7d": ts - 6_000_000},
    }
    doc.update(extra)
    event = parse_event(orjson.dumps(doc))
    assert isinstance(event, ServingEvent)
    return event


# --- sampler ----------------------------------------------------------------------------------------


def test_sampling_is_a_pure_function_of_the_request_id() -> None:
    rule = TraceRule(sample_rate=0.1)
    ids = [f"req-{i}" for i in range(2000)]
    first = [TraceSampler(rule, 60_000).sampled(r) for r in ids]
    # Another worker, a restart, in another order: the same decisions.
    other = TraceSampler(rule, 60_000)
    assert [other.sampled(r) for r in reversed(ids)] == first[::-1]


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5])
def test_sampled_share_matches_the_rate(rate: float) -> None:
    sampler = TraceSampler(TraceRule(sample_rate=rate), 60_000)
    n = 100_000
    hits = sum(sampler.sampled(f"{i:016x}") for i in range(n))
    # Binomial: within 5 standard deviations.
    assert abs(hits - rate * n) < 5 * math.sqrt(n * rate * (1 - rate)), hits


def test_a_lower_rate_samples_a_subset() -> None:
    low, high = TraceSampler(TraceRule(sample_rate=0.05), 1), TraceSampler(TraceRule(sample_rate=0.2), 1)
    ids = [f"x{i}" for i in range(5000)]
    assert {r for r in ids if low.sampled(r)} <= {r for r in ids if high.sampled(r)}
    assert not any(TraceSampler(TraceRule(sample_rate=0.0), 1).sampled(r) for r in ids)


def test_per_slice_cap_keeps_a_hot_slice_from_crowding_out_the_others() -> None:
    rule = TraceRule(sample_rate=1.0, per_slice_per_window=3, per_window=10)
    sampler = TraceSampler(rule, 60_000)
    hot = [sampler.admit("hot", TS + i) for i in range(100)]
    cold = [sampler.admit(f"cold{i}", TS + 100 + i) for i in range(5)]
    assert hot.count(True) == 3 and all(cold)
    # The per-window total caps the many small slices too, and a new window starts afresh.
    more = [sampler.admit(f"c{i}", TS + 200 + i) for i in range(10)]
    assert more.count(True) == 2  # 3 + 5 + 2 = 10
    assert sampler.admit("hot", TS + 60_000)
    assert sampler.capped == 97 + 8


def test_sampler_memory_is_bounded_to_a_few_windows() -> None:
    sampler = TraceSampler(TraceRule(sample_rate=1.0), 60_000)
    for w in range(500):
        for s in range(20):
            sampler.admit(f"s{s}", TS + w * 60_000)
    assert len(sampler._counts) <= TraceSampler.KEEP_WINDOWS + 1
    # A request from long before the windows kept is not traced (and does not re-open its window).
    assert not sampler.admit("s0", TS)
    assert len(sampler._counts) <= TraceSampler.KEEP_WINDOWS + 1


def test_capture_takes_engagement_of_sampled_ids_only() -> None:
    rule = TraceRule(sample_rate=0.3)
    capture = TraceCapture(rule, 60_000)
    ids = [f"e{i}" for i in range(1000)]
    kept = [capture.engagement(EngagementEvent(r, TS, "click")) for r in ids]
    assert kept == [capture.sampler.sampled(r) for r in ids]
    assert 200 < sum(kept) < 400


def test_capture_pending_is_bounded() -> None:
    capture = TraceCapture(
        TraceRule(sample_rate=1.0, per_window=10_000, per_slice_per_window=10_000), 60_000, 50
    )
    for i in range(80):
        capture.serving(serving(f"r{i}"), SERIES)
    batch = capture.take()
    assert len(batch.traces) == 50 and capture.dropped == 30


# --- the record -------------------------------------------------------------------------------------


def test_record_holds_the_request_story() -> None:
    record = TraceRecord.from_serving(serving(), SERIES, TraceRule())
    assert record.key == {"model": "home-ranker", "model_version": "v1", "arm": "control", "surface": "home"}
    assert record.segment == {"platform": "ios", "region": "eu", "tenure": "new"}
    assert record.sources == {"collab": 600, "trending": 300}
    assert record.features["watch_minutes_7d"] == 312.0
    assert record.feature_age_ms == {"watch_minutes_7d": 6_000_000}
    assert [i["id"] for i in record.slate] == ["s0", "s1", "s2"] and record.slate[0]["score"] == 1.0
    assert record.latency_ms["ranking"] == 25.1 and not record.fallback and not record.empty


def test_privacy_drop_features_and_feature_values_off() -> None:
    rule = TraceRule(drop_features=("email_domain",))
    record = TraceRecord.from_serving(serving(), SERIES, rule)
    assert "email_domain" not in record.features and record.features["country"] == "US"
    ages_only = TraceRecord.from_serving(serving(), SERIES, TraceRule(feature_values=False))
    assert ages_only.features == {} and ages_only.feature_age_ms == {"watch_minutes_7d": 6_000_000}
    assert b"example.com" not in encode_trace(record, rule)


def test_long_lists_and_strings_are_truncated() -> None:
    items = [{"id": "x" * 500, "score": i, "source": "s"} for i in range(100)]
    features = {f"f{i}": "v" * 1000 for i in range(200)}
    event = serving(items=items, features=features, funnel={"returned": 100})
    rule = TraceRule(max_items=10, max_features=20)
    record = TraceRecord.from_serving(event, SERIES, rule)
    assert len(record.slate) == 10 and record.slate_len == 100
    assert len(record.features) == 20
    assert all(len(i["id"]) <= 128 for i in record.slate)
    assert {"slate", "features"} <= set(record.truncated)


def test_encoded_trace_fits_max_bytes() -> None:
    features = {f"feature_{i:03d}": "v" * 120 for i in range(64)}
    rule = TraceRule(max_bytes=2048, max_items=20)
    event = serving(features=features, items=[{"id": "i" * 100, "score": 0.5}] * 20)
    raw = encode_trace(TraceRecord.from_serving(event, SERIES, rule), rule)
    assert len(raw) <= 2048
    back = decode_trace(raw)
    assert back.request_id == "r1" and back.key["model"] == "home-ranker"
    assert "features" in back.truncated


def test_nested_and_odd_feature_values_do_not_break_capture() -> None:
    event = serving(features={"nested": {"a": [1, 2]}, "nan_like": "x"})
    capture = TraceCapture(TraceRule(sample_rate=1.0), 60_000)
    assert capture.serving(event, SERIES)
    record = decode_trace(capture.take().traces[0][3])
    assert record.features["nested"] == "<dict of 1>"
    # A value the encoder refuses (beyond 64 bits; the parser never yields one, a producer library
    # might): no trace of that request, no exception.
    event.features["big"] = 2**70
    assert not capture.serving(replace(event, request_id="r2"), SERIES) and capture.oversized == 1


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)


@settings(max_examples=60, deadline=None)
@given(
    features=st.dictionaries(st.text(min_size=1, max_size=20), json_scalars, max_size=10),
    scores=st.lists(st.floats(-10, 10, allow_nan=False), max_size=30),
    fallback=st.booleans(),
)
def test_encoding_round_trip(features: dict[str, Any], scores: list[float], fallback: bool) -> None:
    event = serving(
        features=features,
        items=[{"id": f"i{n}", "score": s} for n, s in enumerate(scores)],
        fallback=fallback,
        funnel={},
    )
    rule = TraceRule()
    record = TraceRecord.from_serving(event, SERIES, rule)
    assert decode_trace(encode_trace(record, rule)) == record


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x80\x04\x95pickle",
        b"[1, 2]",
        b'{"v": 2, "request_id": "r1"}',
        b'{"v": 1, "request_id": "r1"}',
        b'{"v": 1, "request_id": "r1", "ts": "yesterday", "series": "s", "key": {}}',
    ],
)
def test_bad_bytes_are_a_format_error(raw: bytes) -> None:
    with pytest.raises(TraceFormatError):
        decode_trace(raw)


def test_bad_engagement_entries_are_skipped() -> None:
    rule = TraceRule()
    raw = encode_trace(TraceRecord.from_serving(serving(), SERIES, rule), rule)
    good = encode_engagement(EngagementEvent("r1", TS + 2000, "click", "s0", 0))
    record = decode_trace(raw, [b"garbage", good, b'{"ts": "x"}'])
    assert [e["action"] for e in record.engagement] == ["click"]


# --- slices -----------------------------------------------------------------------------------------


def test_matching_and_fallback_slices() -> None:
    stored = [SERIES, "home-ranker|v1|canary|home|ios|us|new", "home-ranker|v2|control|home|web|eu|old"]
    assert matching_slices(stored, DIMS, {"model": "home-ranker", "region": "eu", "tenure": "*"}) == [
        SERIES,
        "home-ranker|v2|control|home|web|eu|old",
    ]
    assert matching_slices(stored, DIMS, {"model": "other-model"}) == []
    assert matching_slices(["a|b"], DIMS, {}) == []  # a series of another topology is never matched
    assert fallback_pattern({"model": "*", "region": "eu"}) is None


# --- the store helpers on the memory store -----------------------------------------------------------


def stored(events: list[ServingEvent], rule: TraceRule | None = None) -> MemoryTraceStore:
    rule = rule or TraceRule(sample_rate=1.0, per_slice_per_window=100)
    capture = TraceCapture(rule, 60_000)
    for e in events:
        capture.serving(e, "|".join([e.model, e.model_version, e.arm, e.surface, *e.segment.values()]))
    store = MemoryTraceStore(now=lambda: TS)
    store.put(capture.take())
    return store


def test_example_ids_prefer_the_slice_then_fall_back_to_model_and_version() -> None:
    eu = [serving(f"eu{i}", TS + i) for i in range(4)]
    us = serving("us0", TS + 10, segment={"platform": "ios", "region": "us", "tenure": "new"})
    store = stored([*eu, us])
    key = {"model": "home-ranker", "model_version": "v1", "arm": "control", "surface": "home",
           "platform": "*", "region": "eu", "tenure": "*"}  # fmt: skip
    assert example_ids(store, DIMS, key, limit=3) == ["eu3", "eu2", "eu1"]
    assert example_ids(store, DIMS, key, limit=3, until_ms=TS + 2) == ["eu1", "eu0"]
    # No trace in region=ap: the model/version's newest instead.
    assert example_ids(store, DIMS, {**key, "region": "ap"}, limit=2) == ["us0", "eu3"]
    assert example_ids(store, DIMS, {**key, "model": "nobody"}, limit=2) == []


def test_unreadable_traces_in_the_store_are_skipped() -> None:
    rule = TraceRule(sample_rate=1.0)
    good = encode_trace(TraceRecord.from_serving(serving("good"), SERIES, rule), rule)
    store = MemoryTraceStore(now=lambda: TS)
    store.put(TraceBatch([("bad", SERIES, TS + 5, b"\x80not json"), ("good", SERIES, TS, good)]))
    assert load_trace(store, "bad") is None
    assert [r.request_id for r in recent_traces(store, DIMS, {"model": "home-ranker"}, 5)] == ["good"]


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["trace", *argv])


def test_trace_command_prints_lists_and_reports_missing(capsys: pytest.CaptureFixture[str]) -> None:
    store = stored([serving("r1"), serving("r2", TS + 5)])
    rule = TraceRule()
    click = EngagementEvent("r1", TS + 3000, "click", "s1", 1)
    store.put(TraceBatch([], [("r1", click.ts, encode_engagement(click))]))
    assert run_trace(_args("r1"), store) == 0
    out = capsys.readouterr().out
    assert "request r1" in out and "collab" in out and "watch_minutes_7d" in out and "click item s1" in out
    assert run_trace(_args("r1", "--json"), store) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["request_id"] == "r1" and doc["engagement"][0]["position"] == 1
    assert run_trace(_args("--model", "home-ranker", "--segment", "region=eu", "--limit", "1"), store) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("TIME") and "r2" in listing[1] and len(listing) == 2
    assert run_trace(_args("nope"), store) == 1
    assert "no stored trace of request 'nope'" in capsys.readouterr().err
    assert run_trace(_args("--model", "m", "--segment", "colour=red"), store) == 2
    assert run_trace(_args(), store) == 2
    assert render_trace(decode_trace(encode_trace(TraceRecord.from_serving(serving(), SERIES, rule), rule)))


def test_topology_traces_section() -> None:
    topology = parse_topology({"traces": {"sample_rate": 0.2, "ttl": "2h", "drop_features": ["x"]}})
    assert topology.traces == replace(TraceRule(), sample_rate=0.2, ttl_ms=7_200_000, drop_features=("x",))
    with pytest.raises(TopologyError, match="unknown keys"):
        parse_topology({"traces": {"sampel_rate": 0.2}})
    with pytest.raises(TopologyError, match="sample_rate"):
        parse_topology({"traces": {"sample_rate": 1.5}})
    assert not parse_topology({"traces": {"enabled": False}}).traces.active


@pytest.mark.parametrize("make_id", [lambda i: f"{i:016x}", lambda i: f"req-{i}", lambda i: str(i * 7919)])
def test_sampling_is_uniform_for_id_shapes_producers_use(make_id: Any) -> None:
    sampler = TraceSampler(TraceRule(sample_rate=0.05), 60_000)
    n = 40_000
    # Sequential ids differ in few characters: the hash must still spread them.
    for lo in range(0, n, 10_000):
        hits = sum(sampler.sampled(make_id(i)) for i in range(lo, lo + 10_000))
        assert abs(hits - 500) < 5 * math.sqrt(10_000 * 0.05 * 0.95), (lo, hits)


class _DownStore(MemoryTraceStore):
    def get(self, request_id: str) -> tuple[bytes, list[bytes]] | None:
        raise ConnectionError("Redis is unavailable")


def test_trace_command_reports_an_unreachable_store(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_trace(_args("r1"), _DownStore()) == 75  # EX_TEMPFAIL: Redis does not answer
    assert "cannot read the traces from Redis (Redis is unavailable)" in capsys.readouterr().err
