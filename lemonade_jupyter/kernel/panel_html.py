"""HTML fragments of the dashboard: slots per type, memory sparkline (SVG), recent events.

Pure functions from snapshots to escaped HTML, so they are tested without widgets.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .pools import PoolSummary, format_bytes

__all__ = ["slots_html", "sparkline_svg", "events_html", "header_html"]

_PAD = " style='text-align:left;padding:0 1.2em 0 0'"
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def header_html(source: str, refreshed: float | None, error: str = "") -> str:
    """Title line: where the router is and when the panel last refreshed."""
    when = time.strftime("%H:%M:%S", time.localtime(refreshed)) if refreshed else "never"
    out = (
        f"<div class='lemonade-header'><b>lemonade</b> · {html.escape(source)} · "
        f"updated {when}</div>"
    )
    if error:
        out += f"<div class='lemonade-error' style='color:#c62828'>⚠ {html.escape(error)}</div>"
    return out


def slots_html(pools: Sequence[PoolSummary]) -> str:
    """Slots used/total and pinned counts per type, as a small table."""
    if not pools:
        return "<div class='lemonade-slots'><i>no pools yet</i></div>"
    rows = []
    for p in pools:
        flag = " (all pinned)" if p.full_of_pins else ""
        rows.append(
            f"<tr><td{_PAD}>{html.escape(str(p['type']))}</td>"
            f"<td{_PAD}>{html.escape(p.slots_text)}</td>"
            f"<td{_PAD}>{int(p['pinned'])} pinned{flag}</td></tr>"
        )
    head = "".join(f"<th{_PAD}>{h}</th>" for h in ("type", "slots used", "pins"))
    return (
        f"<table class='lemonade-slots'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def sparkline_svg(
    history: Sequence[Mapping[str, float]], width: int = 240, height: int = 40
) -> str:
    """One polyline per device of used-memory fractions (0..1), oldest left."""
    names: list[str] = []
    for sample in history:
        for name in sample:
            if name not in names:
                names.append(name)
    if len(history) < 2 or not names:
        return "<div class='lemonade-sparkline'><i>collecting memory history…</i></div>"
    step = width / (len(history) - 1)
    lines, legend = [], []
    for i, name in enumerate(names):
        color = _COLORS[i % len(_COLORS)]
        points = " ".join(
            f"{x * step:.1f},{height - 2 - (height - 4) * min(1.0, max(0.0, s[name])):.1f}"
            for x, s in enumerate(history)
            if name in s
        )
        lines.append(
            f"<polyline fill='none' stroke='{color}' stroke-width='1.5' points='{points}'/>"
        )
        legend.append(f"<span style='color:{color}'>■</span> {html.escape(name)}")
    svg = (
        f"<svg class='lemonade-sparkline' width='{width}' height='{height}' "
        f"viewBox='0 0 {width} {height}' style='border:1px solid #ddd'>{''.join(lines)}</svg>"
    )
    return f"<div>{svg} <small>{' '.join(legend)} (last {len(history)} samples)</small></div>"


def _event_line(e: Mapping[str, Any]) -> str:
    stamp = e.get("time")
    when = time.strftime("%H:%M:%S", time.localtime(float(stamp))) if stamp else "?"
    parts = [f"<code>{when}</code> <b>{html.escape(str(e.get('kind', '?')))}</b>"]
    if e.get("model"):
        parts.append(html.escape(str(e["model"])))
    if e.get("reason") and e.get("reason") != e.get("kind"):
        parts.append(f"<i>reason: {html.escape(str(e['reason']))}</i>")
    before, after = e.get("memory_before"), e.get("memory_after")
    if isinstance(before, int) and isinstance(after, int) and before > after:
        parts.append(f"freed {format_bytes(before - after)}")
    return "<li>" + " · ".join(parts) + "</li>"


def events_html(
    events: Sequence[Mapping[str, Any]], available: bool | None, limit: int = 12
) -> str:
    """The most recent events, newest first, with their reasons."""
    if available is False:
        body = "<i>this server has no event stream (lemonade/api/v1/events)</i>"
    elif not events:
        body = "<i>no events yet</i>"
    else:
        body = (
            "<ul style='margin:0;padding-left:1.2em'>"
            + "".join(_event_line(e) for e in reversed(events[-limit:]))
            + "</ul>"
        )
    return f"<div class='lemonade-events'><b>Recent events</b>{body}</div>"
