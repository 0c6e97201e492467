"""``Engine.ingest_batch`` (the worker's path: a fetch's records per partition) counts exactly what
``Engine.ingest`` counts message by message, and Faust's acks for a run of offsets match its own.

Checked on a mixed stream: simulated serving and engagement events, malformed messages, NDJSON batches
(with a bad line), tombstones and offsets seen again (a seek back), cut into runs of several sizes.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import faust
import orjson
import pytest

from stream_monitor.core.clock import ManualClock
from stream_monitor.engine import NDJSON_HEADERS, Engine, EngineOptions, Record
from stream_monitor.runtime.delivery import BatchDeliveryConsumer
from stream_monitor.sim import TrafficSimulator
from stream_monitor.sim.traffic import SimConfig
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import load_topology

START = 1_764_086_400_000


def _engine() -> tuple[Engine, MemoryStore, ListSink]:
    store, sink = MemoryStore(), ListSink()
    engine = Engine(
        load_topology(),
        store,
        sink,
        sink,
        ManualClock(START + 900_000),
        options=EngineOptions(auto_claim=True),
    )
    return engine, store, sink


def _stream(seed: int) -> dict[str, list[Record]]:
    """Per topic, its messages in offset order, with bad ones and NDJSON batches mixed in."""
    rng = random.Random(seed)
    sim = TrafficSimulator(seed, START, 20, [], SimConfig(diurnal_start_hour=12.0))
    out: dict[str, list[Record]] = {"serving": [], "engagement": []}
    for kind, key, event in sim.events(300):
        if kind not in out:
            continue
        records = out[kind]
        value = orjson.dumps(event)
        roll = rng.random()
        if roll < 0.03:
            value = b"{not json"
        elif roll < 0.04:
            value = orjson.dumps({**event, "ts": "yesterday"})
        elif roll < 0.05:
            records.append(Record(len(records), key, None, START))  # a tombstone
            continue
        elif roll < 0.08:
            batch = b"\n".join([value, b"[1, 2]", value.replace(b'"request_id"', b'"rid"'), b""])
            records.append(Record(len(records), key, batch, START, NDJSON_HEADERS))
            continue
        records.append(Record(len(records), key, value, START + len(records)))
    return out


def _state(engine: Engine, store: MemoryStore, sink: ListSink) -> dict[str, Any]:
    engine.flush()
    return {
        "totals": store.totals(),
        "skipped": engine._skipped,
        "windows": {w: store.read_window(w) for w in store.open_windows()},
        "dead": sorted((d.topic, d.partition, d.offset, d.reason) for d in sink.dead_letters),
    }


@pytest.mark.parametrize("seed", [1, 2])
def test_runs_count_what_single_messages_count(seed: int) -> None:
    stream = _stream(seed)
    # Message by message, with a seek back in the middle of each topic.
    one, one_store, one_sink = _engine()
    for kind, records in stream.items():
        half = len(records) // 2
        for record in [*records[:half], *records[half - 5 : half], *records[half:]]:
            one.ingest(
                kind,
                f"recs.{kind}",
                0,
                record.offset,
                record.key,
                record.value,
                record.timestamp,
                ndjson=bool(record.headers),
            )
    # The same as runs of random sizes, the seek back as a run of its own.
    runs, runs_store, runs_sink = _engine()
    rng = random.Random(seed)
    for kind, records in stream.items():
        half = len(records) // 2
        pieces = [records[:half], records[half - 5 : half], records[half:]]
        for piece in pieces:
            at = 0
            while at < len(piece):
                size = rng.choice([1, 3, 64, 500])
                runs.ingest_batch(kind, f"recs.{kind}", 0, piece[at : at + size])
                at += size
    expected = _state(one, one_store, one_sink)
    assert sum(expected["skipped"].values()) == 10
    assert expected["totals"]["rejected"] > 0
    assert _state(runs, runs_store, runs_sink) == expected


def test_a_run_of_a_partition_another_worker_owns_is_left_alone() -> None:
    engine, store, _sink = _engine()
    engine.options = EngineOptions(auto_claim=False)
    records = _stream(3)["serving"][:20]
    engine.ingest_batch("serving", "recs.serving", 0, records)
    engine.flush()
    assert store.totals().get("consumed", 0) == 0


def test_messages_of_a_commit_being_written_are_skipped_when_delivered_again() -> None:
    # Stream delivery: one agent's commit is written on a thread while another agent ingests on, and a
    # seek back can deliver again what that commit holds (the accumulator no longer has its offsets).
    engine, store, _sink = _engine()
    records = _stream(4)["serving"][:40]
    engine.ingest_batch("serving", "recs.serving", 0, records[:30])
    pending = engine.prepare_commit()
    assert pending is not None
    engine.ingest_batch("serving", "recs.serving", 0, records[20:])  # 20-29 are in the commit
    engine.finish_commit(engine.commit_pending(pending), pending)
    once, once_store, _ = _engine()
    once.ingest_batch("serving", "recs.serving", 0, records)
    once.flush()
    engine.flush()
    assert engine._skipped == {"recs.serving": 10}
    assert store.totals() == once_store.totals()


def test_acking_a_run_of_offsets_is_faust_acking_each_message() -> None:
    def acked_state(bulk: bool) -> tuple[Any, ...]:
        asyncio.set_event_loop(asyncio.new_event_loop())
        app = faust.App(f"ack-{bulk}", broker="kafka://127.0.0.1:1", web_enabled=False, web_bind="127.0.0.1")
        topic = app.topic("t", value_serializer="raw")
        app.topics.add(topic)
        # What the worker's subscription does: acks count for "t". Nothing connects to the broker.
        app.loop.run_until_complete(app.topics._update_indices())  # type: ignore[attr-defined]

        async def nothing(_: Any) -> None:
            return None

        consumer = BatchDeliveryConsumer(
            app.transport,
            callback=nothing,
            on_partitions_revoked=nothing,
            on_partitions_assigned=nothing,
            batch_topics={"t"},
            deliver=nothing,
        )
        tp = faust.types.TP("t", 0)
        consumer._committed_offset[tp] = 3
        offsets = [1, 2, 3, 4, 5, 5, 7, 8]  # below the committed offset, a repeat, a gap
        if bulk:
            assert consumer.ack_offsets(tp, offsets[:4]) == 2
            assert consumer.ack_offsets(tp, offsets[4:]) == 3
        else:
            for offset in offsets:
                message = faust.types.Message("t", 0, offset, 0.0, 0, [], None, b"", None, tp=tp)
                consumer.ack(message)
        state = (
            sorted(consumer._acked[tp]),
            sorted(consumer._acked_index[tp]),
            consumer._n_acked,
            consumer._new_offset(tp),
        )
        # The app's and the consumer thread's loops (nothing ever ran on the thread's).
        for loop in {
            id(app.loop): app.loop,
            id(consumer._thread.thread_loop): consumer._thread.thread_loop,
        }.values():
            loop.close()
        asyncio.set_event_loop(None)
        return state

    bulk, each = acked_state(True), acked_state(False)
    assert bulk == each
    assert bulk[0] == [3, 4, 5, 7, 8] and bulk[3] == 6
