"""A :class:`~stream_monitor.core.diagnosis.Diagnosis` as a terminal report or a self-contained HTML page.

The HTML page needs no network: its plots are inline SVG drawn here (timeline of the top suspects'
series with deployment, dataset and onset markers; drill-down bars), its style is inline CSS.
"""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Sequence
from typing import Any

from stream_monitor.core.diagnosis import Diagnosis

__all__ = ["render_html", "render_text"]

_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_MARKER_COLOURS = {
    "deployment": "#444",
    "dataset": "#17becf",
    "alert": "#d62728",
    "suspect": "#ff7f0e",
    "moved": "#bbb",
}


def _t(ms: int | None) -> str:
    if ms is None:
        return "-"
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render_text(d: Diagnosis) -> str:
    """The terminal report.

    >>> print(render_text(Diagnosis(None, None, None, 60_000)).splitlines()[0])
    Diagnosis (symptom: -, range: - .. -)
    """
    out = [f"Diagnosis (symptom: {d.symptom or '-'}, range: {_t(d.since_ms)} .. {_t(d.until_ms)})"]
    for note in d.notes:
        out.append(f"  note: {note}")
    out.append("")
    out.append("Suspects (most likely first)")
    if not d.suspects:
        out.append("  none: no alert opened and no release changed in the range")
    for rank, s in enumerate(d.suspects, 1):
        comps = " ".join(f"{k}={v:.2f}" for k, v in s.components.items())
        out.append(f"  {rank}. [{s.kind}] {s.name}  score {s.score:.2f} ({comps})  onset {_t(s.onset_ms)}")
        for line in s.evidence:
            out.append(f"       - {line}")
        if s.rollback_target:
            out.append(f"       -> roll back {s.key.get('arm')} to {s.rollback_target}")
        if s.lineage:
            for version, lineage in list(s.lineage.items())[:2]:
                fields = ", ".join(f"{k}={v}" for k, v in lineage.items() if k not in ("validation",))
                out.append(f"       lineage {version}: {fields}")
        if s.examples:
            out.append(f"       example requests: {', '.join(s.examples)}")
    out.append("")
    out.append("Timeline")
    for m in d.timeline[:40]:
        out.append(f"  {_t(m.ts)}  {m.kind:<10} {m.label}")
    if d.dimensions:
        out.append("")
        out.append(f"Drill-down of {d.symptom} (Adtributor: explanatory power, surprise)")
        for dim in d.dimensions:
            out.append(
                f"  {dim['dimension']:<14} surprise {dim['surprise']:.4f}  explains {dim['explained']:.0%}"
                f"  -> {', '.join(dim['elements']) or '-'}"
            )
        for row in d.drilldown:
            if row.chosen:
                out.append(
                    f"    {row.dimension}={row.value}: expected {row.expected:.4g}, actual {row.actual:.4g}, "
                    f"EP {row.explanatory_power:.0%}, surprise {row.surprise:.4f}"
                )
    if d.features:
        out.append("")
        out.append("Features that moved (closest to the onset first)")
        for f in d.features[:8]:
            out.append(
                f"  {f['feature']:<22} {f['signal']:<16} moved {_t(f['moved_at'])} "
                f"({f['windows_from_onset']:+d} windows)  {f['series']}"
            )
    if d.funnel.get("stages"):
        out.append("")
        lost = d.funnel.get("lost_at")
        out.append(f"Funnel (pass rate before -> after; candidates lost at: {lost or 'no stage'})")
        for st in d.funnel["stages"]:
            out.append(
                f"  {st['stage']:<10} {st['pass_before']:.3f} -> {st['pass_after']:.3f} ({st['change']:+.1%})"
            )
    top = d.top
    if top is not None:
        out.append("")
        if top.kind == "release" and top.rollback_target:
            out.append(f"Suggested action: roll back {top.key.get('arm')} to {top.rollback_target}")
        else:
            out.append(f"Suggested action: investigate {top.name} first (see its runbook)")
    return "\n".join(out)


# -- HTML ------------------------------------------------------------------------------------------------


def _timeline_svg(d: Diagnosis, width: int = 1200, row_h: int = 110) -> str:
    plots = d.plots
    markers = [m for m in d.timeline if m.kind in ("deployment", "dataset", "alert", "suspect")]
    times = [t for p in plots for t, _ in p["points"]] + [m.ts for m in markers]
    if not times:
        return "<p>No series to plot.</p>"
    t0, t1 = int(min(times)), int(max(times)) + d.window_ms
    left, right, top = 230, 20, 20
    height = top + row_h * max(1, len(plots)) + 40
    span = max(1, t1 - t0)

    def x(t: int) -> float:
        return left + (width - left - right) * (t - t0) / span

    parts = [
        f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="timeline">'
    ]
    for i, plot in enumerate(plots):
        y0 = top + i * row_h
        pts = plot["points"]
        values = [v for _, v in pts]
        lo, hi = min(values), max(values)
        rng = (hi - lo) or 1.0
        colour = _COLOURS[i % len(_COLOURS)]
        coords = " ".join(f"{x(t):.1f},{y0 + row_h - 15 - (v - lo) / rng * (row_h - 30):.1f}" for t, v in pts)
        parts.append(
            f'<rect x="{left}" y="{y0}" width="{width - left - right}" height="{row_h - 10}" fill="#fafafa" '
            'stroke="#ddd"/>'
        )
        parts.append(
            f'<polyline class="series" fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>'
        )
        if len(pts) < 3:  # too few points for a visible line
            for pt in coords.split():
                cx, cy = pt.split(",")
                parts.append(f'<circle class="point" cx="{cx}" cy="{cy}" r="4" fill="{colour}"/>')
        label = html.escape(plot["label"])
        parts.append(f'<text x="5" y="{y0 + 20}" font-size="12" fill="{colour}">{label[:34]}</text>')
        parts.append(
            f'<text x="5" y="{y0 + 36}" font-size="11" fill="#666">{html.escape(label[34:68])}</text>'
        )
        parts.append(f'<text x="5" y="{y0 + 56}" font-size="11" fill="#666">max {hi:.4g}</text>')
        parts.append(f'<text x="5" y="{y0 + 72}" font-size="11" fill="#666">min {lo:.4g}</text>')
    bottom = top + row_h * max(1, len(plots))
    for m in markers:
        colour = _MARKER_COLOURS.get(m.kind, "#999")
        dash = ' stroke-dasharray="4 3"' if m.kind != "deployment" else ""
        parts.append(
            f'<line class="marker {m.kind}" x1="{x(m.ts):.1f}" x2="{x(m.ts):.1f}" y1="{top}" y2="{bottom}" '
            f'stroke="{colour}" stroke-width="1.5"{dash}>'
            f"<title>{html.escape(_t(m.ts) + ' ' + m.label)}</title></line>"
        )
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        t = int(t0 + frac * span)
        parts.append(
            f'<text x="{x(t):.1f}" y="{bottom + 18}" font-size="11" text-anchor="middle">'
            f"{_t(t)[11:16]}</text>"
        )
    parts.append(
        f'<text x="{left}" y="{bottom + 34}" font-size="11" fill="#444">solid grey: deployment; red dashed: '
        "suspect onset; teal dashed: dataset arrival (hover for labels)</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _drill_svg(d: Diagnosis, width: int = 1200) -> str:
    # The top-ranked dimension first (its chosen elements in red), then the others by explanatory power.
    top_dim = d.dimensions[0]["dimension"] if d.dimensions else None
    rows = sorted(d.drilldown, key=lambda r: (r.dimension != top_dim, -abs(r.explanatory_power)))[:16]
    if not rows:
        return "<p>No drill-down (no symptom series with a baseline).</p>"
    bar_h, left = 22, 260
    height = 20 + bar_h * len(rows)
    scale = max(abs(r.explanatory_power) for r in rows) or 1.0
    mid = left + (width - left - 40) / 2
    half = (width - left - 40) / 2
    parts = [
        f'<svg id="drilldown" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
    ]
    parts.append(f'<line x1="{mid}" x2="{mid}" y1="0" y2="{height}" stroke="#999"/>')
    for i, r in enumerate(rows):
        y = 10 + i * bar_h
        w = abs(r.explanatory_power) / scale * half
        x0 = mid if r.explanatory_power >= 0 else mid - w
        colour = "#d62728" if r.chosen and r.dimension == top_dim else "#9ecae1"
        parts.append(
            f'<rect class="bar" x="{x0:.1f}" y="{y}" width="{w:.1f}" height="{bar_h - 6}" fill="{colour}"/>'
        )
        parts.append(
            f'<text x="5" y="{y + 13}" font-size="12">{html.escape(r.dimension)}={html.escape(r.value)} '
            f"(EP {r.explanatory_power:.0%}, surprise {r.surprise:.3f})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(d: Diagnosis, title: str = "stream-monitor diagnosis") -> str:
    """A self-contained HTML page (inline SVG and CSS, no scripts, no network)."""
    suspects = _table(
        ("#", "kind", "suspect", "score", "onset", "evidence", "rollback to", "example requests"),
        [
            (
                i,
                s.kind,
                s.name,
                f"{s.score:.2f}",
                _t(s.onset_ms),
                " | ".join(s.evidence),
                s.rollback_target or "",
                ", ".join(s.examples),
            )
            for i, s in enumerate(d.suspects, 1)
        ],
    )
    timeline = _table(("time", "kind", "what"), [(_t(m.ts), m.kind, m.label) for m in d.timeline[:60]])
    dims = _table(
        ("dimension", "surprise", "explained", "elements"),
        [
            (x["dimension"], x["surprise"], f"{x['explained']:.0%}", ", ".join(x["elements"]))
            for x in d.dimensions
        ],
    )
    features = _table(
        ("feature", "signal", "moved at", "windows from onset", "series"),
        [
            (f["feature"], f["signal"], _t(f["moved_at"]), f["windows_from_onset"], f["series"])
            for f in d.features
        ],
    )
    funnel = _table(
        ("stage", "pass before", "pass after", "change"),
        [
            (s["stage"], f"{s['pass_before']:.3f}", f"{s['pass_after']:.3f}", f"{s['change']:+.1%}")
            for s in d.funnel.get("stages", [])
        ],
    )
    top = d.top
    action = ""
    if top is not None:
        action = (
            f"Roll back {top.key.get('arm')} to {top.rollback_target}"
            if top.kind == "release" and top.rollback_target
            else f"Investigate {top.name} first"
        )
    style = (
        "body{font-family:sans-serif;margin:20px;color:#222}table{border-collapse:collapse;margin:8px 0}"
        "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}th{background:#eee}"
        "h1{font-size:22px}h2{font-size:18px;margin-top:28px}.top{background:#fff3cd;padding:10px}"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>Symptom: <b>{html.escape(d.symptom or '-')}</b>; range {_t(d.since_ms)} .. {_t(d.until_ms)}</p>"
        + (
            f"<p class='top'>Most likely: <b>{html.escape(top.name)}</b>. {html.escape(action)}.</p>"
            if top
            else ""
        )
        + "<h2>Timeline</h2>"
        + _timeline_svg(d)
        + "<h2>Suspects</h2>"
        + suspects
        + f"<h2>Drill-down of {html.escape(d.symptom or '-')}</h2>"
        + _drill_svg(d)
        + dims
        + "<h2>Features that moved</h2>"
        + features
        + f"<h2>Funnel (candidates lost at: {html.escape(str(d.funnel.get('lost_at') or 'no stage'))})</h2>"
        + funnel
        + "<h2>Events</h2>"
        + timeline
        + "</body></html>"
    )
