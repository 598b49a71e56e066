"""HTML fragments of the dashboard: slots per type, memory sparkline (SVG), recent events.

Pure functions from snapshots to escaped HTML, so they are tested without widgets.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..api_paths import API_V1
from .pools import PoolSummary, format_bytes

__all__ = [
    "slots_html",
    "sparkline_svg",
    "events_html",
    "header_html",
    "activity_html",
    "pull_states",
]

_PAD = " style='text-align:left;padding:0 1.2em 0 0'"
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def header_html(source: str, refreshed: float | None, error: str = "",
                engine: Mapping[str, Any] | None = None) -> str:
    """Title line: where the router is, the engine it starts, when the panel last refreshed."""
    when = time.strftime("%H:%M:%S", time.localtime(refreshed)) if refreshed else "never"
    engine_text = ""
    if engine:
        offload = " on the GPU" if engine.get("offload") else ""
        path = html.escape(str(engine.get("path")))
        flavour = html.escape(str(engine.get("flavour")))
        engine_text = (f" · <span class='lemonade-engine' title='{path}'>"
                       f"engine {flavour}{offload}</span>")
    out = (
        f"<div class='lemonade-header'><b>lemonade</b> · {html.escape(source)}{engine_text} · "
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
        body = f"<i>this server has no event stream ({API_V1}/events)</i>"
    elif not events:
        body = "<i>no events yet</i>"
    else:
        body = (
            "<ul style='margin:0;padding-left:1.2em'>"
            + "".join(_event_line(e) for e in reversed(events[-limit:]))
            + "</ul>"
        )
    return f"<div class='lemonade-events'><div><b>Recent events</b></div>{body}</div>"


#: Words that mark a pull event as the end of its pull, or as a failure.
_PULL_DONE = ("done", "finished", "complete", "completed", "success", "succeeded", "registered")
_PULL_FAILED = ("failed", "error", "cancelled", "canceled", "aborted")
_PULL_RUNNING = ("start", "started", "starting", "progress", "running", "downloading",
                 "in_progress", "copying", "verifying", "queued", "pending")


def _pull_phase(e: Mapping[str, Any]) -> str:
    """``running``, ``done`` or ``failed`` for one event whose kind starts with ``pull``.

    The router emits ``pull`` events with the reason ``start``, ``progress``, ``complete``,
    ``error`` or ``cancelled``; a kind's suffix (``pull_failed``…) and a ``status``/``state``
    detail are read too; an error in the detail is a failure; a pull event
    with no word saying it is still running (``started``, ``progress``, ``downloading``…) is a
    finished pull.
    """
    detail = e.get("detail") if isinstance(e.get("detail"), Mapping) else {}
    words = {
        str(e.get("kind", "")).removeprefix("pull").strip("_-. ").lower(),
        str(e.get("reason") or "").lower(),
        str(detail.get("status") or detail.get("state") or "").lower(),
    } - {""}
    if detail.get("error") or words & set(_PULL_FAILED):
        return "failed"
    if words & set(_PULL_DONE) or detail.get("done") is True:
        return "done"
    if words & set(_PULL_RUNNING) or detail.get("done") is False:
        return "running"
    return "done"


def _fraction(detail: Mapping[str, Any]) -> float | None:
    for done_key, total_key in (("bytes_downloaded", "bytes_total"), ("bytes", "total"),
                                ("downloaded", "total_bytes"), ("completed", "total")):
        done, total = detail.get(done_key), detail.get(total_key)
        if isinstance(done, (int, float)) and isinstance(total, (int, float)) and total > 0:
            return max(0.0, min(1.0, float(done) / float(total)))
    percent = detail.get("percent")
    if isinstance(percent, (int, float)) and not isinstance(percent, bool):
        return max(0.0, min(1.0, percent / 100.0))
    return None


def pull_states(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The latest state of each pulled model, newest first: ``model``, ``phase``
    (``running``/``done``/``failed``), ``fraction`` (None when unknown), ``time``, ``error``."""
    latest: dict[str, dict[str, Any]] = {}
    for e in events:
        if not str(e.get("kind", "")).startswith("pull"):
            continue
        detail = e.get("detail") if isinstance(e.get("detail"), Mapping) else {}
        name = str(e.get("model") or detail.get("model_name") or "?")
        latest[name] = {
            "model": name,
            "phase": _pull_phase(e),
            "fraction": _fraction(detail),
            "time": e.get("time"),
            "error": str(detail.get("error") or ""),
        }
    return sorted(latest.values(), key=lambda p: -(p["time"] or 0))


def activity_html(
    loading: Mapping[str, float], events: Sequence[Mapping[str, Any]], now: float,
    limit: int = 5,
) -> str:
    """Loads in progress (model → seconds seen loading) and pulls, running ones first."""
    items = []
    for name, seconds in loading.items():
        items.append(
            "<li class='lemonade-activity-load'><progress style='width:6em'></progress> "
            f"loading <b>{html.escape(name)}</b> · {seconds:.0f} s</li>"
        )
    pulls = pull_states(events)
    pulls.sort(key=lambda p: p["phase"] != "running")  # stable: running first, newest first
    for p in pulls[:limit]:
        name = html.escape(p["model"])
        if p["phase"] == "running":
            bar = (f"<progress style='width:6em' value='{p['fraction']:.3f}'></progress>"
                   if p["fraction"] is not None else "<progress style='width:6em'></progress>")
            pct = f" · {100 * p['fraction']:.0f}%" if p["fraction"] is not None else ""
            items.append(
                f"<li class='lemonade-activity-pull'>{bar} pulling <b>{name}</b>{pct}</li>"
            )
        elif p["phase"] == "failed":
            why = f": {html.escape(p['error'][:200])}" if p["error"] else ""
            items.append(f"<li class='lemonade-activity-pull' style='color:#c62828'>✗ pull of "
                         f"<b>{name}</b> failed{why}</li>")
        else:
            when = (time.strftime("%H:%M:%S", time.localtime(float(p["time"])))
                    if p["time"] else "?")
            items.append(f"<li class='lemonade-activity-pull'>✓ pulled <b>{name}</b> "
                         f"<code>{when}</code></li>")
    body = ("<ul style='margin:0;padding-left:1.2em'>" + "".join(items) + "</ul>"
            if items else "<i>no pull or load in progress</i>")
    return f"<div class='lemonade-activity'><div><b>Pulls and loads</b></div>{body}</div>"


#: Segment colours of the per-device bars: models in turn, then other use, then free.
_SHARE_COLOURS = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2")


def device_shares_html(shares: Sequence[Mapping[str, Any]]) -> str:
    """One stacked bar per memory device: each model's share, other use, the free rest."""
    if not shares:
        return ""
    rows = []
    for share in shares:
        total = share["total"] or 1
        parts = [(f"{name}{' (pinned)' if pinned else ''}", size,
                  _SHARE_COLOURS[i % len(_SHARE_COLOURS)])
                 for i, (name, size, pinned) in enumerate(share["models"])]
        parts += [("other", share["other"], "#bab0ac"), ("free", share["free"], "#eeeeee")]
        segments = "".join(
            f"<div title='{html.escape(label)}: {format_bytes(size)}' style='width:"
            f"{100 * size / total:.2f}%;background:{colour}'></div>"
            for label, size, colour in parts if size > 0)
        legend = " · ".join(f"{html.escape(label)} {format_bytes(size)}"
                            for label, size, _c in parts if size > 0)
        rows.append(
            f"<div class='lemonade-device-share'><b>{html.escape(share['device'])}</b>"
            f"<div style='display:flex;height:10px;width:22em;border:1px solid #999'>"
            f"{segments}</div><small>{legend}</small></div>")
    return "".join(rows)
