"""The dashboard's memory panel: a bar per device, each model's share, and the pressure chart.

The chart is drawn from the history the server keeps (``GET lemonade/api/v1/memory/history``),
so a new dashboard starts with the recent past; against a server without that route it builds
its own from each health snapshot. The history is bounded (``history`` samples).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import ipywidgets as widgets

from ..errors import ClientError
from .client import RouterClient
from .panel_html import device_shares_html, sparkline_svg
from .pools import device_shares, format_bytes

__all__ = ["MemoryChart"]


class MemoryChart:
    """The memory widgets and the pressure history behind the chart."""

    def __init__(self, history: int = 120) -> None:
        #: ``(time, pressure)``: the used fraction of the fullest device, oldest first.
        self.history: collections.deque[tuple[float, float]] = collections.deque(maxlen=history)
        #: Whether the server keeps the history (None until asked).
        self.server_history: bool | None = None
        self.box = widgets.VBox()
        self.bars: dict[str, widgets.FloatProgress] = {}
        self._labels: dict[str, widgets.Label] = {}
        #: Per device: each model's share of it, other use and the free rest.
        self.shares = widgets.HTML()
        self.sparkline = widgets.HTML()

    def fetch(self, client: RouterClient, memory: Mapping[str, Any], now: float) -> None:
        """Extend the history: the server's samples since the last one we have, or, from a
        server that keeps none, the pressure of this health snapshot (taken at ``now``)."""
        if self.server_history is not False:
            since = self.history[-1][0] if self.history else None
            try:
                answer = client.memory_history(since)
            except ClientError as exc:
                if exc.status_code != 404:
                    return  # shown by the next refresh if it persists
                self.server_history = False
            else:
                self.server_history = True
                for sample in answer.get("samples") or []:
                    t, p = sample.get("time"), sample.get("pressure")
                    if isinstance(t, (int, float)) and isinstance(p, (int, float)):
                        if not self.history or t > self.history[-1][0]:
                            self.history.append((float(t), float(p)))
                return
        fractions = [
            float(d.get("used") or 0) / float(d["total"])
            for d in memory.get("devices") or []
            if d.get("total")
        ]
        if fractions:
            self.history.append((now, max(fractions)))

    def show(self, memory: Mapping[str, Any], health: Mapping[str, Any]) -> None:
        """Show a health snapshot's ``memory`` (bars, labels), its shares and the chart."""
        for d in memory.get("devices") or []:
            name = str(d.get("name") or "device")
            total, used = d.get("total") or 0, d.get("used") or 0
            frac = float(used) / float(total) if total else 0.0
            bar = self.bars.get(name)
            if bar is None:
                bar = self.bars[name] = widgets.FloatProgress(
                    min=0.0, max=1.0, description=name[:18], layout=widgets.Layout(width="22em")
                )
                bar.add_class("lemonade-memory-bar")
                self._labels[name] = widgets.Label()
                self.box.children = [
                    widgets.HBox([self.bars[n], self._labels[n]]) for n in self.bars
                ]
            bar.value = min(1.0, frac)
            bar.bar_style = "danger" if frac >= 0.9 else ("warning" if frac >= 0.75 else "")
            self._labels[name].value = (
                f"{format_bytes(used)} / {format_bytes(total)} ({100 * frac:.0f}%)")
        names = [str(d.get("name") or "device") for d in memory.get("devices") or []]
        self.shares.value = device_shares_html(device_shares(health))
        label = names[0] if len(names) == 1 else "fullest device"
        self.sparkline.value = sparkline_svg([{label: p} for _, p in self.history])
