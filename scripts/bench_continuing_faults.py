#!/usr/bin/env python3
"""Continuing faults: does one fault that goes on give one alert, and does any alert resolve during it?

For each window-signal incident kind, ``stream_monitor.bench.continuing`` injects the kind open-ended
from minute 10 and watches it for ``--minutes``; per kind this prints the alerts opened after the onset,
the re-opened ones ("trains") and those resolved while the fault went on (none should: it never ends).

Usage (numbers in docs/benchmarks.md, "Continuing faults"):
    .venv/bin/python scripts/bench_continuing_faults.py                       # 20 requests/s, 40 min
    .venv/bin/python scripts/bench_continuing_faults.py --rate 1 --minutes 90 # sparse traffic
"""

from __future__ import annotations

import argparse

from stream_monitor.bench.continuing import continuing_fault, window_kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=20.0, help="simulated requests/s")
    parser.add_argument(
        "--minutes", type=int, default=40, help="simulated minutes (the fault from minute 10)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kinds", help="comma-separated kinds (default: every window-signal kind)")
    args = parser.parse_args()
    kinds = args.kinds.split(",") if args.kinds else window_kinds()
    opened = trains = resolved = 0
    print(f"{'kind':28s} {'signal':18s} opened trains resolved-during-fault")
    for kind in kinds:
        run = continuing_fault(kind, args.rate, args.minutes, args.seed)
        opened, trains, resolved = opened + run.opened, trains + run.trains, resolved + len(run.resolved)
        example = f"  e.g. {sorted(run.resolved)[0]}" if run.resolved else ""
        print(f"{kind:28s} {run.signal:18s} {run.opened:6d} {run.trains:6d} {len(run.resolved):8d}{example}")
    print(f"{'total':47s} {opened:6d} {trains:6d} {resolved:8d}")


if __name__ == "__main__":
    main()
