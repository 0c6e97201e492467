"""Command-line interface: one module per command, dispatched by :mod:`stream_monitor.cli.main`."""
