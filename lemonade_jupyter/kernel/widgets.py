"""The live dashboard (ipywidgets 8): loaded models, slots, memory, events and a load form.

A view over client data that decides nothing. One daemon thread polls ``health``
every ``interval`` seconds and applies the snapshot to the widgets (ipykernel 7 runs no asyncio
tasks between cells, so a thread it is); an ``EventFeed`` thread follows the event stream.
``close()`` stops both threads before closing the widgets.

One per kernel, like nvdashboard's panels: :meth:`Dashboard.for_kernel` (what
``%lemonade dashboard`` calls) closes the dashboard opened before it, its poller and its event
connection included.
The memory chart is drawn from the history the server keeps (``GET
lemonade/api/v1/memory/history``), so a new dashboard starts with the recent past; against a
server without that route it builds its own from each refresh. Loads in progress (models in
the ``loading`` state) and pulls (events whose kind starts with ``pull``) have a panel of their
own.

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
from .events import EventFeed
from .panel_html import (
    activity_html, device_shares_html, events_html, header_html, slots_html, sparkline_svg,
)
from .pools import (
    catalog_type,
    device_shares,
    format_bytes,
    format_seconds,
    model_idle_seconds,
    pinned_slots_warning,
    pools,
)
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

_COLUMNS = ("model", "type", "state", "pinned", "", "idle", "memory")
_GRID = "minmax(12em, 2fr) 6em 7em 8em 13em 6em 7em"
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
        return [self.label, self.type, self.state, self.pin, self.actions, self.idle, self.memory]

    def close(self) -> None:
        """Close every widget of the row (the buttons inside the actions box too)."""
        for w in [*self.cells, self.unload, self.logs]:
            w.close()

    def apply(self, m: Mapping[str, Any], now: float) -> None:
        """Show one health entry. The caller has already recorded the server's pin."""
        pinned = bool(m.get("pinned"))
        self.type.value = str(m.get("type") or "")
        self.state.value = str(m.get("status") or "")
        if self.pin.value != pinned:
            self.pin.value = pinned
        self.pin.description = "pinned" if pinned else "pin"
        self.pin.button_style = "info" if pinned else ""
        busy = self.state.value in ("evicting", "unloaded")
        self.unload.disabled = busy
        self.unload.description = "unloading" if busy else "unload"
        self.idle.value = format_seconds(model_idle_seconds(m, now))
        self.memory.value = format_bytes(m.get("memory_bytes"))


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
        self.interval = float(interval)
        self.rows: dict[str, ModelRow] = {}
        self.health: dict[str, Any] = {}
        self.catalog: list[dict[str, Any]] = []
        #: ``(time, pressure)``: the used fraction of the fullest device, oldest first.
        self.memory_history: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=history
        )
        #: Whether the server keeps the history (None until asked).
        self.server_history: bool | None = None
        self._loading_since: dict[str, float] = {}
        self._server_pins: dict[str, bool] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self._ticks = 0
        self.feed = EventFeed(client) if follow_events else None

        self.header = widgets.HTML()
        self.slots = widgets.HTML()
        self.memory_box = widgets.VBox()
        self.memory_bars: dict[str, widgets.FloatProgress] = {}
        #: Per device: each model's share of it, other use and the free rest.
        self.shares = widgets.HTML()
        self._last_health: Mapping[str, Any] = {}
        self._action_error = ""
        self._memory_labels: dict[str, widgets.Label] = {}
        self.sparkline = widgets.HTML()
        self.activity = widgets.HTML()
        self.table = widgets.GridBox(
            layout=widgets.Layout(grid_template_columns=_GRID, align_items="center")
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
        self.load_button.on_click(lambda _b: self._start_load())
        self._headers = [widgets.HTML(f"<b>{c}</b>") for c in _COLUMNS]
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
                            [widgets.HTML("<b>Memory</b>"), self.memory_box, self.shares,
                             self.sparkline]
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
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="lemonade-dashboard", daemon=True)
        self._thread.start()
        self.polling = True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the poller, the event feed and wait for running actions; idempotent.

        ``timeout=0`` asks them to stop without waiting."""
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
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
        deadline = time.monotonic() + timeout
        for worker in list(self._workers):
            worker.join(max(0.0, deadline - time.monotonic()))
        self._workers = [w for w in self._workers if w.is_alive()]

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._ticks += 1
            self.refresh(catalog=self._ticks % 10 == 0)

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
            self._fetch_memory_history(health.get("memory") or {})
            self._apply(health)

    def _fetch_memory_history(self, memory: Mapping[str, Any]) -> None:
        """Extend the chart's history: the server's samples since the last one we have, or,
        from a server that keeps none, the pressure of this health snapshot."""
        if self.server_history is not False:
            since = self.memory_history[-1][0] if self.memory_history else None
            try:
                answer = self.client.memory_history(since)
            except ClientError as exc:
                if exc.status_code != 404:
                    return  # shown by the next refresh if it persists
                self.server_history = False
            else:
                self.server_history = True
                for sample in answer.get("samples") or []:
                    t, p = sample.get("time"), sample.get("pressure")
                    if isinstance(t, (int, float)) and isinstance(p, (int, float)):
                        if not self.memory_history or t > self.memory_history[-1][0]:
                            self.memory_history.append((float(t), float(p)))
                return
        fractions = [
            float(d.get("used") or 0) / float(d["total"])
            for d in memory.get("devices") or []
            if d.get("total")
        ]
        if fractions:
            self.memory_history.append((time.time(), max(fractions)))

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
        self._apply_memory(health.get("memory") or {})
        recent = self.feed.recent() if self.feed else []
        self.events.value = events_html(recent, self.feed.available if self.feed else False)
        self._apply_activity(loaded, recent, now)
        options = [str(m.get("id")) for m in self.catalog if m.get("id")]
        if list(self.model_dropdown.options) != options:
            current = self.model_dropdown.value
            self.model_dropdown.options = options
            if options:
                self.model_dropdown.value = current if current in options else options[0]

    def _apply_memory(self, memory: Mapping[str, Any]) -> None:
        for d in memory.get("devices") or []:
            name = str(d.get("name") or "device")
            total, used = d.get("total") or 0, d.get("used") or 0
            frac = float(used) / float(total) if total else 0.0
            bar = self.memory_bars.get(name)
            if bar is None:
                bar = self.memory_bars[name] = widgets.FloatProgress(
                    min=0.0, max=1.0, description=name[:18], layout=widgets.Layout(width="22em")
                )
                bar.add_class("lemonade-memory-bar")
                self._memory_labels[name] = widgets.Label()
                self.memory_box.children = [
                    widgets.HBox([self.memory_bars[n], self._memory_labels[n]])
                    for n in self.memory_bars
                ]
            bar.value = min(1.0, frac)
            bar.bar_style = "danger" if frac >= 0.9 else ("warning" if frac >= 0.75 else "")
            self._memory_labels[
                name
            ].value = f"{format_bytes(used)} / {format_bytes(total)} ({100 * frac:.0f}%)"
        names = [str(d.get("name") or "device") for d in memory.get("devices") or []]
        self.shares.value = device_shares_html(device_shares(self._last_health))
        label = names[0] if len(names) == 1 else "fullest device"
        self.sparkline.value = sparkline_svg([{label: p} for _, p in self.memory_history])

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
        self._wake.set()

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

        worker = threading.Thread(target=show, name=f"lemonade-logs {name}", daemon=True)
        self._workers.append(worker)
        worker.start()

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

    def _spawn(
        self, what: str, call: Callable[[], Any], *, progress: str = "", warning: str = ""
    ) -> None:
        def work() -> None:
            start = time.monotonic()
            done = threading.Event()
            box: dict[str, Any] = {}

            def run() -> None:
                try:
                    box["answer"] = call()
                except ClientError as exc:
                    box["error"] = exc
                finally:
                    done.set()

            threading.Thread(target=run, name="lemonade-call", daemon=True).start()
            note = f"<div style='color:#e65100'>⚠ {warning}</div>" if warning else ""
            while progress and not done.wait(0.25):
                self.load_status.value = (
                    f"<progress style='width:8em'></progress> {progress}… "
                    f"{time.monotonic() - start:.1f} s{note}"
                )
            done.wait()
            elapsed = time.monotonic() - start
            if "error" in box:
                self._action_error = f"{what}: {box['error']}"
                if progress:
                    self.load_status.value = (
                        f"<span style='color:#c62828'>✗ {html.escape(self._action_error)}</span>"
                    )
            else:
                self._action_error = ""
                if progress:
                    self.load_status.value = f"✓ {html.escape(what)} in {elapsed:.2f} s"
            self.load_button.disabled = False
            self.refresh(catalog=bool(progress))
            self._wake.set()

        worker = threading.Thread(target=work, name=f"lemonade-{what}", daemon=True)
        self._workers.append(worker)
        worker.start()


def _descendants(box: widgets.Box) -> list[widgets.Widget]:
    out: list[widgets.Widget] = []
    for child in box.children:
        if isinstance(child, widgets.Box):
            out.extend(_descendants(child))
        out.append(child)
    return out
