"""Redis TraceStore: traces under a TTL, a capped index per slice, one script call per batch.

The layout and bounds are those of :mod:`stream_monitor.state.traces` (keys in ``traces.lua``). A batch
is one ``EVALSHA`` (one round trip however many traces and engagement events it holds); reads are
pipelined. Writes are best-effort: the engine logs and drops a batch that cannot be written rather than
hold back the counting.

In a Redis Cluster the traces have a slot of their own (hash tag ``{<prefix>/traces}``): a batch's keys
must share one slot, but nothing ties them to the counting state's slot (docs/redis-ha.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from stream_monitor.core.topology import TraceRule
from stream_monitor.core.traces import TraceBatch
from stream_monitor.state.base import StoreUnavailable
from stream_monitor.state.redis_connect import (
    TRANSIENT,
    RedisClient,
    is_cluster,
    key_prefix,
    register_script,
)
from stream_monitor.state.redis_store import RedisStore

__all__ = ["RedisTraceStore"]


def _wall_ms() -> int:
    return int(time.time() * 1000)


class RedisTraceStore:
    """A TraceStore in Redis beside the state store (same client and ``prefix``; in a cluster, its own
    hash tag: ``self.prefix`` is the one used)."""

    def __init__(
        self,
        client: RedisClient,
        prefix: str = "sm",
        ttl_ms: int = 86_400_000,
        per_slice: int = 100,
        max_engagement: int = 20,
    ) -> None:
        self.client = client
        self.prefix = key_prefix(prefix, is_cluster(client), part="traces")
        self.keep_ms = ttl_ms
        self.per_slice = per_slice
        self.max_engagement = max_engagement
        self._put = register_script(client, "traces.lua")
        self.round_trips = 0

    @classmethod
    def beside(cls, store: RedisStore, rule: TraceRule) -> RedisTraceStore:
        """The trace store of the topology's ``traces`` rule in the state store's Redis, under its prefix."""
        return cls(store.client, store.app_prefix, rule.ttl_ms, rule.per_slice, rule.max_engagement)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.round_trips += 1
        try:
            return fn(*args, **kwargs)
        except TRANSIENT as exc:
            raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc

    def put(self, batch: TraceBatch) -> None:
        if not batch:
            return
        args: list[Any] = [
            self.prefix,
            self.keep_ms,
            self.per_slice,
            self.max_engagement,
            len(batch.traces),
        ]
        for rid, series, ts, doc in batch.traces:
            args.extend((rid, series, ts, doc))
        for rid, ts, doc in batch.engagement:
            args.extend((rid, ts, doc))
        # The declared key routes the call to the slot's node in a cluster (the script builds its own).
        self._call(self._put, keys=[f"{self.prefix}:trs"], args=args)

    def pin(self, request_ids: Sequence[str]) -> None:
        if not request_ids:
            return
        pipe = self.client.pipeline(transaction=False)
        key = f"{self.prefix}:trp"
        pipe.zadd(key, {rid: _wall_ms() for rid in request_ids})
        pipe.pexpire(key, self.keep_ms)
        self._call(pipe.execute)

    def get(self, request_id: str) -> tuple[bytes, list[bytes]] | None:
        pipe = self.client.pipeline(transaction=True)  # the trace and its engagement as one snapshot
        pipe.get(f"{self.prefix}:tr:{request_id}")
        pipe.zrange(f"{self.prefix}:tre:{request_id}", 0, -1)
        doc, engagement = self._call(pipe.execute)
        if doc is None:
            return None
        return bytes(doc), [bytes(e) for e in engagement]

    def ttl_ms(self, request_id: str) -> int | None:
        left = int(self._call(self.client.pttl, f"{self.prefix}:tr:{request_id}"))
        return left if left > 0 else None

    def slices(self) -> list[str]:
        return sorted(s.decode() for s in self._call(self.client.zrange, f"{self.prefix}:trs", 0, -1))

    def recent(self, series: Sequence[str], limit: int, until_ms: int | None = None) -> list[tuple[str, int]]:
        if not series or limit <= 0:
            return []
        top: Any = "+inf" if until_ms is None else f"({until_ms}"
        pipe = self.client.pipeline(transaction=False)
        for s in series:
            pipe.zrevrangebyscore(f"{self.prefix}:tri:{s}", top, "-inf", start=0, num=limit, withscores=True)
        found = sorted(
            ((rid.decode(), int(ts)) for rows in self._call(pipe.execute) for rid, ts in rows),
            key=lambda x: (-x[1], x[0]),
        )
        # An index may name a trace that has expired since (a slice quiet for longer than the TTL).
        candidates = found[: limit * 3]
        pipe = self.client.pipeline(transaction=False)
        for rid, _ts in candidates:
            pipe.exists(f"{self.prefix}:tr:{rid}")
        alive = self._call(pipe.execute) if candidates else []
        return [c for c, ok in zip(candidates, alive, strict=True) if ok][:limit]
