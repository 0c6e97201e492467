"""Redis StateStore: window sums in hashes, offsets and epochs beside them, changed only by Lua scripts.

Every commit is one ``EVALSHA`` whatever the batch size (never a round trip per event); the script checks
each partition's epoch and offset and applies or refuses its delta as a unit. Keys, under ``prefix``:

``:epoch`` ``:offset`` ``:maxts`` ``:seen`` ``:hw``  hashes keyed by partition (``topic/partition``)
``:win:<start>``  hash ``"<series>#<metric>" -> sum`` for one window (expires ``window_ttl_s`` after close)
``:windows``  sorted set of open window starts;  ``:closed_before``  first start still open
``:detector``  detector checkpoint (versioned JSON, never pickle);  ``:totals``  message counters
``:deploy:<model>``  latest deployment record per arm;  ``:lease:<name>``  closer lease
``:history:<model>``  list of the model's deployment records in commit order (newest HISTORY_LIMIT)
``:verdict:<model>``  hash key -> verdict document;  ``:verdict_ts:<model>``  sorted set key -> emitted_at
``:datasets``  newest arrival record per dataset;  ``:datasets_ts``  its event ts (for "newest" in Lua)
``:join:<group>``  pending label-join entries by request-id hash;  ``:jm:<group>``  matured ids per window
``:winlog``  sorted set of closed windows' diagnosis log entries scored by window start (newest
``window_log_limit``; written by close.lua with the close, see core/window_log.py)
``:lab:<start>``  hash ``"<series>#<metric>" -> sum`` of one label window (expires like window sums)

In a Redis Cluster the prefix is a hash tag (``{sm}``, see ``redis_connect.key_prefix``): one commit
adds to window hashes that every partition shares, so all of an app's keys live in one slot, and each
script call declares one key of that slot (``KEYS[1]``) for the client to route it. docs/redis-ha.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from stream_monitor.core.aggregates import PartitionDelta
from stream_monitor.core.labels import JoinDelta
from stream_monitor.core.windows import PartitionProgress
from stream_monitor.state.base import (
    HISTORY_LIMIT,
    VERDICTS_PER_MODEL,
    WINDOW_LOG_LIMIT,
    CommitResult,
    PartitionClaim,
    StoreUnavailable,
)
from stream_monitor.state.redis_connect import (
    TRANSIENT,
    RedisClient,
    connect,
    is_cluster,
    key_prefix,
    register_script,
)

__all__ = ["RedisStore"]


class RedisStore:
    """A StateStore in Redis: one server, a Sentinel-watched primary or a cluster (``redis_connect``).

    All keys of one app share ``prefix`` (in a cluster, as a hash tag: ``self.prefix`` is the one used).
    """

    def __init__(
        self,
        client: RedisClient,
        prefix: str = "sm",
        window_ttl_s: int = 86_400,
        window_log_limit: int = WINDOW_LOG_LIMIT,
    ) -> None:
        if window_log_limit < 0:
            raise ValueError(f"window_log_limit must be >= 0 (0: keep no log), not {window_log_limit}")
        self.client = client
        self.app_prefix = prefix
        self.prefix = key_prefix(prefix, is_cluster(client))
        # Scripts build their key names from ARGV; this declared key only routes the call in a cluster.
        self._route = [f"{self.prefix}:epoch"]
        self.window_ttl_s = window_ttl_s
        self.window_log_limit = window_log_limit
        self._claim = register_script(client, "claim.lua")
        self._commit = register_script(client, "commit.lua")
        self._close = register_script(client, "close.lua")
        self._lease = register_script(client, "lease.lua")
        self._verdict = register_script(client, "verdict.lua")
        self.round_trips = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "sm",
        ssl_ca_certs: str | None = None,
        sentinel_password: str | None = None,
        **kwargs: Any,
    ) -> RedisStore:
        """Connect by URL: ``redis://``, ``redis+sentinel://`` or ``redis+cluster://`` (``rediss`` for TLS;
        user and password in the URL for ACLs); see ``redis_connect``."""
        client = connect(url, ssl_ca_certs=ssl_ca_certs, sentinel_password=sentinel_password)
        return cls(client, prefix=prefix, **kwargs)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.round_trips += 1
        try:
            return fn(*args, **kwargs)
        except TRANSIENT as exc:
            raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc

    def ping(self) -> bool:
        return bool(self._call(self.client.ping))

    def claim(
        self, partitions: Sequence[str], now_ms: int, highwaters: Mapping[str, int] | None = None
    ) -> dict[str, PartitionClaim]:
        if not partitions:
            return {}
        known = highwaters or {}
        pairs = [x for tp in partitions for x in (tp, str(known[tp]) if tp in known else "")]
        flat = self._call(self._claim, keys=self._route, args=[self.prefix, now_ms, *pairs])
        out = {}
        for i in range(0, len(flat), 3):
            tp = flat[i].decode()
            out[tp] = PartitionClaim(tp, int(flat[i + 1]), int(flat[i + 2]))
        return out

    def commit(
        self,
        deltas: Sequence[PartitionDelta],
        epochs: Mapping[str, int],
        now_ms: int,
        joins: Sequence[JoinDelta] = (),
        counted: Mapping[str, int] | None = None,
    ) -> CommitResult:
        counted = counted or {}
        payload = {
            "now": str(now_ms),
            "window_ttl_s": self.window_ttl_s,
            "history_limit": HISTORY_LIMIT,
            "parts": [
                {
                    "tp": d.partition,
                    "epoch": str(epochs.get(d.partition, -1)),
                    "first": str(d.first_offset),
                    "next": str(d.next_offset),
                    "counted": str(counted[d.partition]) if d.partition in counted else "",
                    "max_ts": str(d.max_event_ms),
                    "hw": "" if d.highwater is None else str(d.highwater),
                    "windows": {str(s): sums for s, sums in d.windows.items()},
                    "events": {str(s): n for s, n in d.window_events.items()},
                    "counts": d.counts,
                    "deployments": [[m, a, r.decode()] for m, a, r in d.deployments],
                    "datasets": [[n, str(ts), r.decode()] for n, ts, r in d.datasets],
                }
                for d in deltas
            ],
            "joins": [
                {
                    "group": j.group,
                    "parts": j.parts,
                    "fence": {tp: str(e) for tp, e in j.fence.items()},
                    "put": {rid: entry.decode() for rid, entry in j.put.items()},
                    "delete": j.delete,
                    "matured": {str(w): ids for w, ids in j.matured.items()},
                    "drop_matured": [str(w) for w in j.drop_matured],
                    "sums": {str(s): {k: str(v) for k, v in f.items()} for s, f in j.sums.items()},
                }
                for j in joins
            ],
        }
        if not payload["parts"]:
            return CommitResult()
        applied, refused, late, closed, lost, conflict, join_refused, behind = self._call(
            self._commit,
            keys=self._route,
            args=[self.prefix, orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)],
        )
        return CommitResult(
            applied=orjson.loads(applied) or [],
            refused=orjson.loads(refused) or [],
            late_events=int(late),
            closed_before=int(closed) if closed else None,
            lost=orjson.loads(lost) or [],
            conflict=orjson.loads(conflict) or [],
            join_refused=orjson.loads(join_refused) or [],
            behind=orjson.loads(behind) or [],
        )

    def load_join(self, group: str) -> tuple[dict[str, bytes], dict[int, str]]:
        pipe = self.client.pipeline(transaction=True)  # one snapshot of both hashes
        pipe.hgetall(f"{self.prefix}:join:{group}")
        pipe.hgetall(f"{self.prefix}:jm:{group}")
        entries, matured = self._call(pipe.execute)
        return (
            {k.decode(): bytes(v) for k, v in entries.items()},
            {int(k): v.decode() for k, v in matured.items()},
        )

    def read_labels(self, start: int) -> dict[str, float]:
        raw = self._call(self.client.hgetall, f"{self.prefix}:lab:{start}")
        return {k.decode(): float(v) for k, v in raw.items()}

    def progress(self) -> dict[str, PartitionProgress]:
        pipe = self.client.pipeline(transaction=False)
        for name in ("offset", "maxts", "seen", "hw"):
            pipe.hgetall(f"{self.prefix}:{name}")
        offsets, maxts, seen, highwater = self._call(pipe.execute)
        return {
            tp.decode(): PartitionProgress(
                int(offsets.get(tp, 0)),
                int(ts),
                int(seen.get(tp, 0)),
                int(highwater[tp]) if tp in highwater else None,
            )
            for tp, ts in maxts.items()
        }

    def offsets(self, partitions: Sequence[str]) -> dict[str, int]:
        if not partitions:
            return {}
        values = self._call(self.client.hmget, f"{self.prefix}:offset", list(partitions))
        return {tp: int(v) for tp, v in zip(partitions, values, strict=True) if v is not None}

    def closed_before(self) -> int | None:
        value = self._call(self.client.get, f"{self.prefix}:closed_before")
        return int(value) if value is not None else None

    def open_windows(self) -> list[int]:
        return [int(m) for m in self._call(self.client.zrange, f"{self.prefix}:windows", 0, -1)]

    def read_window(self, start: int) -> dict[str, float]:
        raw = self._call(self.client.hgetall, f"{self.prefix}:win:{start}")
        return {k.decode(): float(v) for k, v in raw.items()}

    def close_window(self, start: int, end: int, detector_state: bytes, log_entry: bytes = b"") -> bool:
        done = self._call(
            self._close,
            keys=self._route,
            args=[
                self.prefix,
                start,
                end,
                detector_state,
                self.window_ttl_s,
                log_entry,
                self.window_log_limit,
            ],
        )
        return bool(done)

    def window_log(self, since_ms: int | None = None, until_ms: int | None = None) -> list[bytes]:
        low = "-inf" if since_ms is None else since_ms
        high = "+inf" if until_ms is None else f"({until_ms}"
        raw = self._call(self.client.zrangebyscore, f"{self.prefix}:winlog", low, high)
        return [bytes(r) for r in raw]

    def load_detector_state(self) -> bytes | None:
        value = self._call(self.client.get, f"{self.prefix}:detector")
        return bytes(value) if value is not None else None

    def totals(self) -> dict[str, int]:
        raw = self._call(self.client.hgetall, f"{self.prefix}:totals")
        return {k.decode(): int(v) for k, v in raw.items()}

    def acquire_lease(self, name: str, owner: str, ttl_ms: int) -> bool:
        key = f"{self.prefix}:lease:{name}"
        return bool(self._call(self._lease, keys=[key], args=[key, owner, ttl_ms]))

    def put_deployment(self, model: str, arm: str, record: bytes) -> None:
        self._call(self.client.hset, f"{self.prefix}:deploy:{model}", arm, record)

    def deployments(self) -> dict[str, dict[str, bytes]]:
        out: dict[str, dict[str, bytes]] = {}
        for key in self._call(lambda: list(self.client.scan_iter(f"{self.prefix}:deploy:*", count=100))):
            model = key.decode().split(":deploy:", 1)[1]
            out[model] = {a.decode(): bytes(v) for a, v in self._call(self.client.hgetall, key).items()}
        return out

    def history(self, model: str) -> list[bytes]:
        return [bytes(r) for r in self._call(self.client.lrange, f"{self.prefix}:history:{model}", 0, -1)]

    def put_verdict(self, model: str, key: str, doc: bytes, emitted_at: int) -> None:
        self._call(
            self._verdict,
            keys=self._route,
            args=[
                f"{self.prefix}:verdict:{model}",
                f"{self.prefix}:verdict_ts:{model}",
                key,
                doc,
                emitted_at,
                VERDICTS_PER_MODEL,
            ],
        )

    def verdicts(self, model: str) -> dict[str, bytes]:
        raw = self._call(self.client.hgetall, f"{self.prefix}:verdict:{model}")
        return {k.decode(): bytes(v) for k, v in raw.items()}

    def datasets(self) -> dict[str, bytes]:
        raw = self._call(self.client.hgetall, f"{self.prefix}:datasets")
        return {k.decode(): bytes(v) for k, v in raw.items()}
