"""Seeded traffic simulator and incident library: synthetic recommender traffic with known ground truth.

Pure (standard library + numpy): nothing here talks to Kafka, Redis or Faust. The ``simulate`` CLI command
and the demo wire it to real transports.
"""

from __future__ import annotations

from stream_monitor.sim.incidents import (
    CANARY_INCIDENT_KINDS,
    DATA_INCIDENT_KINDS,
    DEFAULT_ONSET_S,
    DEFAULT_TARGET,
    INCIDENT_KINDS,
    SHADOW_INCIDENT_KINDS,
    GroundTruth,
    Incident,
    IncidentKind,
    parse_incident,
)
from stream_monitor.sim.traffic import Event, SimConfig, SimEvent, TopicKind, TrafficSimulator

__all__ = [
    "CANARY_INCIDENT_KINDS",
    "DATA_INCIDENT_KINDS",
    "DEFAULT_ONSET_S",
    "DEFAULT_TARGET",
    "INCIDENT_KINDS",
    "SHADOW_INCIDENT_KINDS",
    "Event",
    "GroundTruth",
    "Incident",
    "IncidentKind",
    "SimConfig",
    "SimEvent",
    "TopicKind",
    "TrafficSimulator",
    "parse_incident",
]
