"""One loaded model's row in the dashboard's table: its widgets, and how a health entry shows.

The row decides nothing: its buttons call back into the dashboard (``on_pin``, ``on_unload``,
``on_logs``), which calls the API. :meth:`ModelRow.apply` moves the pin toggle only when the
server's pin differs, and the dashboard records the server's pin before, so a value shown here is
never sent back (no feedback loop).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as widgets

from .pools import format_bytes, format_seconds, model_idle_seconds

__all__ = ["COLUMNS", "GRID", "LOG_LINES", "ModelRow"]

#: The table's column headers and their widths (a CSS grid).
COLUMNS = ("model", "type", "state", "owner", "pinned", "", "idle", "memory")
GRID = "minmax(12em, 2fr) 6em 7em 7em 8em 13em 6em 7em"
#: Lines a row's "logs" button shows.
LOG_LINES = 20


class ModelRow:
    """The widgets of one loaded model's row in the table."""

    def __init__(
        self, name: str, on_pin: Callable[[str, bool], None], on_unload: Callable[[str], None],
        on_logs: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.label = widgets.HTML(f"<b>{html.escape(name)}</b>")
        self.type = widgets.Label()
        self.state = widgets.Label()
        #: Who loaded it (on a node router: the Hub user; on a single-user server: its user).
        self.owner = widgets.Label()
        self.pin = widgets.ToggleButton(
            value=False,
            description="pin",
            icon="thumb-tack",
            tooltip=f"pin or unpin {name}",
            layout=widgets.Layout(width="7.5em"),
        )
        self.pin.add_class("lemonade-pin-toggle")
        self.unload = widgets.Button(
            description="unload",
            icon="eject",
            button_style="warning",
            tooltip=f"unload {name}",
            layout=widgets.Layout(width="6.5em"),
        )
        self.unload.add_class("lemonade-unload-button")
        self.logs = widgets.Button(
            description="logs",
            icon="file-text-o",
            tooltip=f"the last {LOG_LINES} lines of {name}'s backend log",
            layout=widgets.Layout(width="5.5em"),
        )
        self.logs.add_class("lemonade-logs-button")
        self.actions = widgets.HBox([self.unload, self.logs])
        self.idle = widgets.Label()
        self.memory = widgets.Label()
        self.pin.observe(lambda change: on_pin(name, bool(change["new"])), names="value")
        self.unload.on_click(lambda _button: on_unload(name))
        if on_logs is not None:
            self.logs.on_click(lambda _button: on_logs(name))

    @property
    def cells(self) -> list[widgets.Widget]:
        return [self.label, self.type, self.state, self.owner, self.pin, self.actions, self.idle,
                self.memory]

    def close(self) -> None:
        """Close every widget of the row (the buttons inside the actions box too)."""
        for w in [*self.cells, self.unload, self.logs]:
            w.close()

    def apply(self, m: Mapping[str, Any], now: float) -> None:
        """Show one health entry. The caller has already recorded the server's pin."""
        pinned = bool(m.get("pinned"))
        self.type.value = str(m.get("type") or "")
        self.state.value = str(m.get("status") or "")
        self.owner.value = str(m.get("owner") or "")
        if self.pin.value != pinned:
            self.pin.value = pinned
        self.pin.description = "pinned" if pinned else "pin"
        self.pin.button_style = "info" if pinned else ""
        busy = self.state.value in ("evicting", "unloaded")
        self.unload.disabled = busy
        self.unload.description = "unloading" if busy else "unload"
        self.idle.value = format_seconds(model_idle_seconds(m, now))
        self.memory.value = format_bytes(m.get("memory_bytes"))
