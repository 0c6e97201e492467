"""Pinned reference profiles: a fixed distribution (e.g. of the training data) that drift is measured against.

The trailing and previous-version references (core/profile_signals.py) follow the traffic; a pinned
profile does not. It holds, per slice, the bin counts of every profiled histogram (numeric features
``fv.<name>``, categorical features ``fc.<name>``, item scores ``sc``) in exactly the bins the topology's
profiler uses, so a window's histogram and the pinned one compare bin for bin. A slice is a window key
without its ``model_version`` and ``arm`` (``model|surface|<segment values>``, roll-ups with ``*``): the
profile describes the data, not which version served it. A slice the profile does not hold is not tested
against it (a global distribution is no reference for a region with habits of its own).

The ``fingerprint`` names the binning the counts were made with; a profile made under other bins is
refused at load (:class:`ProfileFormatError`) rather than compared bin labels that mean other ranges.
``stream-monitor profile FILE.jsonl -o profile.json`` builds one from recorded events.

Imports: the standard library and core only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from stream_monitor.core.fields import join_series

if TYPE_CHECKING:
    from stream_monitor.core.topology import FeatureSpec, RankingRule

__all__ = [
    "PROFILE_SCHEMA",
    "PinnedProfile",
    "ProfileFormatError",
    "binning",
    "profile_fingerprint",
    "slice_of",
]

PROFILE_SCHEMA = "stream-monitor.profile/v1"
_KEY_DIMS = 4  # model, model_version, arm, surface (core/topology.py KEY_DIMS)
_MAX_BINS = 100_000


class ProfileFormatError(ValueError):
    """A pinned profile that cannot be used: wrong schema, wrong binning or malformed counts."""


def slice_of(key: tuple[str, ...]) -> str:
    """The slice of a window key: the key without its model version and arm.

    >>> slice_of(("m", "v2", "canary", "home", "eu", "*"))
    'm|home|eu|*'
    """
    return join_series((key[0], key[3], *key[_KEY_DIMS:]))


def binning(features: Sequence[FeatureSpec], ranking: RankingRule) -> dict[str, Any]:
    """What each profiled histogram's bins mean (histogram name -> bin parameters) under a topology."""
    out: dict[str, Any] = {}
    for spec in features:
        if spec.kind == "categorical":
            out[f"fc.{spec.name}"] = {"kind": "categorical"}
        elif spec.range is not None:
            out[f"fv.{spec.name}"] = {"kind": "linear", "range": list(spec.range), "bins": spec.bins}
        else:
            out[f"fv.{spec.name}"] = {"kind": "signed_log", "relative_width": spec.relative_width}
    if ranking.enabled:
        out["sc"] = {"kind": "linear", "range": list(ranking.score_range), "bins": ranking.score_bins}
    return out


def profile_fingerprint(description: Mapping[str, Any]) -> str:
    """A short stable hash of a binning description (see :func:`binning`).

    >>> profile_fingerprint({"sc": {"range": [0, 1], "bins": 20}}) == profile_fingerprint(
    ...     {"sc": {"bins": 20, "range": [0, 1]}})
    True
    """
    return hashlib.blake2b(orjson.dumps(description, option=orjson.OPT_SORT_KEYS), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class PinnedProfile:
    """Bin counts per slice and histogram, made under the binning named by ``fingerprint``.

    >>> p = PinnedProfile({"m|home|*": {"sc": {"3": 40.0, "4": 60.0}}}, fingerprint="f00d")
    >>> p.reference(("m", "v9", "canary", "home", "*"), "sc")
    {'3': 40.0, '4': 60.0}
    >>> p.reference(("m", "v9", "canary", "home", "eu"), "sc") is None
    True
    >>> PinnedProfile.from_json(p.to_json(), expected_fingerprint="beef")
    Traceback (most recent call last):
    ...
    stream_monitor.core.reference.ProfileFormatError: pinned profile was made with binning f00d, the \
topology bins as beef (rebuild it with `stream-monitor profile`)
    """

    slices: Mapping[str, Mapping[str, Mapping[str, float]]]
    fingerprint: str
    source: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def reference(self, key: tuple[str, ...], hist_name: str) -> dict[str, float] | None:
        """The pinned counts of ``hist_name`` on the slice of ``key`` (None: not in the profile)."""
        hists = self.slices.get(slice_of(key))
        if hists is None:
            return None
        counts = hists.get(hist_name)
        return dict(counts) if counts else None

    def to_json(self) -> bytes:
        doc = {
            "schema": PROFILE_SCHEMA,
            "fingerprint": self.fingerprint,
            "source": self.source,
            "meta": dict(self.meta),
            "slices": {s: {h: dict(c) for h, c in hists.items()} for s, hists in self.slices.items()},
        }
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, raw: bytes, expected_fingerprint: str | None = None) -> PinnedProfile:
        """Parse and check a profile; ``expected_fingerprint`` is the topology's binning."""
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProfileFormatError(f"pinned profile is not JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("schema") != PROFILE_SCHEMA:
            got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
            raise ProfileFormatError(f"pinned profile schema is {got!r}, expected {PROFILE_SCHEMA!r}")
        fingerprint = doc.get("fingerprint")
        if not isinstance(fingerprint, str):
            raise ProfileFormatError("pinned profile has no fingerprint string")
        if expected_fingerprint is not None and fingerprint != expected_fingerprint:
            raise ProfileFormatError(
                f"pinned profile was made with binning {fingerprint}, the topology bins as "
                f"{expected_fingerprint} (rebuild it with `stream-monitor profile`)"
            )
        raw_slices = doc.get("slices")
        if not isinstance(raw_slices, dict):
            raise ProfileFormatError("pinned profile slices must be an object")
        slices: dict[str, dict[str, dict[str, float]]] = {}
        n_bins = 0
        for name, hists in raw_slices.items():
            if not isinstance(hists, dict):
                raise ProfileFormatError(f"pinned profile slice {name!r} must be an object")
            slices[name] = {}
            for hist_name, counts in hists.items():
                if not isinstance(counts, dict):
                    raise ProfileFormatError(f"pinned profile {name!r} {hist_name!r} must be an object")
                clean: dict[str, float] = {}
                for bin_, count in counts.items():
                    ok = isinstance(count, int | float) and not isinstance(count, bool)
                    if not ok or not math.isfinite(count) or count < 0:
                        raise ProfileFormatError(
                            f"pinned profile {name!r} {hist_name!r} bin {bin_!r}: count {count!r} is not "
                            "a finite number >= 0"
                        )
                    clean[str(bin_)] = float(count)
                n_bins += len(clean)
                slices[name][str(hist_name)] = clean
        if n_bins > _MAX_BINS:
            raise ProfileFormatError(f"pinned profile holds {n_bins} bins, more than {_MAX_BINS}")
        meta = doc.get("meta", {})
        source = doc.get("source", "")
        return cls(
            slices,
            fingerprint,
            source=source if isinstance(source, str) else "",
            meta=meta if isinstance(meta, dict) else {},
        )
