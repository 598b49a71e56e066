"""Result objects of the magics: HTML tables in a notebook, aligned text in a terminal.

Each object implements ``_repr_html_`` (Jupyter front ends), ``__repr__`` and ``_repr_pretty_``
(IPython's terminal), so a magic just returns one and the front end picks the form. Builders
turn a server answer (health, catalog, config) into a ``Report``; they only format, never call
the server.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .pools import device_shares, format_bytes, format_seconds, model_idle_seconds, pools

__all__ = [
    "Table",
    "Report",
    "Message",
    "status_report",
    "models_report",
    "config_report",
    "load_message",
]


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


class Table:
    """A titled table of rows; the unit every report is made of."""

    def __init__(
        self,
        columns: Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        title: str = "",
        empty: str = "(none)",
        css_class: str = "",
    ) -> None:
        self.columns = list(columns)
        self.rows = [[_cell(v) for v in row] for row in rows]
        self.title = title
        self.empty = empty
        self.css_class = css_class

    def text(self) -> str:
        """Aligned plain text, title first."""
        lines = [self.title] if self.title else []
        if not self.rows:
            return "\n".join([*lines, f"  {self.empty}"])
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) for i, c in enumerate(self.columns)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        lines.append(fmt.format(*self.columns).rstrip())
        lines.append("  ".join("-" * w for w in widths))
        lines.extend(fmt.format(*row).rstrip() for row in self.rows)
        return "\n".join(lines)

    def html(self) -> str:
        """An HTML ``<table>`` (escaped), with a caption when titled."""
        cls = f' class="lemonade-table {html.escape(self.css_class)}"'
        caption = (
            f"<caption style='text-align:left'><b>{html.escape(self.title)}</b></caption>"
            if self.title
            else ""
        )
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in self.columns)
        if not self.rows:
            body = (
                f"<tr><td colspan='{len(self.columns)}'><i>{html.escape(self.empty)}</i></td></tr>"
            )
        else:
            body = "".join(
                "<tr>"
                + "".join(f"<td style='text-align:left'>{html.escape(v)}</td>" for v in row)
                + "</tr>"
                for row in self.rows
            )
        return f"<table{cls}>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def _repr_html_(self) -> str:
        return self.html()

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())


class Message:
    """A one-line outcome (``Loaded X (pinned) in 0.4 s``)."""

    def __init__(self, text: str, *, data: Mapping[str, Any] | None = None) -> None:
        self.text = text
        self.data = dict(data or {})

    def _repr_html_(self) -> str:
        return f"<span class='lemonade-message'>{html.escape(self.text)}</span>"

    def __repr__(self) -> str:
        return self.text

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text)


class Report:
    """Header lines followed by tables; ``data`` keeps the raw server answer for scripts."""

    def __init__(
        self, lines: Sequence[str] = (), tables: Sequence[Table] = (), *, data: Any = None
    ) -> None:
        self.lines = list(lines)
        self.tables = list(tables)
        self.data = data

    def text(self) -> str:
        parts = ["\n".join(self.lines)] if self.lines else []
        parts.extend(t.text() for t in self.tables)
        return "\n\n".join(parts)

    def _repr_html_(self) -> str:
        head = "".join(f"<div>{html.escape(line)}</div>" for line in self.lines)
        return f"<div class='lemonade-report'>{head}{''.join(t.html() for t in self.tables)}</div>"

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())


def loaded_table(health: Mapping[str, Any], now: float | None = None) -> Table:
    """The loaded models of one health snapshot."""
    now = time.time() if now is None else now
    rows = []
    for m in health.get("all_models_loaded") or []:
        rows.append(
            [
                m.get("model_name"),
                m.get("type"),
                m.get("status"),
                bool(m.get("pinned")),
                format_seconds(model_idle_seconds(m, now)),
                format_bytes(m.get("memory_bytes")),
                m.get("device"),
                f"{m['load_duration_ms'] / 1000:.2f}s" if m.get("load_duration_ms") else None,
                m.get("pid"),
            ]
        )
    return Table(
        ["model", "type", "state", "pinned", "idle", "memory", "device", "load", "pid"],
        rows,
        title="Loaded models",
        empty="no model loaded",
        css_class="lemonade-loaded",
    )


def status_report(health: Mapping[str, Any], source: str, now: float | None = None) -> Report:
    """``%lemonade status``: where the router is, what is loaded, slots and memory."""
    slot_rows = [
        [p["type"], p.slots_text, p["pinned"], ", ".join(p["models"])] for p in pools(health)
    ]
    memory = health.get("memory") or {}
    mem_rows = []
    for d in memory.get("devices") or []:
        total, used = d.get("total"), d.get("used")
        pct = f"{100 * used / total:.0f}%" if total and used is not None else None
        mem_rows.append([d.get("name"), format_bytes(used), format_bytes(total), pct])
    share_rows = [[s["device"], name + (" (pinned)" if pinned else ""), format_bytes(size)]
                  for s in device_shares(health) for name, size, pinned in s["models"]]
    remote_rows = [[m.get("model_name"), m.get("upstream_model"), m.get("status"),
                    _replicas_text(m.get("replicas") or []), m.get("in_flight")]
                   for m in health.get("remote_models") or []]
    engine = health.get("engine") or {}
    engine_line = (f"Engine: {engine.get('flavour', '?')}"
                   f"{' (offloads to GPU)' if engine.get('offload') else ''}: {engine.get('path')}"
                   if engine else "Engine: none found")
    return Report(
        [f"Router: {source}", f"Status: {health.get('status', '?')}", engine_line],
        [
            loaded_table(health, now),
            Table(
                ["type", "slots used", "pinned", "models"],
                slot_rows,
                title="Slots per type",
                css_class="lemonade-slots",
            ),
            Table(
                ["device", "used", "total", "%"],
                mem_rows,
                title=f"Memory ({memory.get('source', '?')})",
                empty="no reading",
                css_class="lemonade-memory",
            ),
            Table(
                ["device", "model", "memory"],
                share_rows,
                title="Memory by model and device",
                empty="no model holds memory",
                css_class="lemonade-shares",
            ),
            *([Table(["model", "upstream", "status", "replicas", "in flight"], remote_rows,
                     title="Remote models (no slot)", css_class="lemonade-remote")]
              if remote_rows else []),
        ],
        data=dict(health),
    )


def _replicas_text(replicas: Sequence[Mapping[str, Any]]) -> str:
    """``1/2 up``, then each replica that is not up with its last error."""
    up = sum(1 for r in replicas if r.get("state") == "up")
    down = [f"{r.get('base_url')}: {r.get('state')}"
            + (f" ({r['last_error']})" if r.get("last_error") else "")
            for r in replicas if r.get("state") != "up"]
    return "; ".join([f"{up}/{len(replicas)} up", *down])


def models_report(models: Sequence[Mapping[str, Any]]) -> Report:
    """``%lemonade models``: the catalog."""
    rows = [
        [
            m.get("id"),
            m.get("type"),
            m.get("recipe"),
            m.get("labels") or [],
            bool(m.get("loaded")),
            bool(m.get("pinned")),
            m.get("checkpoint"),
        ]
        for m in models
    ]
    table = Table(
        ["model", "type", "recipe", "labels", "loaded", "pinned", "checkpoint"],
        rows,
        title="Models",
        empty="the catalog is empty",
        css_class="lemonade-models",
    )
    return Report([], [table], data=list(models))


def config_report(config: Mapping[str, Any], changed: Iterable[str] = ()) -> Report:
    """``%lemonade config``: every key and value, changed keys marked."""
    changed = set(changed)
    settable = config.get("settable_keys")
    rows = [
        [k, v if not isinstance(v, (dict, list)) else repr(v), "changed" if k in changed else ""]
        for k, v in sorted(config.items())
        if k != "settable_keys"
    ]
    lines = ["Set with: %lemonade config key=value ..."]
    if isinstance(settable, list):
        lines[0] += f" (keys: {', '.join(map(str, settable))})"
    return Report(
        lines,
        [Table(["key", "value", ""], rows, title="Router config", css_class="lemonade-config")],
        data=dict(config),
    )


def load_message(answer: Mapping[str, Any], seconds: float) -> Message:
    """The outcome of ``%lemonade load``."""
    name = answer.get("model_name", "?")
    pin = " (pinned)" if answer.get("pinned") else ""
    return Message(f"Loaded {name}{pin} in {seconds:.2f} s", data=answer)


def stats_line(stats: Mapping[str, Any]) -> str:
    """One line of the last request's figures (``GET api/v1/stats``), for ``chat --stats``."""
    if stats.get("output_tokens") is None:
        return "No request statistics yet."
    cached = stats.get("cached_tokens") or 0
    return (
        f"time to first token {stats['time_to_first_token']:.3f} s · "
        f"{stats['tokens_per_second']:.1f} tokens/s · "
        f"{stats['input_tokens']} input tokens"
        + (f" ({cached} cached)" if cached else "")
        + f" · {stats['output_tokens']} output tokens"
    )
