"""Benchmarks that measure the monitor on simulated traffic with known ground truth.

:mod:`stream_monitor.bench.detection` scores detection (recall, delay, localisation, false alerts) on the
simulator's incident library; ``stream-monitor bench detection`` runs it. Results and how to read them
are in docs/benchmarks.md.
"""

from __future__ import annotations
