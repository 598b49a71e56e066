"""The dashboard's table of remote models (recipe "remote"): their status and replicas.

A pure function from the ``remote_models`` of ``/health`` to escaped HTML, tested without
widgets. Remote models take no slot, so they are shown apart from the loaded models: one row
per model (status, replicas up out of all, requests in flight, last probe latency) and, under
it, one line per replica that is not up, with its last error.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["remote_models_html"]

_PAD = " style='text-align:left;padding:0 1.2em 0 0'"
_STATUS_COLOR = {"ready": "#2ca02c", "unreachable": "#d62728"}


def remote_models_html(models: Sequence[Mapping[str, Any]]) -> str:
    """A table of the remote models, or "" when there are none (the section stays hidden)."""
    if not models:
        return ""
    rows = []
    for m in models:
        replicas = list(m.get("replicas") or [])
        up = sum(1 for r in replicas if r.get("state") == "up")
        status = str(m.get("status") or "unknown")
        color = _STATUS_COLOR.get(status, "#7f7f7f")
        latency = m.get("latency_ms")
        cells = [
            f"<b>{html.escape(str(m.get('model_name', '')))}</b>",
            html.escape(str(m.get("upstream_model", ""))),
            f"<span style='color:{color}'>{html.escape(status)}</span>",
            f"{up}/{len(replicas)} up",
            f"{int(m.get('in_flight') or 0)} in flight",
            f"{latency:.0f} ms" if isinstance(latency, (int, float)) else "–",
        ]
        rows.append("<tr>" + "".join(f"<td{_PAD}>{c}</td>" for c in cells) + "</tr>")
        for r in replicas:
            if r.get("state") == "up":
                continue
            detail = html.escape(f"{r.get('base_url', '')}: {r.get('state', '')}"
                                 + (f" ({r['last_error']})" if r.get("last_error") else ""))
            rows.append(f"<tr><td></td><td colspan='5' style='color:#7f7f7f'>{detail}</td></tr>")
    head = "".join(f"<th{_PAD}>{h}</th>" for h in
                   ("model", "upstream", "status", "replicas", "load", "probe"))
    return ("<b>Remote models</b><table class='lemonade-remote-table'>"
            f"<tr>{head}</tr>{''.join(rows)}</table>")
