"""The dashboard without a browser, against the fake router: traits, children, actions, threads."""

from __future__ import annotations

import threading

import ipywidgets as widgets

from lemonade_jupyter.kernel.model_row import COLUMNS
from lemonade_jupyter.kernel.widgets import Dashboard

from tests.helpers.polling import wait_for

from .fake_router import DEFAULT, FakeRouter


def _calls(fake: FakeRouter, path: str) -> list[object]:
    return [b for _, p, b in fake.requests if p == path]


def test_dashboard_refresh_builds_rows_and_panels(fake: FakeRouter) -> None:
    client = fake.client()
    client.load(DEFAULT, pinned=True)
    fake.events = [{"id": 1, "time": 1.0, "kind": "evict", "model": "old", "reason": "lru"}]
    dash = Dashboard(client, autostart=False)
    try:
        assert dash.models == [DEFAULT] and dash.last_refresh > 0 and dash.error == ""
        row = dash.rows[DEFAULT]
        assert row.pin.value is True and row.pin.description == "pinned"
        assert row.type.value == "llm" and row.state.value == "ready"
        assert row.memory.value == "100.0 MiB" and row.idle.value.endswith("s")
        headers = len(COLUMNS)  # the header cells, then the row
        assert list(dash.table.children[headers:]) == row.cells
        assert "lemonade-model-table" in dash.table._dom_classes
        assert "lemonade-pin-toggle" in row.pin._dom_classes
        assert "1/1" in dash.slots.value and "all pinned" in dash.slots.value
        assert dash.memory_bars["system"].value == 0.25
        assert set(dash.model_dropdown.options) == {DEFAULT, "embedder"}
        assert "fake router" in dash.header.value
        dash.refresh()
        assert "<polyline" in dash.sparkline.value  # two samples now
        dash.feed.start()
        wait_for(lambda: dash.feed.recent())
        dash.refresh()
        assert "reason: lru" in dash.events.value
        client.unload(DEFAULT)
        dash.refresh()
        assert dash.models == [] and dash.rows == {} and len(dash.table.children) == len(COLUMNS)
    finally:
        dash.close()


def test_dashboard_pin_toggle_calls_api_without_feedback_loop(fake: FakeRouter) -> None:
    client = fake.client()
    client.load(DEFAULT)
    dash = Dashboard(client, autostart=False, follow_events=False)
    try:
        row = dash.rows[DEFAULT]
        assert row.pin.value is False and _calls(fake, "internal/pin") == []
        row.pin.value = True  # a click
        assert _calls(fake, "internal/pin") == [{"model_name": DEFAULT, "pinned": True}]
        assert fake.loaded[DEFAULT]["pinned"] is True
        # the server changes the pin behind the panel: refresh moves the toggle, sends nothing
        client.pin(DEFAULT, False)
        sent = len(_calls(fake, "internal/pin"))
        dash.refresh()
        assert row.pin.value is False and row.pin.description == "pin"
        dash.refresh()
        assert len(_calls(fake, "internal/pin")) == sent
    finally:
        dash.close()


def test_dashboard_pin_error_reverts_toggle_and_shows_message(fake: FakeRouter) -> None:
    client = fake.client()
    client.load(DEFAULT)
    dash = Dashboard(client, autostart=False, follow_events=False)
    try:
        fake.loaded.clear()  # gone on the server since the last refresh
        dash.rows[DEFAULT].pin.value = True
        assert dash.rows[DEFAULT].pin.value is False
        assert "is not loaded" in dash.error and "is not loaded" in dash.header.value
    finally:
        dash.close()


def test_dashboard_unload_button_and_load_form(fake: FakeRouter) -> None:
    client = fake.client()
    client.load(DEFAULT)
    dash = Dashboard(client, autostart=False, follow_events=False)
    try:
        dash.rows[DEFAULT].unload.click()
        dash.wait_actions()
        assert _calls(fake, "api/v1/unload") == [{"model_name": DEFAULT}]
        assert dash.models == []
        dash.model_dropdown.value = "embedder"
        dash.load_pinned.value = True
        dash.load_button.click()
        dash.wait_actions()
        assert _calls(fake, "api/v1/load")[-1] == {"model_name": "embedder", "pinned": True}
        assert dash.models == ["embedder"] and dash.rows["embedder"].pin.value is True
        assert "✓ load embedder" in dash.load_status.value
        # a failing load shows the server's message in the form
        fake.catalog["user.big"] = {**fake.catalog["embedder"], "id": "user.big"}
        dash.refresh(catalog=True)
        dash.model_dropdown.value = "user.big"
        dash.load_button.click()
        dash.wait_actions()
        assert "All loaded models of type embedding are pinned" in dash.load_status.value
    finally:
        dash.close()


def test_dashboard_poller_updates_live_and_stops_on_close(fake: FakeRouter) -> None:
    client = fake.client()
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


def test_dashboard_is_a_widget_tree(fake: FakeRouter) -> None:
    dash = Dashboard(fake.client(), autostart=False, follow_events=False)
    try:
        assert isinstance(dash, widgets.VBox)
        assert dash.header in dash.children and dash.table in dash.children
        assert "lemonade-dashboard" in dash._dom_classes
    finally:
        dash.close()


def test_dashboard_logs_button_shows_the_last_lines_once(fake: FakeRouter) -> None:
    client = fake.client()
    client.load(DEFAULT)
    fake.logs[DEFAULT] = [f"line {i} <b>" for i in range(30)]
    dash = Dashboard(client, autostart=False, follow_events=False)
    try:
        row = dash.rows[DEFAULT]
        assert row.logs in row.actions.children and dash.log_view.value == ""
        row.logs.click()
        dash.wait_actions()
        [(method, path, _body)] = [r for r in fake.requests if r[1].startswith("api/v1/logs/")]
        assert (method, path) == ("GET", f"api/v1/logs/{DEFAULT}")
        assert fake.last_request.url.params["tail"] == "20"
        assert fake.last_request.url.params["follow"] == "false"
        view = dash.log_view.value
        assert f"Log of {DEFAULT}" in view
        assert "line 29 &lt;b&gt;" in view and "line 10 &lt;b&gt;" in view  # escaped
        assert "line 9 " not in view
        # A model without a log (gone on the server): the error, not a traceback.
        del fake.logs[DEFAULT]
        row.logs.click()
        dash.wait_actions()
        assert "is not in the catalog" in dash.log_view.value
    finally:
        dash.close()


def test_dashboard_shows_remote_models_with_their_replicas(fake: FakeRouter) -> None:
    fake.remote = [{
        "model_name": "user.vllm", "upstream_model": "meta-llama/Llama-3", "status": "ready",
        "in_flight": 2, "latency_ms": 12.4, "replicas": [
            {"base_url": "https://a.example/v1", "state": "up", "last_error": None},
            {"base_url": "https://b.example/v1", "state": "down",
             "last_error": "cannot connect"}]}]
    dash = Dashboard(fake.client(), autostart=False, follow_events=False)
    try:
        assert dash.remote in dash.children
        shown = dash.remote.value
        assert "user.vllm" in shown and "meta-llama/Llama-3" in shown
        assert "ready" in shown and "1/2 up" in shown and "2 in flight" in shown
        assert "12 ms" in shown
        assert "https://b.example/v1: down (cannot connect)" in shown
        assert "https://a.example/v1" not in shown  # replicas that are up need no line
        assert dash.models == []  # no slot: not a row of the loaded models
        fake.remote[0].update(status="unreachable")
        fake.remote[0]["replicas"][0]["state"] = "down"
        dash.refresh()
        assert "unreachable" in dash.remote.value and "0/2 up" in dash.remote.value
        fake.remote.clear()
        dash.refresh()
        assert dash.remote.value == ""
    finally:
        dash.close()
