"""stream-monitor: a streaming monitor for production recommendation systems."""

__version__ = "0.1.0"
