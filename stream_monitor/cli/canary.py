"""``stream-monitor canary MODEL``: the model's current canary verdict and its evidence, from the store.

Reads the newest verdict (narrowed by ``--version``, ``--deployment``, ``--kind``) exactly as the
rollout gate does, and prints it with one row per metric. The exit code is the gate's decision, for
scripts: 0 PROMOTE, 1 ROLLBACK, 3 HOLD (including a verdict past its ``valid_until``), 4 no verdict,
75 Redis does not answer, 2 a setting is wrong (docs/troubleshooting.md).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from stream_monitor.cli._common import format_table
from stream_monitor.core.clock import Clock, SystemClock
from stream_monitor.runtime.preflight import EXIT_UNAVAILABLE
from stream_monitor.sinks.health import read_gate
from stream_monitor.state.base import StateStore, StoreUnavailable

__all__ = ["EXIT_CODES", "add_parser", "render_verdict", "run", "show"]

EXIT_CODES = {"PROMOTE": 0, "ROLLBACK": 1, "HOLD": 3}
EXIT_NO_VERDICT = 4
EXIT_STORE = EXIT_UNAVAILABLE


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "canary",
        help="print a model's current canary verdict and its evidence (from Redis)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="model name")
    p.add_argument("--version", help="only a verdict about this candidate version")
    p.add_argument("--deployment", help="only a verdict about this rollout id (e.g. v2@1764086400000)")
    p.add_argument("--kind", choices=("canary", "shadow"), help="only canary or only shadow verdicts")
    p.add_argument("--json", action="store_true", help="print the gate answer and the verdict document")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from stream_monitor.cli._common import open_store, report_problems
    from stream_monitor.config import Settings
    from stream_monitor.runtime.preflight import redis_problems

    settings = Settings()
    problems = redis_problems(settings)
    if problems:
        return report_problems("canary", problems)
    return show(
        open_store(settings),
        args.model,
        version=args.version,
        deployment=args.deployment,
        kind=args.kind,
        as_json=args.json,
    )


def show(
    store: StateStore,
    model: str,
    version: str | None = None,
    deployment: str | None = None,
    kind: str | None = None,
    as_json: bool = False,
    clock: Clock | None = None,
    out: IO[str] | None = None,
) -> int:
    """Print the verdict; returns the exit code (see the module docstring)."""
    out = out or sys.stdout
    now = (clock or SystemClock()).now_ms()
    try:
        _status, gate, doc = read_gate(store, model, now, version, deployment, kind)
    except StoreUnavailable as exc:
        print(f"canary: {exc}", file=sys.stderr)
        return EXIT_STORE
    if as_json:
        text = orjson.dumps({"gate": gate, "document": doc}, option=orjson.OPT_INDENT_2).decode()
        out.write(text + "\n")
    elif doc is not None:
        out.write(render_verdict(doc, gate))
    if doc is None:
        print(
            f"canary: no verdict for model {model!r}{_narrowed(version, deployment, kind)}", file=sys.stderr
        )
        return EXIT_NO_VERDICT
    return EXIT_CODES[gate["decision"]]


def _narrowed(version: str | None, deployment: str | None, kind: str | None) -> str:
    parts = [f"{n}={v}" for n, v in (("version", version), ("deployment", deployment), ("kind", kind)) if v]
    return f" ({', '.join(parts)})" if parts else ""


def render_verdict(doc: dict[str, Any], gate: dict[str, Any]) -> str:
    """A verdict for people: the decision and why, then the evidence per metric, suspects and lineage."""
    cand, base = doc.get("candidate") or {}, doc.get("baseline") or {}
    window = doc.get("window") or {}
    lines = [
        f"{doc.get('model')} {doc.get('kind')} {doc.get('deployment')}: candidate {cand.get('version')} "
        f"({cand.get('arm')}) vs baseline {base.get('version')} ({base.get('arm')})",
        f"decision {gate['decision']}  verdict {gate['verdict']}  score {_num(doc.get('score'))}/100  "
        f"window {_when(window.get('start'))} - {_when(window.get('end'))} UTC",
        f"emitted {_when(doc.get('emitted_at'))} UTC, valid until {_when(doc.get('valid_until'))} UTC"
        + ("  (EXPIRED: the gate answers HOLD)" if gate["stale"] else ""),
        f"reason: {gate['reason']}",
        "",
    ]
    rows = [
        (
            "METRIC",
            "GROUP",
            "CRITICAL",
            "RESULT",
            "ESTIMATE",
            "INTERVAL",
            "UNIT",
            "N CAND",
            "N BASE",
            "DETAIL",
        )
    ]
    for m in doc.get("metrics") or []:
        if not isinstance(m, dict):
            continue
        rows.append(
            (
                str(m.get("name", "?")),
                str(m.get("group", "-")),
                "yes" if m.get("critical") else "no",
                str(m.get("classification", "?")),
                _num(m.get("estimate")),
                f"[{_num(m.get('lower'))}, {_num(m.get('upper'))}]",
                str(m.get("unit") or "-"),
                _num(m.get("n_candidate")),
                _num(m.get("n_baseline")),
                str(m.get("detail") or ""),
            )
        )
    if len(rows) > 1:
        lines.extend(format_table(rows))
    else:
        lines.append("(no metrics in the verdict)")
    suspects = [s for s in doc.get("suspects") or [] if isinstance(s, dict)]
    if suspects:
        lines.append("")
        lines.append("suspects:")
        lines.extend(f"  {s.get('kind')} {s.get('name')}: {s.get('evidence')}" for s in suspects)
    for side, part in (("candidate", cand), ("baseline", base)):
        lineage = part.get("lineage") if isinstance(part, dict) else None
        if isinstance(lineage, dict) and lineage:
            text = ", ".join(f"{k}={_lineage_value(v)}" for k, v in lineage.items())
            lines.append(f"{side} lineage: {text}")
    return "\n".join(lines) + "\n"


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.4g}"


def _when(ms: Any) -> str:
    if not isinstance(ms, int):
        return "?"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _lineage_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)
