"""Pinned reference profiles: built from recorded events, loaded by the topology, drift tested on them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from stream_monitor.cli.main import main
from stream_monitor.config import Topics
from stream_monitor.core.alerts import Alert
from stream_monitor.core.reference import PinnedProfile, ProfileFormatError
from stream_monitor.core.topology import Topology
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.inprocess import EventTimeClock, InProcessPipeline
from stream_monitor.profiling import build_pinned_profile
from stream_monitor.sim import Incident, TrafficSimulator
from stream_monitor.sinks.base import ListSink
from stream_monitor.state.memory import MemoryStore
from stream_monitor.topology import DEFAULT_TOPOLOGY, TopologyError, load_topology, parse_topology

pytestmark = pytest.mark.unit

START = 1_764_028_800_000
MINUTE = 60_000
RATE = 25.0


def _events(seed: int, minutes: int, incidents: tuple[Incident, ...] = ()) -> list[bytes]:
    sim = TrafficSimulator(seed=seed, start_ms=START, rate_per_s=RATE, incidents=incidents)
    return [orjson.dumps(e) for _, _, e in sim.events_until(START + minutes * MINUTE)]


@functools.cache
def _profile_bytes() -> bytes:
    profile, rejected = build_pinned_profile(load_topology(), _events(seed=5, minutes=15), source="seed 5")
    assert not rejected.dead_letters
    return profile.to_json()


def _pinned_topology(tmp_path: Path, **features: Any) -> Topology:
    (tmp_path / "profile.json").write_bytes(_profile_bytes())
    doc = yaml.safe_load(DEFAULT_TOPOLOGY.read_text())
    doc["signals"]["features"].update({"reference": "pinned", "pinned_profile": "profile.json", **features})
    return parse_topology(doc, base_dir=tmp_path)


def _run(topology: Topology, lines: list[bytes]) -> list[Alert]:
    sink = ListSink()
    clock = EventTimeClock(START)
    engine = Engine(
        topology, MemoryStore(), sink, sink, clock, options=EngineOptions(worker_id="t", auto_claim=True)
    )
    pipeline = InProcessPipeline(engine, Topics(), partitions=2)
    for n, line in enumerate(lines, 1):
        ts = orjson.loads(line)["ts"]
        clock.observe(ts)
        pipeline.feed(None, None, line)
        if n % 2000 == 0:
            pipeline.step()
    pipeline.step(final=True)
    assert not sink.dead_letters
    return [a for a in sink.alerts if a.status == "firing"]


def test_the_profile_holds_every_slice_with_version_and_arm_merged() -> None:
    profile = PinnedProfile.from_json(_profile_bytes())
    total = profile.slices["home-ranker|home|*|*|*"]
    assert set(total) == {"fv.watch_minutes_7d", "fv.days_since_signup", "fc.country", "sc"}
    eu = profile.reference(("home-ranker", "any-version", "canary", "home", "*", "eu", "*"), "fc.country")
    assert eu is not None and sum(eu.values()) > 300
    # Merged over arms and versions: the roll-up holds as many values as its slices together.
    regions = [
        s
        for s in profile.slices
        if s.startswith("home-ranker|home|*|") and s.endswith("|*") and s.count("*") == 2
    ]
    by_region = sum(sum(profile.slices[s]["fc.country"].values()) for s in regions)
    assert by_region == sum(total["fc.country"].values())


def test_clean_traffic_matches_its_pinned_profile(tmp_path: Path) -> None:
    alerts = _run(_pinned_topology(tmp_path), _events(seed=1, minutes=20))
    assert [a for a in alerts if a.signal == "feature_drift"] == []


def test_a_drifted_feature_is_found_against_the_pinned_profile_from_the_first_window(tmp_path: Path) -> None:
    onset = START + 5 * MINUTE
    incident = Incident("feature_drift", onset_ms=onset, duration_ms=10 * MINUTE, target={"region": "eu"})
    alerts = _run(_pinned_topology(tmp_path), _events(seed=2, minutes=20, incidents=(incident,)))
    drift = [a for a in alerts if a.signal == "feature_drift"]
    assert drift, [(a.signal, a.metric, a.key) for a in alerts]
    first = min(drift, key=lambda a: a.window["start"])
    assert first.metric == "psi.watch_minutes_7d" and first.key["region"] == "eu"
    assert "pinned reference" in first.message
    assert first.window["start"] <= onset + MINUTE  # no reference to warm up


def test_a_profile_made_under_other_bins_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"made with binning .*rebuild it"):
        _pinned_topology(tmp_path, numeric={"watch_minutes_7d": {"range": [0, 500]}, "days_since_signup": {}})


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"schema": "nope"}, "schema is 'nope'"),
        ({"schema": "stream-monitor.profile/v1"}, "no fingerprint"),
        (
            {"schema": "stream-monitor.profile/v1", "fingerprint": "f", "slices": []},
            "slices must be an object",
        ),
        (
            {"schema": "stream-monitor.profile/v1", "fingerprint": "f", "slices": {"s": {"sc": {"1": -2}}}},
            "bin '1': count -2 is not a finite number",
        ),
    ],
)
def test_malformed_profiles_are_refused_with_the_reason(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileFormatError, match=message):
        PinnedProfile.from_json(orjson.dumps(doc))


def test_the_topology_names_a_missing_profile_file(tmp_path: Path) -> None:
    doc = yaml.safe_load(DEFAULT_TOPOLOGY.read_text())
    doc["signals"]["features"].update({"reference": "pinned", "pinned_profile": "absent.json"})
    with pytest.raises(TopologyError, match=r"pinned_profile: cannot read .*absent\.json"):
        parse_topology(doc, base_dir=tmp_path)
    doc["signals"]["features"].pop("pinned_profile")
    with pytest.raises(TopologyError, match="reference: pinned needs a pinned profile"):
        parse_topology(doc, base_dir=tmp_path)


def test_the_profile_command_writes_a_loadable_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(_events(seed=3, minutes=2)) + b"\nnot json\n")
    out = tmp_path / "ref.json"
    assert main(["profile", str(events), "-o", str(out)]) == 0
    assert "rejected: invalid_json=1" in capsys.readouterr().err
    assert PinnedProfile.from_json(out.read_bytes()).slices
    assert main(["profile", str(tmp_path / "none.jsonl"), "-o", str(out)]) == 2
