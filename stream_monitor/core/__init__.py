"""The pure detection core: events, windows, aggregates, signals, detectors and alerts.

Nothing in this package imports Kafka, Redis or Faust; it may import the standard library, numpy and river.
"""
