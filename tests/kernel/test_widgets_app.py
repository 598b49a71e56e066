"""The dashboard without a browser, against the real app on memory backends: traits, children,
actions, threads.

The panel reads only the app's HTTP answers (health, models, events, logs), so backends in
memory are enough: what it shows and sends is checked against the real router's answers.
"""

from __future__ import annotations

import threading
from pathlib import Path

import ipywidgets as widgets
import pytest

from lemonade_jupyter.errors import ClientError
from lemonade_jupyter.kernel.client import RouterClient
from lemonade_jupyter.kernel.model_row import COLUMNS
from lemonade_jupyter.kernel.widgets import Dashboard

from tests.fakes.fake_openai_upstream import FakeUpstream
from tests.helpers.memory_app import MemoryApp
from tests.helpers.polling import wait_for

from .conftest import DEFAULT, EMBEDDER, tiny_gguf


def test_dashboard_refresh_builds_rows_and_panels(app: MemoryApp, tmp_path: Path) -> None:
    client = app.client()
    client.pull("user.old", str(tiny_gguf(tmp_path / "old.gguf")))
    client.load("user.old")
    client.load(DEFAULT, pinned=True)  # one llm slot: user.old is evicted (lru)
    dash = Dashboard(client, autostart=False)
    try:
        assert dash.models == [DEFAULT] and dash.last_refresh > 0 and dash.error == ""
        row = dash.rows[DEFAULT]
        assert row.pin.value is True and row.pin.description == "pinned"
        assert row.type.value == "llm" and row.state.value == "ready"
        assert row.memory.value == "—" and row.idle.value.endswith("s")  # no process
        headers = len(COLUMNS)  # the header cells, then the row
        assert list(dash.table.children[headers:]) == row.cells
        assert "lemonade-model-table" in dash.table._dom_classes
        assert "lemonade-pin-toggle" in row.pin._dom_classes
        assert "1/1" in dash.slots.value and "all pinned" in dash.slots.value
        assert 0 < dash.memory_bars["system"].value <= 1
        assert set(dash.model_dropdown.options) == {DEFAULT, EMBEDDER, "user.old"}
        assert "memory app" in dash.header.value
        # the router samples memory every 0.1 s (the fixture's setting): a chart soon
        wait_for(lambda: dash.refresh() or "<polyline" in dash.sparkline.value, timeout=10)
        dash.feed.start()
        wait_for(lambda: dash.feed.recent())
        dash.refresh()
        assert "reason: lru" in dash.events.value and "user.old" in dash.events.value
        client.unload(DEFAULT)
        dash.refresh()
        assert dash.models == [] and dash.rows == {} and len(dash.table.children) == len(COLUMNS)
    finally:
        dash.close()


def test_dashboard_pin_toggle_calls_api_without_feedback_loop(app: MemoryApp) -> None:
    client = app.client()
    client.load(DEFAULT)
    dash = Dashboard(client, autostart=False, follow_events=False)
    try:
        row = dash.rows[DEFAULT]
        assert row.pin.value is False and app.calls("internal/pin") == []
        row.pin.value = True  # a click
        assert app.calls("internal/pin") == [{"model_name": DEFAULT, "pinned": True}]
        assert app.loaded()[DEFAULT]["pinned"] is True
        # the server changes the pin behind the panel: refresh moves the toggle, sends nothing
        client.pin(DEFAULT, False)
        sent = len(app.calls("internal/pin"))
        dash.refresh()
        assert row.pin.value is False and row.pin.description == "pin"
        dash.refresh()
        assert len(app.calls("internal/pin")) == sent
    finally:
        dash.close()


def test_dashboard_pin_error_reverts_toggle_and_shows_message(app: MemoryApp) -> None:
    client = app.client()
    client.load(DEFAULT)
    dash = Dashboard(client, autostart=False, follow_events=False)
    try:
        app.client().unload(DEFAULT)  # gone on the server since the last refresh
        dash.rows[DEFAULT].pin.value = True
        assert dash.rows[DEFAULT].pin.value is False
        assert "is not loaded" in dash.error and "is not loaded" in dash.header.value
    finally:
        dash.close()


def test_dashboard_unload_button_and_load_form(app: MemoryApp, tmp_path: Path) -> None:
    client = app.client()
    client.load(DEFAULT)
    dash = Dashboard(client, autostart=False, follow_events=False)
    try:
        dash.rows[DEFAULT].unload.click()
        dash.wait_actions()
        assert app.calls("api/v1/unload") == [{"model_name": DEFAULT}]
        assert dash.models == []
        dash.model_dropdown.value = EMBEDDER
        dash.load_pinned.value = True
        dash.load_button.click()
        dash.wait_actions()
        assert app.calls("api/v1/load")[-1] == {"model_name": EMBEDDER, "pinned": True}
        assert dash.models == [EMBEDDER] and dash.rows[EMBEDDER].pin.value is True
        assert f"✓ load {EMBEDDER}" in dash.load_status.value
        # a failing load shows the server's message in the form
        client.pull("user.big", str(tiny_gguf(tmp_path / "big.gguf")), labels=["embeddings"])
        dash.refresh(catalog=True)
        dash.model_dropdown.value = "user.big"
        dash.load_button.click()
        dash.wait_actions()
        assert "All loaded models of type embedding are pinned" in dash.load_status.value
    finally:
        dash.close()


def test_dashboard_poller_updates_live_and_stops_on_close(app: MemoryApp) -> None:
    client = app.client()
    dash = Dashboard(client, interval=0.05)
    thread = dash.poller.thread
    assert thread is not None and thread.is_alive() and dash.polling
    client.load(DEFAULT)  # behind the panel's back
    wait_for(lambda: dash.models == [DEFAULT], timeout=10)
    dash.close()
    assert not thread.is_alive() and not dash.polling
    assert not dash.feed.running
    assert dash.comm is None  # the widget itself is closed
    names = {t.name for t in threading.enumerate()}
    assert "lemonade-dashboard" not in names and "lemonade-events" not in names


def test_dashboard_shows_unreachable_server_without_raising() -> None:
    import httpx

    from lemonade_jupyter.kernel.client import RouterClient

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    dash = Dashboard(
        RouterClient("http://down.test/", transport=httpx.MockTransport(refuse)),
        autostart=False,
        follow_events=False,
    )
    try:
        assert "Cannot reach the router" in dash.error and dash.models == []
        assert "⚠" in dash.header.value
    finally:
        dash.close()


def test_dashboard_is_a_widget_tree(app: MemoryApp) -> None:
    dash = Dashboard(app.client(), autostart=False, follow_events=False)
    try:
        assert isinstance(dash, widgets.VBox)
        assert dash.header in dash.children and dash.table in dash.children
        assert "lemonade-dashboard" in dash._dom_classes
    finally:
        dash.close()


def test_dashboard_logs_button_shows_the_last_lines_once(app: MemoryApp, tmp_path: Path) -> None:
    client = app.client()
    client.pull("user.logged", str(tiny_gguf(tmp_path / "logged.gguf")))
    client.load("user.logged")
    app.write_log("user.logged", [f"line {i} <b>" for i in range(30)])
    dash = Dashboard(client, autostart=False, follow_events=False)
    try:
        row = dash.rows["user.logged"]
        assert row.logs in row.actions.children and dash.log_view.value == ""
        row.logs.click()
        dash.wait_actions()
        [(method, path, _body)] = [r for r in app.requests if r[1].startswith("api/v1/logs/")]
        assert (method, path) == ("GET", "api/v1/logs/user.logged")
        assert app.last_request.url.params["tail"] == "20"
        assert app.last_request.url.params["follow"] == "false"
        view = dash.log_view.value
        assert "Log of user.logged" in view
        assert "line 29 &lt;b&gt;" in view and "line 10 &lt;b&gt;" in view  # escaped
        assert "line 9 " not in view
        # A model gone on the server: the error, not a traceback.
        app.client().delete("user.logged")
        row.logs.click()
        dash.wait_actions()
        assert "is not in the catalog" in dash.log_view.value
    finally:
        dash.close()


def _down(client: RouterClient, name: str, replica: str) -> bool:
    """Ask ``name`` once (a dead replica is marked down by the failed request); whether
    ``replica`` is down now."""
    try:
        client.chat(name, [{"role": "user", "content": "hi"}])
    except ClientError:
        pass
    [entry] = [m for m in client.health()["remote_models"] if m["model_name"] == name]
    return any(r["base_url"] == replica and r["state"] == "down" for r in entry["replicas"])


def test_dashboard_shows_remote_models_with_their_replicas(
    app: MemoryApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two loopback upstreams are the replicas; stopping them makes the router mark them down."""
    monkeypatch.setenv("LEMONADE_REMOTE_KEY_A", "secret")
    a, b = (app.run(FakeUpstream(key="secret").start()) for _ in range(2))
    client = app.client()
    try:
        client.add_remote("user.vllm", [a.base_url, b.base_url], upstream_model="ok",
                          api_key_env="LEMONADE_REMOTE_KEY_A")
        app.run(b.stop())
        wait_for(lambda: _down(client, "user.vllm", b.base_url), timeout=10)
        dash = Dashboard(client, autostart=False, follow_events=False)
        try:
            assert dash.remote in dash.children
            shown = dash.remote.value
            assert "user.vllm" in shown and "ok" in shown
            assert "ready" in shown and "1/2 up" in shown and " ms" in shown
            assert f"{b.base_url}: down (cannot connect" in shown
            assert f"{a.base_url}:" not in shown  # replicas that are up need no line
            assert dash.models == []  # no slot: not a row of the loaded models
            app.run(a.stop())
            wait_for(lambda: _down(client, "user.vllm", a.base_url), timeout=10)
            dash.refresh()
            assert "unreachable" in dash.remote.value and "0/2 up" in dash.remote.value
            client.delete("user.vllm")
            dash.refresh()
            assert dash.remote.value == ""
        finally:
            dash.close()
    finally:
        for upstream in (a, b):
            app.run(upstream.stop())
