"""The dashboard as a kernel has it, against the fake router: one per kernel, a memory chart
that starts from the server's history, and the pulls and loads in progress."""

from __future__ import annotations

import threading
import time

from IPython.core.interactiveshell import InteractiveShell

from lemonade_jupyter.kernel.magics import LemonadeMagics
from lemonade_jupyter.kernel.widgets import Dashboard, close_current_dashboard, current_dashboard

from tests.helpers.polling import wait_for

from .fake_router import DEFAULT, FakeRouter


def _threads(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == name and t.is_alive())


def test_a_second_dashboard_replaces_the_first(
    ip: InteractiveShell, fake: FakeRouter, fake_magics: LemonadeMagics
) -> None:
    first = ip.run_line_magic("lemonade", "dashboard --interval 0.05")
    try:
        assert first.polling and current_dashboard() is first
        wait_for(lambda: first.feed.running and _threads("lemonade-events") == 1, timeout=10)
        second = ip.run_line_magic("lemonade", "dashboard --interval 0.05")
        assert second is not first and current_dashboard() is second
        # the first one is closed: widget, poller and event connection
        assert first.comm is None and not first.polling
        wait_for(lambda: not first.feed.running, timeout=10, what="the old event feed to end")
        wait_for(lambda: _threads("lemonade-dashboard") == 1, timeout=10, what="one poller")
        wait_for(lambda: _threads("lemonade-events") == 1, timeout=10, what="one event feed")
        assert second.polling and second.feed.running
        fake.client().load(DEFAULT)  # the new one still follows the server
        wait_for(lambda: second.models == [DEFAULT], timeout=10)
    finally:
        close_current_dashboard()
    assert current_dashboard() is None and not second.polling


def test_memory_chart_starts_full_from_the_server_history(fake: FakeRouter) -> None:
    t0 = time.time() - 120
    fake.memory_samples = [{"time": t0 + i, "pressure": 0.2 + i / 1000} for i in range(60)]
    dash = Dashboard(fake.client(), autostart=False, follow_events=False)
    try:
        assert dash.server_history is True
        assert len(dash.memory_history) == 60  # full at once, not one point per refresh
        assert "(last 60 samples)" in dash.sparkline.value and "<polyline" in dash.sparkline.value
        fake.memory_samples.append({"time": t0 + 100, "pressure": 0.5})
        dash.refresh()
        assert len(dash.memory_history) == 61 and dash.memory_history[-1] == (t0 + 100, 0.5)
        asked = [r for r in fake.requests if r[1] == "api/v1/memory/history"]
        assert len(asked) == 2
        assert fake.last_request.url.path.endswith("memory/history")
        assert float(fake.last_request.url.params["since"]) == t0 + 59  # only what is new
    finally:
        dash.close()


def test_dashboard_shows_loads_and_pulls_in_progress(fake: FakeRouter) -> None:
    client = fake.client()
    client.load(DEFAULT)
    fake.loaded[DEFAULT]["status"] = "loading"
    now = time.time()
    fake.events = [  # as the router emits them
        {"id": 1, "time": now, "kind": "pull", "model": "user.big", "reason": "start"},
        {"id": 2, "time": now, "kind": "pull", "model": "user.big", "reason": "progress",
         "detail": {"bytes_downloaded": 50, "bytes_total": 200, "percent": 25.0}},
        {"id": 3, "time": now, "kind": "pull", "model": "user.small", "reason": "complete",
         "detail": {"bytes_total": 10}},
        {"id": 4, "time": now, "kind": "pull", "model": "user.bad", "reason": "error",
         "detail": {"error": "checksum mismatch"}},
    ]
    dash = Dashboard(client, autostart=False)
    try:
        dash.feed.start()
        wait_for(lambda: len(dash.feed.recent()) == 4, timeout=10)
        dash.refresh()
        panel = dash.activity.value
        assert f"loading <b>{DEFAULT}</b>" in panel
        assert "pulling <b>user.big</b> · 25%" in panel
        assert "✓ pulled <b>user.small</b>" in panel
        assert "pull of <b>user.bad</b> failed: checksum mismatch" in panel
        fake.loaded[DEFAULT]["status"] = "ready"
        dash.refresh()
        assert "loading <b>" not in dash.activity.value
    finally:
        dash.close()
