"""``stream-monitor bench SUITE``: benchmarks on simulated traffic with known ground truth.

``bench detection`` runs the simulator's incident library (every incident kind, several magnitudes, a
few seeds) and clean traffic through the same in-process engine as ``demo`` and ``replay``, and reports
per incident kind and magnitude the recall, the detection delay and whether the alert named the right
slice, plus false alerts per simulated day, for the monitor and for baselines (static thresholds without
localisation, the default detector stack per series, river's HalfSpaceTrees and ADWIN per event).
``--quick`` is a smoke run of under a minute.

``bench throughput`` runs the real worker (``stream-monitor worker`` in a subprocess) against the Kafka
broker and Redis named by the settings (STREAM_MONITOR_KAFKA_BOOTSTRAP, STREAM_MONITOR_REDIS_URL) on
fresh topics and keys: events/s per worker process, event-to-alert latency of injected incidents, Redis
commands per 1,000 events, peak RSS and Redis bytes per tracked series, for one event per message and for
NDJSON batches, beside the raw consume + parse ceiling and a naive per-event Faust agent; then memory with
10, 1,000 and 100,000 tracked series. ``--quick`` is a smoke run of a few minutes.

``bench canary`` runs many seeded A/A canaries and the simulator's three bad canaries through the canary
analysis (docs/canary.md): the false-ROLLBACK rate against the configured alpha, false PROMOTEs, and the
impressions and windows needed to decide.

``bench shadow`` runs seeded healthy shadows and the simulator's three bad shadows through the shadow
analysis (docs/canary.md "Shadow analysis"): how often a healthy shadow is ever rolled back, and the
windows and compared pairs needed to roll back a bad one.

``bench series [DIR]`` runs univariate streaming anomaly detectors (NAB's null and windowed Gaussian
baselines, river's HalfSpaceTrees, the project's default detector stack) row by row on labelled series and
scores them as the Numenta Anomaly Benchmark does (standard profile): the score at each detector's default
threshold and at the best single threshold for the corpus, windows detected, false-positive rows, and
the score per family. DIR is laid out like NAB (``DIR/data/**/*.csv``, ``DIR/labels/combined_windows.json``;
a checkout of NAB works); without it, a seeded built-in synthetic corpus (``--seed``) after NAB's
artificial series, Yahoo S5 A3/A4 and Twitter's examples, which ``--write DIR`` writes in NAB's layout.
``--quick`` is a smoke run of a few seconds.

See docs/benchmarks.md for the numbers of full runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from stream_monitor.bench.detection import (
    DetectionBenchConfig,
    format_report,
    quick_config,
    run_detection_bench,
)
from stream_monitor.cli._common import report_problems
from stream_monitor.sim import INCIDENT_KINDS

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmarks on simulated traffic (detection, throughput)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    suites = p.add_subparsers(dest="suite", required=True, metavar="SUITE")
    d = suites.add_parser(
        "detection",
        help="recall, delay, localisation and false alerts on the simulator's incidents",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument(
        "--seeds", type=_positive, help="seeds per incident kind and magnitude (default 5; 1 quick)"
    )
    d.add_argument(
        "--kinds",
        help="comma-separated incident kinds to run (default: every kind of the simulator's library)",
    )
    d.add_argument("--json", type=Path, metavar="OUT.json", help="also write the full report as JSON")
    d.add_argument("--quick", action="store_true", help="smoke run: 2 kinds, 1 seed, 2 h of clean traffic")
    d.add_argument(
        "--clean-days", type=float, help="simulated days of clean traffic (default 5; 2 hours with --quick)"
    )
    d.add_argument(
        "--jobs",
        type=_positive,
        default=min(2, os.cpu_count() or 1),
        help="processes to run simulations in (default: up to 2)",
    )
    d.add_argument("--no-naive", action="store_true", help="skip the per-event river baselines")
    d.add_argument("--no-synthetic", action="store_true", help="skip river's synthetic streams")
    d.add_argument("--topology", help="topology YAML (default: the packaged default topology)")
    t = suites.add_parser(
        "throughput",
        help="events/s, latency, Redis calls and memory of the real worker on Kafka + Redis",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--events", type=_positive, help="backlog events per format (default 1,000,000)")
    t.add_argument("--json", type=Path, metavar="OUT.json", help="also write the full report as JSON")
    t.add_argument(
        "--quick", action="store_true", help="smoke run: 20k events, 1 latency round, 10/1k series"
    )
    t.add_argument(
        "--format",
        dest="formats",
        action="append",
        choices=("message", "ndjson"),
        help="message format to run (repeatable; default both)",
    )
    t.add_argument("--series", type=_positive, action="append", help="series counts of the memory runs")
    t.add_argument("--latency-rounds", type=int, help="rounds of 3 incidents on live traffic (0: none)")
    t.add_argument("--no-naive", action="store_true", help="skip the naive Faust baseline")
    t.add_argument(
        "--no-stream-reference",
        action="store_true",
        help="skip the worker with Faust's per-message stream delivery (not run by --quick)",
    )
    t.add_argument("--topology", help="topology YAML (default: the packaged default topology)")
    t.add_argument("--log-dir", help="keep the worker logs here (default: a temporary directory)")
    t.set_defaults(func=run_throughput)
    _add_canary(suites)
    _add_diagnose(suites)
    _add_shadow(suites)
    _add_series(suites)
    p.set_defaults(func=run)


def _add_diagnose(suites: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    g = suites.add_parser(
        "diagnose",
        help="hit rate of `diagnose`: is the injected cause ranked first / in the top 3, per incident kind",
    )
    g.add_argument("--seeds", type=_positive, default=5, help="seeds per incident kind (default 5)")
    g.add_argument("--kinds", help="comma-separated incident kinds (default: every kind)")
    g.add_argument("--jobs", type=_positive, default=min(2, os.cpu_count() or 1), help="processes")
    g.add_argument("--json", type=Path, metavar="OUT.json", help="also write the full report as JSON")
    g.add_argument(
        "--magnitude",
        choices=("default", "smallest"),
        default="default",
        help="each kind's default magnitude, or the smallest one of `bench detection` (harder)",
    )
    g.add_argument("--topology", help="topology YAML (default: the packaged default topology)")
    g.add_argument(
        "--live",
        action="store_true",
        help="run each incident through Kafka, a worker subprocess and Redis "
        "(STREAM_MONITOR_KAFKA_BOOTSTRAP, STREAM_MONITOR_REDIS_URL) and diagnose from Redis; "
        "also the in-process rank of the same traffic",
    )
    g.add_argument("--first-seed", type=int, default=0, help="with --live: the first seed (default 0)")
    g.add_argument(
        "--timeout", type=float, default=600.0, help="with --live: seconds per run at most (default 600)"
    )
    g.add_argument(
        "--delivery",
        choices=("batch", "stream"),
        default="batch",
        help="with --live: the worker's delivery (default batch)",
    )
    g.add_argument("--no-compare", action="store_true", help="with --live: skip the in-process run")
    g.add_argument("--log-dir", help="with --live: keep the worker logs here")
    g.set_defaults(func=run_diagnose)


def run_diagnose(args: argparse.Namespace) -> int:
    from stream_monitor.bench.diagnose import DiagnoseBenchConfig, run_diagnose_bench
    from stream_monitor.bench.diagnose import format_report as format_diagnose

    kinds = tuple(INCIDENT_KINDS)
    if args.kinds:
        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    try:
        config = DiagnoseBenchConfig(
            seeds=args.seeds,
            kinds=kinds,
            jobs=args.jobs,
            topology=args.topology,
            magnitude=args.magnitude,
        )
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2

    def progress(message: str) -> None:
        print(f"bench diagnose: {message}", file=sys.stderr, flush=True)

    if args.live:
        return _run_diagnose_live(args, config, progress)
    report = run_diagnose_bench(config, progress)
    print(format_diagnose(report))
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        progress(f"report written to {args.json}")
    return 0


def _run_diagnose_live(args: argparse.Namespace, config: Any, progress: Callable[[str], None]) -> int:
    from stream_monitor.bench.diagnose_live import (
        LiveDiagnoseBenchConfig,
        format_live_report,
        run_live_diagnose_bench,
    )
    from stream_monitor.config import Settings

    settings = Settings()
    if problems := _server_problems(settings):
        return report_problems("bench diagnose", problems)
    try:
        live = LiveDiagnoseBenchConfig(
            config,
            settings.kafka_bootstrap,
            settings.redis_url.get_secret_value(),
            delivery=args.delivery,
            timeout_s=args.timeout,
            compare=not args.no_compare,
            log_dir=args.log_dir,
            first_seed=args.first_seed,
        )
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    report = run_live_diagnose_bench(live, progress)
    print(format_live_report(report))
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        progress(f"report written to {args.json}")
    return 0 if not report["overall"]["errors"] else 1


def run_throughput(args: argparse.Namespace) -> int:
    from stream_monitor.bench.throughput import (
        BenchError,
        ThroughputBenchConfig,
        format_report,
        quick_config,
        run_throughput_bench,
    )
    from stream_monitor.config import Settings

    options: dict[str, object] = {
        "naive": not args.no_naive,
        "topology": args.topology,
        "log_dir": args.log_dir,
    }
    if args.no_stream_reference:
        options["stream_reference"] = False
    for name, value in (
        ("events", args.events),
        ("formats", tuple(args.formats) if args.formats else None),
        ("series_counts", tuple(args.series) if args.series else None),
        ("latency_rounds", args.latency_rounds),
    ):
        if value is not None:
            options[name] = value
    try:
        config = quick_config(**options) if args.quick else ThroughputBenchConfig(**options)  # type: ignore[arg-type]
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    settings = Settings()
    if problems := _server_problems(settings):
        return report_problems("bench throughput", problems)

    def progress(message: str) -> None:
        print(f"bench throughput: {message}", file=sys.stderr, flush=True)

    try:
        report = run_throughput_bench(
            config, settings.kafka_bootstrap, settings.redis_url.get_secret_value(), progress
        )
    except BenchError as exc:
        print(f"bench throughput: failed: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        progress(f"report written to {args.json}")
    return 0


def _server_problems(settings: Any) -> list[Any]:
    """Kafka's and Redis's start-up problems (a few seconds each): one line each instead of a stuck run."""
    from stream_monitor.runtime.preflight import kafka_problems, redis_problems

    return kafka_problems(settings) + redis_problems(settings)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def run(args: argparse.Namespace) -> int:
    options: dict[str, object] = {
        "jobs": args.jobs,
        "naive": not args.no_naive,
        "synthetic": not args.no_synthetic,
        "topology": args.topology,
    }
    if args.seeds is not None:
        options["seeds"] = args.seeds
    if args.kinds:
        kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
        unknown = sorted(set(kinds) - set(INCIDENT_KINDS))
        if unknown or not kinds:
            print(
                f"bench: unknown incident kinds {unknown}; expected some of {sorted(INCIDENT_KINDS)}",
                file=sys.stderr,
            )
            return 2
        options["kinds"] = kinds
    if args.clean_days is not None:
        if args.clean_days < 0:
            print("bench: --clean-days must be >= 0", file=sys.stderr)
            return 2
        options["clean_days"] = args.clean_days
    config = quick_config(**options) if args.quick else DetectionBenchConfig(**options)  # type: ignore[arg-type]

    def progress(message: str) -> None:
        print(f"bench detection: {message}", file=sys.stderr, flush=True)

    report = run_detection_bench(config, progress)
    print(format_report(report))
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        progress(f"report written to {args.json}")
    return 0


def _add_canary(suites: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = suites.add_parser(
        "canary",
        help="false rollbacks of A/A canaries and the cost of catching bad ones",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument(
        "--aa-seeds", type=_positive, default=400, help="A/A runs on window aggregates (default 400)"
    )
    c.add_argument("--aa-full-seeds", type=int, default=3, help="A/A runs through the engine (default 3)")
    c.add_argument("--bad-seeds", type=_positive, default=3, help="runs per bad canary (default 3)")
    c.add_argument(
        "--minutes", type=_positive, default=90, help="simulated minutes per full run (default 90)"
    )
    c.add_argument("--rate", type=float, default=100.0, help="requests per second of full runs (default 100)")
    c.add_argument(
        "--windows", type=_positive, default=120, help="windows per aggregate A/A run (default 120)"
    )
    c.add_argument(
        "--ctr-drop-seeds",
        type=int,
        default=50,
        help="canary_ctr_drop runs on window aggregates (default 50)",
    )
    c.add_argument("--quick", action="store_true", help="smoke run: 20 aggregate A/A, 1 seed each, 30 min")
    c.add_argument("--json", type=Path, metavar="OUT.json", help="also write the full report as JSON")
    c.add_argument("--topology", help="topology YAML (default: the packaged default topology)")
    c.set_defaults(func=run_canary)


def run_canary(args: argparse.Namespace) -> int:
    from stream_monitor.bench.canary import format_table, run_bench
    from stream_monitor.topology import TopologyError, load_topology

    try:
        topology = load_topology(args.topology)
    except TopologyError as exc:
        print(f"bench canary: {exc}", file=sys.stderr)
        return 2
    if args.quick:
        report = run_bench(
            topology,
            aa_seeds=20,
            aa_full_seeds=1,
            bad_seeds=1,
            minutes=30,
            rate=args.rate,
            aggregate_windows=30,
            ctr_drop_seeds=3,
        )
    else:
        report = run_bench(
            topology,
            aa_seeds=args.aa_seeds,
            aa_full_seeds=max(0, args.aa_full_seeds),
            bad_seeds=args.bad_seeds,
            minutes=args.minutes,
            rate=args.rate,
            aggregate_windows=args.windows,
            ctr_drop_seeds=max(0, args.ctr_drop_seeds),
        )
    print(format_table(report))
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"bench canary: report written to {args.json}", file=sys.stderr)
    return 0


def _add_shadow(suites: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = suites.add_parser(
        "shadow",
        help="false rollbacks of healthy shadows and the cost of catching bad ones",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--healthy-seeds", type=_positive, default=20, help="healthy shadow runs (default 20)")
    c.add_argument("--bad-seeds", type=_positive, default=5, help="runs per bad shadow (default 5)")
    c.add_argument(
        "--weak-seeds", type=int, default=0, help="runs per weaker bad shadow (bench/shadow.py; default 0)"
    )
    c.add_argument("--minutes", type=_positive, default=15, help="simulated minutes per run (default 15)")
    c.add_argument("--rate", type=float, default=50.0, help="requests per second (default 50)")
    c.add_argument(
        "--share", type=float, default=0.5, help="share of requests the shadow scores (default 0.5)"
    )
    c.add_argument("--quick", action="store_true", help="smoke run: 3 healthy, 1 seed per bad shadow, 6 min")
    c.add_argument("--json", type=Path, metavar="OUT.json", help="also write the full report as JSON")
    c.add_argument("--topology", help="topology YAML (default: the packaged default topology)")
    c.set_defaults(func=run_shadow_bench)


def run_shadow_bench(args: argparse.Namespace) -> int:
    from stream_monitor.bench.shadow import format_table, run_bench
    from stream_monitor.topology import TopologyError, load_topology

    try:
        topology = load_topology(args.topology)
    except TopologyError as exc:
        print(f"bench shadow: {exc}", file=sys.stderr)
        return 2
    if not 0.0 < args.share <= 1.0:
        print(f"bench shadow: --share must be in (0, 1], got {args.share}", file=sys.stderr)
        return 2
    if args.quick:
        report = run_bench(
            topology, healthy_seeds=3, bad_seeds=1, minutes=6, rate=args.rate, shadow_share=args.share
        )
    else:
        report = run_bench(
            topology,
            healthy_seeds=args.healthy_seeds,
            bad_seeds=args.bad_seeds,
            minutes=args.minutes,
            rate=args.rate,
            shadow_share=args.share,
            weak_seeds=max(0, args.weak_seeds),
        )
    print(format_table(report))
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        print(f"bench shadow: report written to {args.json}", file=sys.stderr)
    return 0


def _add_series(suites: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = suites.add_parser(
        "series",
        help="NAB-scored univariate detectors on labelled series (a NAB-style DIR or a built-in corpus)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument(
        "dir",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="a corpus laid out like NAB (default: the built-in synthetic corpus)",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the built-in corpus (default 0)")
    s.add_argument("--contenders", help="comma-separated contenders to run (default: all)")
    s.add_argument("--json", type=Path, metavar="OUT.json", help="also write the full report as JSON")
    s.add_argument(
        "--write", type=Path, metavar="DIR", help="write the built-in corpus to DIR in NAB's layout and exit"
    )
    s.add_argument(
        "--quick", action="store_true", help="smoke run: the built-in corpus, one short series per family"
    )
    s.add_argument("--jobs", type=_positive, default=min(2, os.cpu_count() or 1), help="processes")
    s.set_defaults(func=run_series)


def run_series(args: argparse.Namespace) -> int:
    from stream_monitor.bench.series import (
        CONTENDERS,
        CorpusError,
        SeriesBenchConfig,
        read_corpus,
        run_series_bench,
        write_corpus,
    )
    from stream_monitor.bench.series import format_report as format_series
    from stream_monitor.bench.series_corpus import build_corpus

    def progress(message: str) -> None:
        print(f"bench series: {message}", file=sys.stderr, flush=True)

    if args.dir is not None and (args.write is not None or args.quick):
        print("bench series: --write and --quick are for the built-in corpus, not with DIR", file=sys.stderr)
        return 2
    names = tuple(CONTENDERS)
    if args.contenders:
        names = tuple(name.strip() for name in args.contenders.split(",") if name.strip())
    try:
        config = SeriesBenchConfig(contenders=names, jobs=args.jobs)
    except ValueError as exc:
        print(f"bench series: {exc}", file=sys.stderr)
        return 2
    notes: list[str] = []
    if args.dir is not None:
        try:
            corpus, notes = read_corpus(args.dir)
        except (CorpusError, OSError) as exc:
            print(f"bench series: {exc}", file=sys.stderr)
            return 2
        source = f"corpus {args.dir}"
    else:
        corpus = build_corpus(args.seed, quick=args.quick)
        source = f"built-in synthetic corpus, seed {args.seed}" + (" (quick)" if args.quick else "")
    if args.write is not None:
        write_corpus(corpus, args.write)
        progress(f"{len(corpus)} files and labels/combined_windows.json written to {args.write}")
        return 0
    report = run_series_bench(corpus, source, config, progress, notes)
    print(format_series(report))
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        progress(f"report written to {args.json}")
    return 0
