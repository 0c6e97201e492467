"""stream-monitor: a streaming monitor for production recommendation systems.

The public surface is what ``__all__`` lists; everything else may change without notice.

>>> import stream_monitor
>>> event = b'{"type":"engagement","request_id":"r","ts":1764086400000,"action":"play"}'
>>> stream_monitor.parse_event(event).action
'play'
"""

from stream_monitor.config import Settings, Topics
from stream_monitor.core.alerts import Alert, AlertBook, DetectorState
from stream_monitor.core.clock import Clock, ManualClock, SystemClock
from stream_monitor.core.events import (
    DeploymentEvent,
    EngagementEvent,
    EventError,
    ServingEvent,
    parse_event,
)
from stream_monitor.core.topology import Topology
from stream_monitor.core.windows import WindowSpec
from stream_monitor.engine import Engine, EngineOptions
from stream_monitor.state import CommitResult, MemoryStore, StateLost, StateStore, StoreUnavailable
from stream_monitor.topology import TopologyError, load_topology

__version__ = "0.1.0"

__all__ = [
    "Alert",
    "AlertBook",
    "Clock",
    "CommitResult",
    "DeploymentEvent",
    "DetectorState",
    "EngagementEvent",
    "Engine",
    "EngineOptions",
    "EventError",
    "ManualClock",
    "MemoryStore",
    "ServingEvent",
    "Settings",
    "StateLost",
    "StateStore",
    "StoreUnavailable",
    "SystemClock",
    "Topics",
    "Topology",
    "TopologyError",
    "WindowSpec",
    "__version__",
    "load_topology",
    "parse_event",
]
