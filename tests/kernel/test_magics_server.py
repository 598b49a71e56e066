"""``%lemonade`` and the dashboard against a real ``jupyter server`` with the extension.

The server runs as a subprocess in isolated Jupyter dirs (its backends are our grandchildren, so
the session's orphan check covers them). The shell plays a kernel of that server: discovery
finds it through its info file and ``JPY_PARENT_PID``, exactly as in a real kernel.
"""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell

from lemonade_jupyter.kernel.client import RouterClient
from lemonade_jupyter.kernel.discovery import discover
from lemonade_jupyter.kernel.magics import LemonadeMagics
from lemonade_jupyter.kernel.widgets import Dashboard

from tests.helpers.jupyter import JupyterProcess

from .flows import dashboard_flow, magics_full_flow


@pytest.fixture
def server(
    jupyter_server: JupyterProcess,
    clean_router: list[RouterClient],
    monkeypatch: pytest.MonkeyPatch,
) -> JupyterProcess:
    """The server, with this process posing as one of its kernels."""
    clean_router.append(jupyter_server.router_client)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter_server.runtime_dir))
    monkeypatch.setenv("JPY_PARENT_PID", str(jupyter_server.pid))
    for var in ("LEMONADE_JUPYTER_URL", "LEMONADE_JUPYTER_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return jupyter_server


def test_server_discovered_by_parent_pid(server: JupyterProcess) -> None:
    client = discover(mode="server")
    assert client.kind == "parent" and client.base_url.endswith(f":{server.port}/")
    assert client.token == server.token
    assert f"pid {server.pid}, JPY_PARENT_PID" in client.source
    assert client.health()["status"] == "ok"


def test_server_discovered_as_running_server_and_by_env(
    server: JupyterProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JPY_PARENT_PID", "1")  # not our server: found because it answers health
    client = discover(mode="server")
    assert client.kind == "running" and "answers health" in client.source
    monkeypatch.setenv("LEMONADE_JUPYTER_URL", server.url)
    monkeypatch.setenv("LEMONADE_JUPYTER_TOKEN", server.token)
    client = discover()
    assert client.kind == "env" and client.base_url == server.url
    assert client.health()["status"] == "ok"


def test_server_magics_full_flow(
    ip: InteractiveShell, server: JupyterProcess, default_model_name: str, default_model_file: str
) -> None:
    magics = LemonadeMagics(ip, progress="text")  # auto discovery, like a kernel
    ip.register_magics(magics)
    magics_full_flow(
        ip,
        server.router_client,
        default_model_name,
        default_model_file,
        source="this kernel's Jupyter server at ",
        register=False,
    )
    assert magics.client.kind == "parent"


def test_server_dashboard_actions_reach_the_server(
    server: JupyterProcess, default_model_name: str
) -> None:
    dashboard_flow(discover(mode="server"), default_model_name)


def test_server_alias_logs_and_trained_context_from_the_magics_and_the_dashboard(
    ip: InteractiveShell, server: JupyterProcess, default_model_name: str
) -> None:
    """``%lemonade alias``, ``load ALIAS --ctx-size -1``, ``logs`` and the dashboard's logs
    button, against the real server (a real backend's real log)."""
    magics = LemonadeMagics(ip, progress="none")
    ip.register_magics(magics)
    router = server.router_client
    ip.run_line_magic("lemonade", f"alias {default_model_name} smol-magic")
    try:
        assert router.aliases() == {"smol-magic": default_model_name}
        msg = ip.run_line_magic("lemonade", "load smol-magic --ctx-size -1")
        assert repr(msg).startswith("Loaded smol-magic")
        [entry] = router.health()["all_models_loaded"]
        assert entry["model_name"] == default_model_name and entry["ctx_size"] == 8192
        logs = ip.run_line_magic("lemonade", "logs smol-magic -n 5")
        assert len(logs.data["lines"]) == 5
        assert router.token not in repr(logs)
        dash = Dashboard(router, autostart=False, follow_events=False)
        try:
            dash.rows[default_model_name].logs.click()
            dash.wait_actions()
            assert f"Log of {default_model_name}" in dash.log_view.value
            assert "<pre" in dash.log_view.value and "no log yet" not in dash.log_view.value
        finally:
            dash.close()
    finally:
        ip.run_line_magic("lemonade", "alias --remove smol-magic")
