"""Shadow analysis: a shadow version's slates against the control's, for the same requests.

A shadow deployment (a deployment event with arm ``shadow``) scores a copy of some requests; users never
see its slates, so there is no engagement to judge it by. What can be judged is how differently it ranks:
its serving event (arm ``shadow``) and the control's serving event of the same ``request_id`` are paired
and compared. See docs/canary.md "Shadow analysis".

**Pairing.** Serving events are keyed by request id, so both events of a request land on the same
partition of the serving topic: one :class:`ShadowPairs` buffer per serving partition sees both. A
shadow event is always buffered; a control event only while a shadow of its model was seen on the
partition within ``active_ms`` of event time (so a monitor without shadows keeps nothing). The second
event of a request pairs with the first if it comes before ``first ts + pairing_ms``; past that the first
counts as unpaired and the second waits on its own. An entry also expires, unpaired, once the partition's
newest event time passes its deadline. Outcomes depend on event time only (given each partition in
event-time order), so every batching gives the same sums. Like the label join, the buffer's changes are
handed over as a :class:`~stream_monitor.core.labels.JoinDelta` (group ``shadow:<topic>/<p>``) committed
atomically with the input offsets, so a restart neither loses nor double-counts a pair.

**Sums (mergeable integers per label window).** Series ``~shadow|<model>|<shadow version>`` (the control
side's unpaired events under ``~shadow|<model>|*``), in the window of the later event of the pair:
``pairs``; ``ok`` pairs where both slates are non-empty, with ``jac_u`` / ``rbo_u`` the sums of
Jaccard@k and RBO in millionths and ``jac_q`` / ``rbo_q`` the sums of their squares in millionths,
``jac_h.<d>`` / ``rbo_h.<d>`` tenth-histograms; ``s_err`` / ``c_err``, ``s_fb`` / ``c_fb``,
``s_empty`` / ``c_empty`` the pairs whose shadow / control response was an error, fallback, empty
slate, ``sx_<x>`` / ``cx_<x>`` those where only the shadow / only the control's was; ``unpaired_s``
/ ``unpaired_c`` (in the window of the entry's deadline), ``dup``, ``capped``.

**The verdict.** :class:`ShadowAnalyzer` accumulates those sums and the arms' score histograms (the
serving window sums) per shadow deployment and classifies, with the canary's anytime-valid confidence
sequences (core/canary.py): mean Jaccard@k and RBO against ``min_jaccard`` / ``min_rbo`` (LOW when the
whole sequence is below), the score shift (Mann-Whitney probability of superiority, as the canary's) and
the paired error / fallback / empty rates (the mean of the per-request differences, whose variance
rests on the discordant pairs only: a shadow that fails exactly when the control does shows no
difference at all). Verdict and decision
map as the canary's: a critical metric bad -> FAIL -> ROLLBACK, a non-critical one -> MARGINAL -> HOLD,
not enough data or a critical metric not yet shown fine -> INCONCLUSIVE -> HOLD, else PASS -> PROMOTE.

Pure: standard library, orjson and the core (no Kafka, Redis or Faust).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final, cast

import orjson

from stream_monitor.core.canary import MetricResult, Verdict, rollout_entries
from stream_monitor.core.fields import field_name, join_series, metric_prefix, split_field, split_series
from stream_monitor.core.labels import JoinDelta, request_id_hash, sampled
from stream_monitor.core.profile import LinearBins
from stream_monitor.core.stats.ranks import hodges_lehmann, mann_whitney
from stream_monitor.core.stats.sequential import mixture_halfwidth, paired_diff_cs
from stream_monitor.core.topology import ShadowRule, Topology

__all__ = [
    "KIND",
    "SERIES",
    "ShadowAnalyzer",
    "ShadowPairing",
    "ShadowPairs",
    "ShadowStateError",
    "jaccard_at_k",
    "rank_biased_overlap",
    "shadow_verdict",
]

KIND: Final = "shadow"
SERIES: Final = "~shadow"  # label-window series prefix: no topology has a "~shadow" model dimension
GROUP_PREFIX: Final = "shadow:"
CANDIDATE, BASELINE = "shadow", "control"
MICRO: Final = 1_000_000
STATE_VERSION: Final = 1
# Entry layout (a JSON list): arm code (0 control, 1 shadow), model, version, ts, status, top-k item ids.
_ARM, _MODEL, _VERSION, _TS, _STATUS, _ITEMS = 0, 1, 2, 3, 4, 5
OK, ERROR, FALLBACK, EMPTY = 0, 1, 2, 3
# Stored keys: "r:<request id>" for a waiting event, "a:<model>" for the model's "shadow last seen" mark
# (prefixes, so that no request id can be mistaken for a mark).
_ENTRY, _ACTIVE = "r:", "a:"
_STATUS_FIELDS: Final = ((ERROR, "err"), (FALLBACK, "fb"), (EMPTY, "empty"))


class ShadowStateError(ValueError):
    """A shadow state document that this version cannot load."""


# -- overlap measures -----------------------------------------------------------------------------------


def jaccard_at_k(a: Sequence[str], b: Sequence[str], k: int) -> float:
    """|A & B| / |A | B| of the top-``k`` sets of two rankings (1 for two empty lists).

    >>> jaccard_at_k(["a", "b", "c"], ["a", "b", "c"], 3), jaccard_at_k(["a", "b"], ["c", "d"], 2)
    (1.0, 0.0)
    >>> jaccard_at_k(["a", "b", "c", "d"], ["b", "a", "e", "f"], 4)  # 2 shared of 6
    0.3333333333333333
    """
    sa, sb = set(a[:k]), set(b[:k])
    union = len(sa | sb)
    return len(sa & sb) / union if union else 1.0


def rank_biased_overlap(a: Sequence[str], b: Sequence[str], p: float, k: int | None = None) -> float:
    """Extrapolated rank-biased overlap RBO_ext of two rankings cut at depth ``k`` (Webber et al. 2010).

    With ``A_d = |a[:d] ∩ b[:d]| / d`` the agreement at depth d and both lists cut at depth k,
    ``RBO_ext = (1 - p) / p * sum_{d=1..k} A_d p^d + A_k p^k``: 1 for identical lists, 0 for disjoint
    ones, and top-weighted (depth d carries weight ``(1 - p) p^(d-1)``). Lists of different lengths are
    cut at the shorter one.

    >>> rbo = rank_biased_overlap
    >>> rbo(list("abcde"), list("abcde"), 0.9), rbo(list("ab"), list("cd"), 0.9)
    (1.0, 0.0)
    >>> round(rbo(list("abc"), list("bac"), 0.9), 4)  # A_d = 0, 1, 1: (0.1/0.9)(0.81 + 0.729) + 0.729
    0.9
    """
    depth = min(len(a), len(b), k if k is not None else len(a))
    if depth <= 0:
        return 1.0 if not a and not b else 0.0
    seen_a: set[str] = set()
    seen_b: set[str] = set()
    shared = 0
    total = 0.0
    weight = 1.0
    agreement = 0.0
    for d in range(1, depth + 1):
        x, y = a[d - 1], b[d - 1]
        if x == y:
            shared += 1
        else:
            shared += (x in seen_b) + (y in seen_a)
        seen_a.add(x)
        seen_b.add(y)
        weight *= p
        agreement = shared / d
        total += agreement * weight
    return min(1.0, (1.0 - p) / p * total + agreement * weight)


# -- pairing --------------------------------------------------------------------------------------------


def _bin(value: float) -> int:
    return min(9, int(value * 10))


def _ids(items: Sequence[object], k: int) -> list[str]:
    out: list[str] = []
    for item in items[:k]:
        item_id = item.get("id") if isinstance(item, dict) else item
        if isinstance(item_id, str):
            out.append(item_id)
    return out


class ShadowPairs:
    """The pairing buffer of one serving partition (see the module docstring).

    >>> pairs = ShadowPairs(ShadowRule(), window_ms=60_000)
    >>> pairs.add("r1", "shadow", "m", "v2", 1_000, OK, ["a", "b", "c"])
    >>> pairs.add("r1", "control", "m", "v1", 1_020, OK, ["a", "c", "b"])
    >>> delta = pairs.take("shadow:0", ["s/0"], {"s/0": 1})
    >>> w = delta.sums[0]
    >>> w["~shadow|m|v2#pairs"], w["~shadow|m|v2#jac_u"], pairs.pending
    (1, 1000000, 0)
    """

    def __init__(self, rule: ShadowRule, window_ms: int) -> None:
        self.rule = rule
        self.size = window_ms
        self._reset()

    def _reset(self) -> None:
        self.max_ts = 0
        self._entries: dict[str, list[Any]] = {}
        self._active: dict[str, int] = {}  # model -> newest shadow ts seen on this partition
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()
        self._active_dirty: set[str] = set()
        self._sums: dict[int, dict[str, int]] = {}
        self._swept = 0

    @property
    def pending(self) -> int:
        return len(self._entries)

    def _start(self, ts: int) -> int:
        return ts - ts % self.size

    def _add(self, ts: int, series: str, name: str, by: int = 1) -> None:
        sums = self._sums.setdefault(self._start(ts), {})
        key = field_name(series, name)
        sums[key] = sums.get(key, 0) + by

    @staticmethod
    def _series(model: str, version: str) -> str:
        return join_series((SERIES, model, version))

    def add(
        self, rid: str, arm: str, model: str, version: str, ts: int, status: int, items: Sequence[object]
    ) -> None:
        """One serving event of arm ``control`` or ``shadow`` (others are ignored).

        ``items`` are the slate's item ids, or its item objects (``{"id": ..., ...}``; items without a
        string id are left out of the comparison).
        """
        if arm not in (CANDIDATE, BASELINE):
            return
        if ts > self.max_ts:
            self.max_ts = ts
        shadow = arm == CANDIDATE
        rule = self.rule
        if shadow:
            if ts > self._active.get(model, -1):
                self._active[model] = ts
                self._active_dirty.add(model)
        else:
            # The common case, a control event with no shadow of its model around, costs only this.
            # (A waiting shadow entry of this request would have marked the model active: active_ms is
            # at least pairing_ms.)
            seen = self._active.get(model)
            if seen is None or ts > seen + rule.active_ms:
                return
        if rule.sample_rate < 1.0 and not sampled(request_id_hash(rid), rule.sample_rate):
            return
        other = self._entries.get(rid)
        if other is not None:
            if other[_ARM] == shadow:
                self._add(ts, self._series(model, version if shadow else "*"), "dup")
                return
            if ts < other[_TS] + rule.pairing_ms:
                self._pair(other, [int(shadow), model, version, ts, status, _ids(items, rule.k)])
                self._drop(rid)
                return
            self._expire(rid)
        if len(self._entries) >= rule.max_pending:
            self._add(ts, self._series(model, version if shadow else "*"), "capped")
            return
        self._entries[rid] = [int(shadow), model, version, ts, status, _ids(items, rule.k)]
        self._dirty.add(rid)
        self._deleted.discard(rid)

    def _drop(self, rid: str) -> None:
        del self._entries[rid]
        self._dirty.discard(rid)
        self._deleted.add(rid)

    def _expire(self, rid: str) -> None:
        entry = self._entries[rid]
        shadow = bool(entry[_ARM])
        series = self._series(entry[_MODEL], entry[_VERSION] if shadow else "*")
        self._add(entry[_TS] + self.rule.pairing_ms, series, "unpaired_s" if shadow else "unpaired_c")
        self._drop(rid)

    def _pair(self, first: Sequence[Any], second: Sequence[Any]) -> None:
        shadow, control = (first, second) if first[_ARM] else (second, first)
        ts = max(first[_TS], second[_TS])
        series = self._series(shadow[_MODEL], shadow[_VERSION])
        add = self._add
        add(ts, series, "pairs")
        for code, name in _STATUS_FIELDS:
            s_has, c_has = shadow[_STATUS] == code, control[_STATUS] == code
            if s_has:
                add(ts, series, "s_" + name)
            if c_has:
                add(ts, series, "c_" + name)
            if s_has != c_has:  # discordant pairs: what the paired difference of the rates rests on
                add(ts, series, ("sx_" if s_has else "cx_") + name)
        a, b = shadow[_ITEMS], control[_ITEMS]
        if shadow[_STATUS] in (OK, FALLBACK) and control[_STATUS] in (OK, FALLBACK) and a and b:
            k = self.rule.k
            jac = jaccard_at_k(a, b, k)
            rbo = rank_biased_overlap(a, b, self.rule.rbo_p, k)
            add(ts, series, "ok")
            add(ts, series, "jac_u", round(jac * MICRO))
            add(ts, series, "jac_q", round(jac * jac * MICRO))
            add(ts, series, f"jac_h.{_bin(jac)}")
            add(ts, series, "rbo_u", round(rbo * MICRO))
            add(ts, series, "rbo_q", round(rbo * rbo * MICRO))
            add(ts, series, f"rbo_h.{_bin(rbo)}")

    def sweep(self) -> None:
        """Expire every entry whose pairing deadline the partition's newest event time has passed."""
        mark = self.max_ts - self.rule.pairing_ms
        if mark <= self._swept:
            return
        self._swept = mark
        for rid in [r for r, e in self._entries.items() if e[_TS] <= mark]:
            self._expire(rid)

    def take(self, group: str, parts: list[str], fence: dict[str, int]) -> JoinDelta:
        """Expire what is due and hand over every change since the last take as a JoinDelta."""
        self.sweep()
        put = {_ENTRY + rid: orjson.dumps(self._entries[rid]) for rid in self._dirty}
        for model in self._active_dirty:
            put[_ACTIVE + model] = str(self._active[model]).encode()
        deleted = sorted(_ENTRY + rid for rid in self._deleted - self._dirty)
        delta = JoinDelta(group, parts, fence, put=put, delete=deleted, sums=self._sums)
        self._dirty, self._deleted, self._active_dirty, self._sums = set(), set(), set(), {}
        return delta

    def load(self, entries: Mapping[str, bytes], max_ts: int) -> None:
        """Restore what a store holds (what the last applied commit left); bad entries are skipped."""
        self._reset()
        self.max_ts = max_ts
        for key, raw in entries.items():
            try:
                if key.startswith(_ACTIVE):
                    self._active[key[len(_ACTIVE) :]] = int(raw)
                    continue
                if not key.startswith(_ENTRY):
                    continue
                doc = orjson.loads(raw)
                if isinstance(doc, list) and len(doc) == 6 and isinstance(doc[_TS], int):
                    self._entries[key[len(_ENTRY) :]] = doc
            except (ValueError, TypeError):
                continue


class ShadowPairing:
    """The pairing buffers of one worker, one per owned input partition (group ``shadow:<topic>/<p>``).

    Serving events normally come on the serving topic only, but a replay feeds every kind through one
    mixed topic: so any partition ``topics`` admits (every one when ``None``) gets a buffer.

    >>> pairing = ShadowPairing(ShadowRule(), 60_000, ("recs.serving",))
    >>> pairing.group_of("recs.serving/3"), pairing.group_of("recs.engagement/3")
    ('shadow:recs.serving/3', None)
    """

    def __init__(self, rule: ShadowRule, window_ms: int, topics: Collection[str] | None = None) -> None:
        self.rule = rule
        self.window_ms = window_ms
        self.topics = None if topics is None else frozenset(topics)
        self.buffers: dict[str, ShadowPairs] = {}

    def group_of(self, tp: str) -> str | None:
        topic = tp.rpartition("/")[0]
        return GROUP_PREFIX + tp if self.topics is None or topic in self.topics else None

    def adopt(self, group: str, entries: Mapping[str, bytes], max_ts: int) -> None:
        buf = ShadowPairs(self.rule, self.window_ms)
        buf.load(entries, max_ts)
        self.buffers[group] = buf

    def drop(self, group: str) -> None:
        self.buffers.pop(group, None)

    def serving(
        self,
        tp: str,
        rid: str,
        arm: str,
        model: str,
        version: str,
        ts: int,
        status: int,
        items: Sequence[object],
    ) -> None:
        group = self.group_of(tp)
        buf = self.buffers.get(group) if group is not None else None
        if buf is not None:
            buf.add(rid, arm, model, version, ts, status, items)

    def take(self, parts: Sequence[str], epochs: Mapping[str, int]) -> list[JoinDelta]:
        """The deltas to commit with the input deltas of ``parts``."""
        out: list[JoinDelta] = []
        for tp in sorted(parts):
            group = self.group_of(tp)
            buf = self.buffers.get(group) if group is not None else None
            if group is not None and buf is not None and tp in epochs:
                delta = buf.take(group, [tp], {tp: epochs[tp]})
                if delta.put or delta.delete or delta.sums:
                    out.append(delta)
        return out

    @property
    def pending(self) -> int:
        return sum(b.pending for b in self.buffers.values())


# -- the verdict ----------------------------------------------------------------------------------------


def shadow_verdict(metrics: Sequence[MetricResult], enough: bool) -> tuple[float, str, str]:
    """(score 0..100, verdict, one-sentence reason) of classified shadow metrics.

    >>> ok = MetricResult("overlap.rbo", "overlap", True, "decrease", "PASS", 0.9, non_inferior=True)
    >>> low = MetricResult("overlap.rbo", "overlap", True, "decrease", "LOW", 0.2, 0.1, 0.3, "ratio")
    >>> shadow_verdict([ok], True)[:2], shadow_verdict([low], True)[1], shadow_verdict([ok], False)[1]
    ((100.0, 'PASS'), 'FAIL', 'INCONCLUSIVE')
    """
    judged = [m for m in metrics if m.classification != "NODATA"]
    score = 100.0 * sum(not m.bad for m in judged) / len(judged) if judged else 0.0
    bad = [m for m in metrics if m.bad]
    if any(m.critical for m in bad):
        names = ", ".join(f"{m.name} {_effect(m)}" for m in bad if m.critical)
        return score, "FAIL", f"The shadow diverges from control on critical metrics: {names}."
    if bad:
        return (
            score,
            "MARGINAL",
            f"The shadow diverges on non-critical metrics ({', '.join(m.name for m in bad)}).",
        )
    if not enough:
        return score, "INCONCLUSIVE", "Not enough paired shadow traffic yet (minimum windows or pairs)."
    pending = [m.name for m in metrics if m.critical and not m.non_inferior]
    if pending:
        return score, "INCONCLUSIVE", f"No divergence seen, but not yet shown close: {', '.join(pending)}."
    return score, "PASS", f"The shadow stays close to control on every critical metric; score {score:.0f}."


def _effect(m: MetricResult) -> str:
    if m.estimate is None:
        return m.classification
    if m.unit == "points":
        return f"{m.estimate * 100:+.2f} pt"
    return f"{m.estimate:.3f} [{m.lower:.3f}, {m.upper:.3f}]"


def _is_num(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class ShadowAnalyzer:
    """Cumulative shadow-vs-control analysis per model, one update per closed window.

    Its state is a JSON document kept in the engine's detector checkpoint (beside the canary's): per model
    the shadow deployment being judged, the cumulative pair sums and both arms' score histograms, and a
    sticky ROLLBACK once decided. A new shadow deployment (other version or deploy time) starts afresh.

    >>> from stream_monitor.core.windows import WindowSpec
    >>> az = ShadowAnalyzer(Topology("t", WindowSpec(60_000)))
    >>> deps = {"m": {"shadow": {"ts": 0, "model_version": "v2", "traffic": 0.1, "lineage": {}},
    ...               "control": {"ts": 0, "model_version": "v1", "traffic": 1.0, "lineage": {}}}}
    >>> labels = {"~shadow|m|v2#pairs": 600, "~shadow|m|v2#ok": 600, "~shadow|m|v2#rbo_u": 120_000_000,
    ...           "~shadow|m|v2#rbo_q": 30_000_000, "~shadow|m|v2#jac_u": 90_000_000,
    ...           "~shadow|m|v2#jac_q": 20_000_000}
    >>> state: dict = {}
    >>> [v] = az.update(state, deps, {}, labels, (0, 60_000), now_ms=60_000)
    >>> v.kind, v.deployment, v.verdict, v.decision, v.key
    ('shadow', 'v2@0', 'FAIL', 'ROLLBACK', 'm/v2@0')
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.rule = topology.shadow
        self.n_dims = len(topology.key_dims)
        lo, hi = topology.ranking.score_range
        self.score_bins = LinearBins(lo, hi, topology.ranking.score_bins)
        names = ["overlap.jaccard", "overlap.rbo"]
        if topology.ranking.enabled:
            names.append("score")
        names += ["error_rate", "fallback_rate", "empty_slate_rate"]
        self.metric_names = names
        self.alpha = self.rule.alpha / len(names)

    def is_critical(self, name: str) -> bool:
        return any(name == c or name.startswith(c + ".") for c in self.rule.critical)

    @staticmethod
    def check_state(doc: object) -> dict[str, Any]:
        """Validate a stored shadow state; raises :class:`ShadowStateError` naming what is wrong.

        >>> ShadowAnalyzer.check_state({"version": 1, "models": {"m": {"deployment": 3}}})
        Traceback (most recent call last):
        ...
        stream_monitor.core.shadow.ShadowStateError: shadow state models.m.deployment must be a string
        """
        for where, entry in rollout_entries(
            doc, "shadow", STATE_VERSION, ShadowStateError, ("pairs", "scores")
        ):
            if not all(_is_num(v) for v in entry["pairs"].values()):
                raise ShadowStateError(f"{where}.pairs values must be numbers")
            for arm in (CANDIDATE, BASELINE):
                hist = entry["scores"].get(arm)
                if not isinstance(hist, dict) or not all(_is_num(v) for v in hist.values()):
                    raise ShadowStateError(f"{where}.scores.{arm} must map to numbers")
        return cast(dict[str, Any], doc)

    def update(
        self,
        state: dict[str, Any],
        deployments: Mapping[str, Mapping[str, Mapping[str, Any]]],
        fields: Mapping[str, float],
        label_fields: Mapping[str, float],
        window: tuple[int, int],
        now_ms: int,
    ) -> list[Verdict]:
        """Add one closed window to ``state`` (in place); a verdict per model with a live shadow.

        ``deployments`` is the latest deployment record per model and arm (decoded JSON); ``fields`` the
        window's sums (score histograms of both arms), ``label_fields`` its label sums (the pair sums).
        """
        if not self.rule.enabled:
            return []
        state.setdefault("version", STATE_VERSION)
        models: dict[str, Any] = state.setdefault("models", {})
        end = window[1]
        active: dict[str, tuple[Mapping[str, Any], Mapping[str, Any] | None]] = {}
        for model, arms in deployments.items():
            cand = arms.get(CANDIDATE)
            if cand is None or not _is_num(cand.get("traffic")) or not cand["traffic"] > 0:
                continue  # a shadow at traffic 0 is retired
            if not isinstance(cand.get("ts"), int) or end <= cand["ts"]:
                continue
            active[model] = (cand, arms.get(BASELINE))
        for model in list(models):
            if model not in active:
                del models[model]
        verdicts: list[Verdict] = []
        for model, (cand, base) in sorted(active.items()):
            deployment = f"{cand.get('model_version')}@{cand['ts']}"
            entry = models.get(model)
            if entry is None or entry.get("deployment") != deployment:
                entry = models[model] = self._new_entry(deployment, cand, base)
            entry["windows"] += 1
            self._merge(model, entry, fields, label_fields)
            verdicts.append(self._verdict(model, entry, end, now_ms))
        return verdicts

    @staticmethod
    def _new_entry(
        deployment: str, cand: Mapping[str, Any], base: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        base_version = (base or {}).get("model_version") or cand.get("baseline_version")
        return {
            "deployment": deployment,
            "start": int(cand["ts"]),
            "windows": 0,
            "candidate": {
                "version": str(cand.get("model_version")),
                "arm": CANDIDATE,
                "lineage": dict(cand.get("lineage") or {}),
            },
            "baseline": {
                "version": str(base_version),
                "arm": BASELINE,
                "lineage": dict((base or {}).get("lineage") or {}),
            },
            "pairs": {},
            "scores": {CANDIDATE: {}, BASELINE: {}},
            "decided": None,
        }

    def _merge(
        self,
        model: str,
        entry: dict[str, Any],
        fields: Mapping[str, float],
        label_fields: Mapping[str, float],
    ) -> None:
        pairs = entry["pairs"]
        prefix = metric_prefix(join_series((SERIES, model, entry["candidate"]["version"])))
        for name, value in label_fields.items():
            if name.startswith(prefix):
                metric = name[len(prefix) :]
                pairs[metric] = pairs.get(metric, 0) + value
        unpaired_c = field_name(join_series((SERIES, model, "*")), "unpaired_c")
        if unpaired_c in label_fields:
            pairs["unpaired_c"] = pairs.get("unpaired_c", 0) + label_fields[unpaired_c]
        versions = {CANDIDATE: entry["candidate"]["version"], BASELINE: entry["baseline"]["version"]}
        for name, value in fields.items():
            series, metric = split_field(name)
            if not metric.startswith("sc."):
                continue
            key = split_series(series)
            if len(key) != self.n_dims or key[0] != model or versions.get(key[2]) != key[1]:
                continue
            hist = entry["scores"][key[2]]
            b = metric[3:]
            hist[b] = hist.get(b, 0) + value

    def _verdict(self, model: str, entry: dict[str, Any], end: int, now: int) -> Verdict:
        rule = self.rule
        metrics = self.classify(entry["pairs"], entry["scores"])
        p = entry["pairs"]
        enough = entry["windows"] >= rule.min_windows and p.get("ok", 0) >= rule.min_pairs
        score, verdict, reason = shadow_verdict(metrics, enough)
        decided = entry.get("decided")
        if decided is None and verdict == "FAIL":
            decided = entry["decided"] = {"reason": reason, "windows": entry["windows"], "at": end}
        elif decided is not None and verdict != "FAIL":
            # As for a canary: a rollback decided on an anytime-valid bound stands for this deployment.
            verdict = "FAIL"
            reason = f"{decided['reason'].rstrip('.')} (decided at window {decided['windows']})."
        return Verdict(
            model=model,
            deployment=entry["deployment"],
            candidate=entry["candidate"],
            baseline=entry["baseline"],
            window_start=entry["start"],
            window_end=end,
            emitted_at=now,
            metrics=metrics,
            score=score,
            verdict=verdict,
            reason=reason,
            suspects=[],
            valid_until=now + rule.valid_for_ms,
            kind=KIND,
        )

    def classify(
        self, pairs: Mapping[str, float], scores: Mapping[str, Mapping[str, float]]
    ) -> list[MetricResult]:
        """Every shadow metric from cumulative pair sums and score histograms."""
        rule = self.rule
        out = [
            self._overlap("overlap.jaccard", pairs, "jac", rule.min_jaccard),
            self._overlap("overlap.rbo", pairs, "rbo", rule.min_rbo),
        ]
        if self.topology.ranking.enabled:
            out.append(self._scores(scores.get(CANDIDATE, {}), scores.get(BASELINE, {})))
        for name, counter in (("error_rate", "err"), ("fallback_rate", "fb"), ("empty_slate_rate", "empty")):
            out.append(self._rate(name, pairs, counter))
        return out

    def _result(
        self, name: str, group: str, direction: str, unit: str, n: float, margin: float
    ) -> MetricResult:
        return MetricResult(
            name, group, self.is_critical(name), direction, "NODATA", unit=unit, n_candidate=n,
            n_baseline=n, margin=margin,
        )  # fmt: skip

    def _overlap(self, name: str, pairs: Mapping[str, float], prefix: str, floor: float) -> MetricResult:
        n = float(pairs.get("ok", 0))
        result = self._result(name, "overlap", "decrease", "ratio", n, floor)
        if n < self.rule.min_pairs:
            result.detail = f"{n:.0f} of {self.rule.min_pairs} compared pairs"
            return result
        mean = pairs.get(f"{prefix}_u", 0) / MICRO / n
        second = pairs.get(f"{prefix}_q", 0) / MICRO / n
        variance = max(second - mean * mean, 1.0 / n) / n  # floor: a constant overlap still has a width
        hw = mixture_halfwidth(variance, self.rule.overlap_mixture_scale, self.alpha)
        result.estimate, result.lower, result.upper = mean, max(0.0, mean - hw), min(1.0, mean + hw)
        result.classification = "LOW" if mean + hw < floor else "PASS"
        result.non_inferior = mean - hw >= floor
        unpaired = pairs.get("unpaired_s", 0)
        result.detail = (
            f"mean {mean:.3f} over {n:.0f} pairs (floor {floor:g}); "
            f"{unpaired:.0f} shadow events found no control partner"
        )
        return result

    def _rate(self, name: str, pairs: Mapping[str, float], counter: str) -> MetricResult:
        rule = self.rule
        n = float(pairs.get("pairs", 0))
        result = self._result(name, "guardrail", "increase", "points", n, rule.rate_floor)
        if n < rule.min_pairs:
            result.detail = f"{n:.0f} of {rule.min_pairs} pairs"
            return result
        s, c = pairs.get("s_" + counter, 0), pairs.get("c_" + counter, 0)
        only_s, only_c = pairs.get("sx_" + counter, 0), pairs.get("cx_" + counter, 0)
        est, lo, hi = paired_diff_cs(only_s, only_c, n, max(rule.rate_floor, 1e-4), self.alpha)
        result.estimate, result.lower, result.upper = est, lo, hi
        result.classification = (
            "HIGH"
            if lo > 0 and est >= rule.rate_floor
            else "LOW"
            if hi < 0 and est <= -rule.rate_floor
            else "PASS"
        )
        result.non_inferior = hi < rule.rate_floor
        result.detail = f"shadow {s / n:.4f} vs control {c / n:.4f} on the same {n:.0f} requests"
        return result

    def _scores(self, c_raw: Mapping[str, float], b_raw: Mapping[str, float]) -> MetricResult:
        rule = self.rule
        value = self.score_bins.value_of
        c = {value(int(k)): v for k, v in c_raw.items()}
        b = {value(int(k)): v for k, v in b_raw.items()}
        n_c, n_b = sum(c.values()), sum(b.values())
        result = self._result("score", "scores", "either", "probability", n_c, rule.score_floor)
        result.n_baseline = n_b
        if min(n_c, n_b) < rule.min_count:
            result.detail = f"{min(n_c, n_b):.0f} of {rule.min_count} scored items per arm"
            return result
        mw = mann_whitney(c, b)
        var = mw.var_theta
        hw = mixture_halfwidth(var, rule.rank_mixture_scale, self.alpha)
        z = hw / math.sqrt(var) if var > 0 and math.isfinite(var) else 0.0
        shift, lo, hi = hodges_lehmann(c, b, z, mw.var_u)
        t_lo, t_hi = mw.theta - hw, mw.theta + hw
        result.estimate, result.lower, result.upper = mw.theta, t_lo, t_hi
        floor = rule.score_floor
        if t_lo > 0.5 and mw.theta >= 0.5 + floor:
            result.classification = "HIGH"
        elif t_hi < 0.5 and mw.theta <= 0.5 - floor:
            result.classification = "LOW"
        else:
            result.classification = "PASS"
        result.non_inferior = t_lo > 0.5 - floor and t_hi < 0.5 + floor
        result.detail = (
            f"P(shadow score higher) {mw.theta:.3f}; Hodges-Lehmann shift {shift:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        )
        return result
