"""``stream-monitor profile FILE``: a pinned reference profile from recorded events, for drift tests.

Feed it serving events that describe how the data *should* look (the training set's requests written as
serving events, or a recorded day you trust) and point the topology at the result::

    stream-monitor profile training.jsonl -o topologies/training-profile.json

    signals:
      features:
        reference: pinned
        pinned_profile: training-profile.json   # relative to the topology file

Each window of live traffic is then compared, per slice (model, surface and segment values; model
version and arm merged), with the pinned histogram of the same slice. The profile is made with the
topology's bins and refuses to load under other bins. No servers are needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stream_monitor.cli._common import add_topology_arg, load_settings_and_topology
from stream_monitor.profiling import build_pinned_profile


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "profile",
        help="build a pinned reference profile (e.g. of training data) from a JSONL file of events",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, help="JSONL file of serving events ('-' for standard input)")
    p.add_argument("-o", "--out", type=Path, required=True, help="where to write the profile (JSON)")
    add_topology_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    _settings, topology = load_settings_and_topology(args)
    if str(args.file) != "-" and not args.file.is_file():
        print(f"profile: {args.file}: no such file", file=sys.stderr)
        return 2
    if str(args.file) == "-":
        profile, rejected = build_pinned_profile(topology, sys.stdin.buffer, source="stdin")
    else:
        with open(args.file, "rb") as lines:
            profile, rejected = build_pinned_profile(topology, lines, source=args.file.name)
    if not profile.slices:
        print(
            f"profile: no profiled serving event in {args.file} "
            f"({len(rejected.dead_letters)} lines rejected)",
            file=sys.stderr,
        )
        return 1
    args.out.write_bytes(profile.to_json())
    reasons: dict[str, int] = {}
    for record in rejected.dead_letters:
        reasons[record.reason] = reasons.get(record.reason, 0) + 1
    rejected_text = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())) or "none"
    print(
        f"profile: {profile.meta.get('events', 0)} lines, {len(profile.slices)} slices, "
        f"fingerprint {profile.fingerprint}, rejected: {rejected_text} -> {args.out}",
        file=sys.stderr,
    )
    return 0
