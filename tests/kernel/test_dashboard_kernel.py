"""The dashboard as a kernel has it, against the real app on memory backends: one per kernel, a
memory chart that starts from the server's history, and the pulls and loads in progress."""

from __future__ import annotations

import threading

from IPython.core.interactiveshell import InteractiveShell

from lemonade_jupyter.kernel.magics import LemonadeMagics
from lemonade_jupyter.kernel.widgets import Dashboard, close_current_dashboard, current_dashboard

from tests.helpers.memory_app import MemoryApp
from tests.helpers.polling import wait_for

from .conftest import DEFAULT


def _threads(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == name and t.is_alive())


def test_a_second_dashboard_replaces_the_first(
    ip: InteractiveShell, app: MemoryApp, app_magics: LemonadeMagics
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
        app.client().load(DEFAULT)  # the new one still follows the server
        wait_for(lambda: second.models == [DEFAULT], timeout=10)
    finally:
        close_current_dashboard()
    assert current_dashboard() is None and not second.polling


def test_memory_chart_starts_full_from_the_server_history(app: MemoryApp) -> None:
    client = app.client()
    # the router samples every 0.1 s while someone watches its memory (reads /health; the
    # history route keeps no sampler running): wait for a history
    wait_for(lambda: client.health() and len(client.memory_history()["samples"]) >= 5,
             timeout=20)
    dash = Dashboard(client, autostart=False, follow_events=False)
    try:
        assert dash.server_history is True
        first = list(dash.memory_history)
        assert len(first) >= 5  # full at once, not one point per refresh
        assert f"(last {len(first)} samples)" in dash.sparkline.value
        assert "<polyline" in dash.sparkline.value
        wait_for(lambda: client.health() and client.memory_history(first[-1][0])["samples"],
                 timeout=20)
        dash.refresh()
        now = list(dash.memory_history)
        assert len(now) > len(first) and now[:len(first)] == first
        asked = [r for r in app.sent if r.url.path.endswith("memory/history")
                 and "since" in r.url.params]
        assert float(asked[-1].url.params["since"]) == first[-1][0]  # only what is new
    finally:
        dash.close()


def test_dashboard_shows_loads_and_pulls_in_progress(app: MemoryApp) -> None:
    """A load held at the launcher's gate is in progress; the pull events are written on the
    router's own event log (what a hub pull emits), so they reach the panel by the real stream."""
    client = app.client()
    app.on_loop(lambda: app.launcher.gate(DEFAULT))
    loading = threading.Thread(target=lambda: app.client().load(DEFAULT))
    loading.start()
    try:
        wait_for(lambda: app.on_loop(lambda: app.launcher.waiting(DEFAULT)) == 1, timeout=10)
        emit = app.router.events.emit
        app.on_loop(lambda: [
            emit("pull", "user.big", "start"),
            emit("pull", "user.big", "progress", bytes_downloaded=50, bytes_total=200,
                 percent=25.0),
            emit("pull", "user.small", "complete", bytes_total=10),
            emit("pull", "user.bad", "error", error="checksum mismatch"),
        ])
        dash = Dashboard(client, autostart=False)
        try:
            dash.feed.start()
            wait_for(lambda: sum(e["kind"] == "pull" for e in dash.feed.recent()) == 4,
                     timeout=10)
            dash.refresh()
            panel = dash.activity.value
            assert f"loading <b>{DEFAULT}</b>" in panel
            assert "pulling <b>user.big</b> · 25%" in panel
            assert "✓ pulled <b>user.small</b>" in panel
            assert "pull of <b>user.bad</b> failed: checksum mismatch" in panel
            app.on_loop(lambda: app.launcher.release(DEFAULT))
            loading.join(10)
            dash.refresh()
            assert "loading <b>" not in dash.activity.value
        finally:
            dash.close()
    finally:
        if loading.is_alive():
            app.on_loop(lambda: app.launcher.release(DEFAULT))
            loading.join(10)
