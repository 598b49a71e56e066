"""The live dashboard (ipywidgets 8): loaded models, slots, memory, events and a load form.

A view over client data that decides nothing. One daemon thread polls ``health``
every ``interval`` seconds and applies the snapshot to the widgets (ipykernel 7 runs no asyncio
tasks between cells, so a thread it is); an ``EventFeed`` thread follows the event stream.
``close()`` stops both threads before closing the widgets. The pieces live beside it: a
table row in :mod:`.model_row`, the memory panel and its history in :mod:`.memory_chart`, the
poller thread in :mod:`.poller`, and the worker threads of the clicks in
:mod:`.dashboard_actions`; this module lays them out and applies each snapshot.

One per kernel, like nvdashboard's panels: :meth:`Dashboard.for_kernel` (what
``%lemonade dashboard`` calls) closes the dashboard opened before it, its poller and its event
connection included. The memory chart starts with the recent past the server keeps. Loads in
progress (models in the ``loading`` state) and pulls (events whose kind starts with ``pull``)
have a panel of their own.

No feedback loop: the poller records the server's pin for each model *before* it sets the
toggle, and the toggle's observer only calls the API when the new value differs from the
server's, so a value the poller sets is never sent back. Clicks call the API (pin at once,
unload and load on worker threads so the kernel's comm handler is not blocked) and wake the
poller, so the table shows the result on the next tick.
"""

from __future__ import annotations

import collections
import html
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as widgets
from traitlets import Bool, Float, List, Unicode

from ..errors import ClientError
from .client import RouterClient
from .dashboard_actions import ActionWorkers
from .events import EventFeed
from .memory_chart import MemoryChart
from .model_row import COLUMNS, GRID, LOG_LINES, ModelRow
from .panel_html import activity_html, events_html, header_html, slots_html
from .poller import Poller
from .pools import catalog_type, pinned_slots_warning, pools
from .remote_panel import remote_models_html

__all__ = ["Dashboard", "ModelRow", "close_current_dashboard", "current_dashboard"]

_current: Dashboard | None = None
_current_lock = threading.Lock()


def current_dashboard() -> Dashboard | None:
    """The dashboard :meth:`Dashboard.for_kernel` opened last in this kernel, if still open."""
    return _current


def close_current_dashboard(wait: bool = True) -> None:
    """Close the kernel's dashboard, if any (its poller and event connection too)."""
    global _current
    with _current_lock:
        old, _current = _current, None
    if old is not None:
        old.close(wait=wait)


class Dashboard(widgets.VBox):
    """Live panel of one router; returned by ``%lemonade dashboard``.

    Threads: the poller (``refresh`` every ``interval`` s, woken early after an action), the
    ``EventFeed``, and short-lived action workers. ``refresh`` holds ``_lock`` while it reads
    and applies a snapshot, and so does a pin call, so a pin and a refresh never interleave.
    """

    models = List(Unicode(), help="Names in the model table, as of the last refresh.")
    last_refresh = Float(0.0, help="time.time() of the last successful refresh.")
    error = Unicode("", help="The last error shown in the panel ('' when fine).")
    polling = Bool(False, help="Whether the poller thread runs.")

    def __init__(
        self,
        client: RouterClient,
        *,
        interval: float = 1.0,
        autostart: bool = True,
        follow_events: bool = True,
        history: int = 120,
    ) -> None:
        self.client = client
        self.rows: dict[str, ModelRow] = {}
        self.health: dict[str, Any] = {}
        self.catalog: list[dict[str, Any]] = []
        self.memory = MemoryChart(history)
        self._loading_since: dict[str, float] = {}
        self._server_pins: dict[str, bool] = {}
        self._lock = threading.RLock()
        #: Refreshes every ``interval`` s (the catalog every tenth time), woken after actions.
        self.poller = Poller(lambda n: self.refresh(catalog=n % 10 == 0), interval,
                             "lemonade-dashboard")
        self.feed = EventFeed(client) if follow_events else None

        self.header = widgets.HTML()
        self.slots = widgets.HTML()
        self._last_health: Mapping[str, Any] = {}
        self._action_error = ""
        self.activity = widgets.HTML()
        self.table = widgets.GridBox(
            layout=widgets.Layout(grid_template_columns=GRID, align_items="center")
        )
        self.table.add_class("lemonade-model-table")
        #: The last lines of one model's log, fetched when its "logs" button is clicked.
        self.log_view = widgets.HTML()
        self.log_view.add_class("lemonade-log-view")
        self.events = widgets.HTML()
        #: Remote models (no slot): status and replicas; empty while there are none.
        self.remote = widgets.HTML()
        self.model_dropdown = widgets.Dropdown(
            description="model", options=[], layout=widgets.Layout(width="24em")
        )
        self.load_pinned = widgets.Checkbox(
            description="pinned", value=False, indent=False, layout=widgets.Layout(width="6em")
        )
        self.load_button = widgets.Button(description="Load", icon="play", button_style="success")
        self.load_button.add_class("lemonade-load-button")
        self.load_status = widgets.HTML()
        self.actions = ActionWorkers(self.load_status)
        self.load_button.on_click(lambda _b: self._start_load())
        self._headers = [widgets.HTML(f"<b>{c}</b>") for c in COLUMNS]
        super().__init__(
            children=[
                self.header,
                widgets.HTML("<b>Loaded models</b>"),
                self.table,
                self.log_view,
                self.remote,
                widgets.HBox(
                    [
                        widgets.VBox([widgets.HTML("<b>Slots</b>"), self.slots]),
                        widgets.VBox(
                            [widgets.HTML("<b>Memory</b>"), self.memory.box,
                             self.memory.shares, self.memory.sparkline]
                        ),
                    ],
                    layout=widgets.Layout(grid_gap="2em"),
                ),
                self.activity,
                self.events,
                widgets.HBox(
                    [self.model_dropdown, self.load_pinned, self.load_button, self.load_status]
                ),
            ]
        )
        self.add_class("lemonade-dashboard")
        self.refresh(catalog=True)
        if autostart:
            self.start()

    # The memory panel's parts, by the names they had on the dashboard itself.
    @property
    def interval(self) -> float:
        return self.poller.interval

    @property
    def memory_history(self) -> collections.deque[tuple[float, float]]:
        return self.memory.history

    @property
    def server_history(self) -> bool | None:
        return self.memory.server_history

    @property
    def memory_bars(self) -> dict[str, widgets.FloatProgress]:
        return self.memory.bars

    @property
    def sparkline(self) -> widgets.HTML:
        return self.memory.sparkline

    @property
    def shares(self) -> widgets.HTML:
        return self.memory.shares

    # -- lifecycle ----------------------------------------------------------------------------
    @classmethod
    def for_kernel(cls, client: RouterClient, **kwargs: Any) -> Dashboard:
        """A new dashboard that replaces the kernel's previous one (closed without waiting for
        its event connection, which ends within one read timeout)."""
        global _current
        close_current_dashboard(wait=False)
        dash = cls(client, **kwargs)
        with _current_lock:
            _current = dash
        return dash

    def start(self) -> None:
        """Start the poller (and the event feed); idempotent."""
        if self.feed is not None:
            self.feed.start()
        self.poller.start()
        self.polling = True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the poller, the event feed and wait for running actions; idempotent.

        ``timeout=0`` asks them to stop without waiting."""
        self.poller.stop(timeout)
        if self.feed is not None:
            self.feed.stop(None if timeout else 0)
        self.wait_actions(timeout)
        self.polling = False

    def close(self, wait: bool = True) -> None:
        """Stop the threads, then close every widget of the panel (idempotent).

        ``wait=False`` does not wait for the threads to end (they end on their own soon)."""
        global _current
        with _current_lock:
            if _current is self:
                _current = None
        self.stop(5.0 if wait else 0)
        for row in self.rows.values():
            row.close()
        for w in _descendants(self):
            w.close()
        super().close()

    def wait_actions(self, timeout: float = 30.0) -> None:
        """Wait for the unload/load workers started by clicks (for tests and ``stop``)."""
        self.actions.wait(timeout)

    # -- refresh ------------------------------------------------------------------------------
    def refresh(self, catalog: bool = False) -> None:
        """Fetch a health snapshot (and the catalog if asked) and show it. Never raises."""
        with self._lock:
            try:
                health = self.client.health()
                if catalog or not self.catalog:
                    self.catalog = self.client.models()
            except ClientError as exc:
                self.error = str(exc)
                self.header.value = header_html(
                    self.client.source, self.last_refresh or None, self.error
                )
                return
            self.health, self.error = health, self._action_error
            self.last_refresh = time.time()
            self.memory.fetch(self.client, health.get("memory") or {}, time.time())
            self._apply(health)

    def _apply(self, health: Mapping[str, Any]) -> None:
        now = time.time()
        self.header.value = header_html(self.client.source, self.last_refresh, self.error,
                                        health.get("engine"))
        loaded = [m for m in health.get("all_models_loaded") or [] if m.get("model_name")]
        names = [str(m["model_name"]) for m in loaded]
        for m in loaded:
            name = str(m["model_name"])
            self._server_pins[name] = bool(m.get("pinned"))  # before the toggle moves
            row = self.rows.get(name)
            if row is None:
                row = self.rows[name] = ModelRow(name, self._on_pin, self._on_unload,
                                                 self._on_logs)
            row.apply(m, now)
        for gone in [n for n in self.rows if n not in names]:
            self.rows.pop(gone).close()
            self._server_pins.pop(gone, None)
        cells: list[widgets.Widget] = list(self._headers)
        for name in names:
            cells.extend(self.rows[name].cells)
        if list(self.table.children) != cells:
            self.table.children = cells
        self.models = names
        self.slots.value = slots_html(pools(health))
        self.remote.value = remote_models_html(health.get("remote_models") or [])
        self._last_health = health
        self.memory.show(health.get("memory") or {}, health)
        recent = self.feed.recent() if self.feed else []
        self.events.value = events_html(recent, self.feed.available if self.feed else False)
        self._apply_activity(loaded, recent, now)
        options = [str(m.get("id")) for m in self.catalog if m.get("id")]
        if list(self.model_dropdown.options) != options:
            current = self.model_dropdown.value
            self.model_dropdown.options = options
            if options:
                self.model_dropdown.value = current if current in options else options[0]

    def _apply_activity(
        self, loaded: list[Mapping[str, Any]], events: list[dict[str, Any]], now: float
    ) -> None:
        loading = [str(m["model_name"]) for m in loaded if m.get("status") == "loading"]
        for name in loading:
            self._loading_since.setdefault(name, now)
        for name in [n for n in self._loading_since if n not in loading]:
            del self._loading_since[name]
        self.activity.value = activity_html(
            {n: now - self._loading_since[n] for n in loading}, events, now
        )

    # -- actions ------------------------------------------------------------------------------
    def _on_pin(self, name: str, pinned: bool) -> None:
        if self._server_pins.get(name) == pinned:
            return  # the poller showing the server's value, or a no-op click
        with self._lock:
            try:
                answer = self.client.pin(name, pinned)
                self._server_pins[name] = bool(answer.get("pinned", pinned))
                self.error = self._action_error = ""
            except ClientError as exc:
                self.error = self._action_error = f"pin {name}: {exc}"
                self.header.value = header_html(self.client.source, self.last_refresh, self.error,
                                        self._last_health.get("engine"))
                row = self.rows.get(name)
                if row is not None and name in self._server_pins:
                    row.pin.value = self._server_pins[name]  # equals the server: not sent again
        self.poller.wake()

    def _on_unload(self, name: str) -> None:
        row = self.rows.get(name)
        if row is not None:
            row.unload.disabled = True
            row.unload.description = "unloading"
        self._spawn(f"unload {name}", lambda: self.client.unload(name))

    def _on_logs(self, name: str) -> None:
        """Show the last lines of ``name``'s backend log once (fetched on a worker thread)."""
        self.log_view.value = f"<i>reading the log of {html.escape(name)}…</i>"

        def show() -> None:
            try:
                lines = self.client.log_tail(name, LOG_LINES)
            except ClientError as exc:
                self.log_view.value = (f"<span style='color:#c62828'>logs {html.escape(name)}: "
                                       f"{html.escape(str(exc))}</span>")
                return
            text = html.escape("\n".join(lines)) or "<i>no log yet</i>"
            self.log_view.value = (
                f"<b>Log of {html.escape(name)}</b> (last {LOG_LINES} lines)"
                f"<pre style='max-height:20em;overflow:auto;font-size:85%'>{text}</pre>")

        self.actions.run(f"lemonade-logs {name}", show)

    def _start_load(self) -> None:
        name = self.model_dropdown.value
        if not name:
            self.load_status.value = "<i>choose a model</i>"
            return
        pinned = True if self.load_pinned.value else None
        warning = pinned_slots_warning(self.health, name, catalog_type(self.catalog, name))
        self.load_button.disabled = True
        self._spawn(
            f"load {name}",
            lambda: self.client.load(name, pinned=pinned),
            progress=f"Loading {name}",
            warning=warning or "",
        )

    def _spawn(self, what: str, call: Callable[[], Any], *, progress: str = "",
               warning: str = "") -> None:
        """Run an API call on a worker (:class:`ActionWorkers`), then show its outcome."""
        def done(error: str) -> None:
            self._action_error = error
            self.load_button.disabled = False
            self.refresh(catalog=bool(progress))
            self.poller.wake()

        self.actions.spawn(what, call, done, progress=progress, warning=warning)


def _descendants(box: widgets.Box) -> list[widgets.Widget]:
    out: list[widgets.Widget] = []
    for child in box.children:
        if isinstance(child, widgets.Box):
            out.extend(_descendants(child))
        out.append(child)
    return out
