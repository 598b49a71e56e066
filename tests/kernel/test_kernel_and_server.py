"""A kernel next to a real ``jupyter server`` with the extension (fake backends, so loads are
instant): Jupyter's own ``/metrics``, the memory history, JupyterHub and unix-socket discovery,
the OpenAI helper, and an embedded router that leaves the server's data alone.

The TCP server keeps its data where a default install does, ``<jupyter data dir>/lemonade``
(``JUPYTER_DATA_DIR`` is private to the test), which is what an embedded router in a kernel of
the same user used to pick up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from IPython.core.interactiveshell import InteractiveShell

from lemonade_jupyter.core.persistence import DataDirInUseError, DataDirLock
from lemonade_jupyter.kernel.client import RouterClient
from lemonade_jupyter.kernel.discovery import discover
from lemonade_jupyter.kernel.openai_support import openai_client
from lemonade_jupyter.server.embedded import EmbeddedServer

from tests.helpers.http import API, loaded
from tests.helpers.jupyter import JupyterProcess
from tests.helpers.polling import wait_for
from tests.helpers.processes import backend_children

from .conftest import DEFAULT, use_client

HUB_ENV = ("JUPYTERHUB_API_TOKEN", "JUPYTERHUB_SERVICE_URL", "LEMONADE_EMBEDDED_DATA_DIR")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, fake_llama_server_path: str
) -> Iterator[JupyterProcess]:
    root = tmp_path_factory.mktemp("jupyter-default-data")
    proc = JupyterProcess(
        root,
        lemonade={"max_loaded_models": 1, "data_dir": str(root / "data" / "lemonade")},
        env={"LEMONADE_LLAMA_SERVER": fake_llama_server_path},
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def router(server: JupyterProcess, clean_router: list[RouterClient]) -> RouterClient:
    clean_router.append(server.router_client)
    return server.router_client


@pytest.fixture(autouse=True)
def _no_hub_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in HUB_ENV:
        monkeypatch.delenv(var, raising=False)


# -- Jupyter's /metrics, the memory history ------------------------------------------------------
def test_jupyter_metrics_has_the_lemonade_series(
    server: JupyterProcess, router: RouterClient
) -> None:
    router.load(DEFAULT, pinned=True)
    with server.client() as http:
        text = http.get("metrics").text  # Jupyter's own route, not lemonade/metrics
        assert 'lemonade_loaded_models{type="llm"} 1.0' in text
        assert 'lemonade_pinned_models{type="llm"} 1.0' in text
        assert "lemonade_load_duration_seconds_count 1.0" in text
        assert "http_request_duration_seconds" in text or "process_" in text  # Jupyter's too
    with httpx.Client(base_url=server.url) as anonymous:
        assert anonymous.get("metrics").status_code == 403  # still behind Jupyter's login


def test_memory_history_route_serves_the_kept_samples(
    server: JupyterProcess, router: RouterClient
) -> None:
    router.health()  # a health read takes a sample
    history = wait_for(lambda: router.memory_history()["samples"] or None, timeout=10)
    assert all(0 <= s["pressure"] <= 1 and s["time"] > 0 for s in history)
    answer = router.memory_history()
    assert answer["source"] in ("system", "nvml") and answer["devices"]
    last = history[-1]["time"]
    assert all(s["time"] > last for s in router.memory_history(since=last)["samples"])
    with server.client() as http:
        bad = http.get(f"{API}/memory/history", params={"since": "yesterday"})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == "Parameter 'since' must be a Unix time in seconds"


# -- discovery under JupyterHub, the OpenAI helper ----------------------------------------------
def test_hub_discovery_uses_the_hub_token_and_service_url(
    ip: InteractiveShell,
    server: JupyterProcess,
    router: RouterClient,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """No server info file visible (hub single-user servers often run elsewhere), no parent pid:
    only the variables a hub gives its kernels. The bind address 0.0.0.0 is reached on the
    loopback, with the hub token."""
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("JPY_PARENT_PID", raising=False)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", server.token)
    monkeypatch.setenv("JUPYTERHUB_SERVICE_URL", f"http://0.0.0.0:{server.port}/")
    client = discover(mode="server")
    assert client.kind == "hub" and client.base_url == f"http://127.0.0.1:{server.port}/"
    assert client.token == server.token and "JUPYTERHUB_SERVICE_URL" in client.source
    assert client.health()["status"] == "ok"
    # %lemonade openai: the official client, on the same router, with the same key
    use_client(ip, client)
    oai = ip.run_line_magic("lemonade", "openai")
    assert DEFAULT in {m.id for m in oai.models.list().data}


@pytest.fixture
def sock_server(tmp_path: Path, fake_llama_server_path: str) -> Iterator[JupyterProcess]:
    """A Jupyter server listening on a unix socket only (``--sock``)."""
    short = Path(tempfile.mkdtemp(prefix="lj-sock-"))  # socket paths must stay short
    sock = short / "jupyter.sock"
    proc = JupyterProcess(tmp_path, env={"LEMONADE_LLAMA_SERVER": fake_llama_server_path})
    for d in ("config", "data", "runtime", "work", "ipython"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    config = {
        "ServerApp": {"sock": str(sock), "open_browser": False,
                      "root_dir": str(proc.notebook_dir),
                      "jpserver_extensions": {"lemonade_jupyter": True}},
        "IdentityProvider": {"token": proc.token},
        "LemonadeApp": {"data_dir": str(proc.data_dir)},
    }
    (tmp_path / "config" / "jupyter_server_config.json").write_text(json.dumps(config))
    argv = [sys.executable, "-m", "jupyter_server"]
    if os.geteuid() == 0:  # CI containers run as root
        argv.append("--allow-root")
    with open(proc.log_path, "ab") as log:
        proc.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=proc._environment(),
                                     cwd=tmp_path)
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=5.0,
                          headers=proc.headers()) as http:
            def up() -> bool:
                assert proc.proc is not None and proc.proc.poll() is None, proc.log_tail()
                try:
                    ok = http.get(f"http://localhost/{API}/health").status_code == 200
                except httpx.HTTPError:
                    return False
                return ok and any(proc.runtime_dir.glob("jpserver-*.json"))
            wait_for(up, timeout=90, what="the unix-socket server")
        yield proc
    finally:
        proc.stop()
        shutil.rmtree(short, ignore_errors=True)


def test_unix_socket_server_is_discovered_and_reached_through_it(
    sock_server: JupyterProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(sock_server.runtime_dir))
    monkeypatch.setenv("JPY_PARENT_PID", str(sock_server.pid))
    client = discover(mode="server")
    assert client.kind == "parent" and client.uds and client.uds.endswith("jupyter.sock")
    assert "unix socket" in client.source and client.token == sock_server.token
    assert client.health()["status"] == "ok"
    oai = openai_client(client)
    assert DEFAULT in {m.id for m in oai.models.list().data}


# -- the embedded router next to the server -----------------------------------------------------
def test_embedded_router_next_to_the_server_restores_none_of_its_models(
    server: JupyterProcess,
    router: RouterClient,
    monkeypatch: pytest.MonkeyPatch,
    fake_llama_server_path: str,
) -> None:
    router.load(DEFAULT, pinned=True)
    state = server.root / "data" / "lemonade" / "router_state.json"
    wait_for(lambda: state.is_file() and DEFAULT in state.read_text(), timeout=10)
    saved = state.read_text()
    # a kernel of the same user, with the same Jupyter data dir, on its embedded router
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(server.root / "data"))
    embedded = EmbeddedServer(llama_server_path=fake_llama_server_path)
    embedded.start()
    try:
        assert embedded.router is not None
        assert not embedded.router.preferences.pinned(DEFAULT)  # the server's pin is not read
        headers = {"Authorization": f"token {embedded.token}"}
        with httpx.Client(base_url=embedded.url, headers=headers) as http:
            assert http.get(f"{API}/health").json()["all_models_loaded"] == []
        ours = [p for p in backend_children() if p.ppid() == os.getpid()]
        assert ours == [], "the embedded router started a backend of its own"
        assert loaded(router)[DEFAULT]["pinned"] is True
        assert embedded.data_dir == server.root / "data" / "lemonade-embedded"
    finally:
        embedded.stop()
    assert state.read_text() == saved  # the server's state file was not written by the kernel


def test_a_second_router_on_one_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    # another process holds the folder: its pid is named
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path;"
         "from lemonade_jupyter.core.persistence import DataDirLock;"
         "DataDirLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)",
         str(folder)],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DataDirInUseError, match=rf"pid {holder.pid}\).*{re.escape(str(folder))}"):
            DataDirLock(folder).acquire()
        explicit = EmbeddedServer(data_dir=folder)
        with pytest.raises(DataDirInUseError, match="already uses the data folder"):
            explicit.start()
    finally:
        holder.kill()
        holder.wait()
    lock = DataDirLock(folder)
    lock.acquire()  # the holder died: its lock went with it
    lock.release()


def test_default_folder_held_by_another_kernel_gives_a_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_llama_server_path: str
) -> None:
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path))
    first = EmbeddedServer(llama_server_path=fake_llama_server_path)
    first.start()
    try:
        second = EmbeddedServer(llama_server_path=fake_llama_server_path)
        second.start()
        try:
            temp = second.data_dir
            assert first.data_dir == tmp_path / "lemonade-embedded" != temp
            assert f"used by another embedded router (pid {os.getpid()})" in second.note
        finally:
            second.stop()
        assert not temp.exists()  # removed when it stopped
    finally:
        first.stop()
    again = DataDirLock(tmp_path / "lemonade-embedded")
    again.acquire()  # released at stop
    again.release()

