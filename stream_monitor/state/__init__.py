"""State stores: the StateStore protocol and its memory and Redis implementations."""

from stream_monitor.state.base import CommitResult, PartitionClaim, StateLost, StateStore, StoreUnavailable
from stream_monitor.state.memory import MemoryStore

__all__ = ["CommitResult", "MemoryStore", "PartitionClaim", "StateLost", "StateStore", "StoreUnavailable"]
