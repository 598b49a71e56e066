"""``%lemonade pull`` from a (fake) hub: the byte counter in a terminal, Ctrl-C cancelling the
pull on the server, and the progress bar in a notebook executed by nbclient.

The terminal tests drive the magic in this process against an embedded router (its own thread
and data dir); the notebook test runs a real kernel, whose embedded router downloads through
the same fake hub (the environment is inherited)."""

from __future__ import annotations

import _thread
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from IPython.utils.capture import capture_output
from nbclient import NotebookClient

from lemonade_jupyter.kernel.client import RouterClient
from lemonade_jupyter.server.embedded import EmbeddedServer
from tests.helpers.jupyter import repo_first_on_pythonpath
from tests.helpers.polling import wait_for
from tests.kernel.conftest import ip, use_client  # noqa: F401 - the IPython shell fixture

from .conftest import SLOW, SMOL


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterClient]:
    server = EmbeddedServer(data_dir=tmp_path_factory.mktemp("magic-pull-data"))
    server.start()
    client = RouterClient(server.url, server.token, kind="explicit", source="test")
    yield client
    client.close()
    server.stop()


def partial_downloads(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*.incomplete") if p.stat().st_size > 0]


def test_pull_shows_a_byte_counter_in_a_terminal(ip, router, hub_cache):
    use_client(ip, router)  # text progress, as in a terminal
    with capture_output() as out:
        msg = ip.run_line_magic("lemonade", f"pull smol {SMOL}:Q4_1")
    assert repr(msg).startswith(f"Pulled user.smol (llm) from {SMOL}:Q4_1 in ")
    assert msg.data["path"].startswith(str(hub_cache))
    assert out.stdout.startswith("Pulling user.smol ")
    last = out.stdout.rsplit("\r", 1)[-1]
    assert "(100 %) done (" in last and last.endswith("s)\n")
    assert "user.smol" in {m["id"] for m in router.models()}


def test_ctrl_c_cancels_the_pull_on_the_server(ip, router, hub_cache):
    use_client(ip, router)
    main = threading.main_thread()

    def interrupt_once_downloading() -> None:
        wait_for(lambda: partial_downloads(hub_cache), timeout=30, what="a partial download")
        if main.is_alive():
            _thread.interrupt_main()  # what Ctrl-C (or a kernel interrupt) does

    helper = threading.Thread(target=interrupt_once_downloading, daemon=True)
    helper.start()
    with capture_output() as out, pytest.raises(KeyboardInterrupt):
        ip.run_line_magic("lemonade", f"pull slowpoke {SLOW}:Q4_1")
    helper.join(30)
    assert "Cancelled the pull of user.slowpoke; nothing was registered." in out.stderr
    assert "cancelled" in out.stdout
    assert "user.slowpoke" not in {m["id"] for m in router.models()}
    wait_for(lambda: not list(hub_cache.rglob("*.incomplete")), timeout=30,
             what="the partial file to be removed")


def test_notebook_pull_shows_a_progress_bar(tmp_path, monkeypatch, hub_cache):
    for var in ("LEMONADE_JUPYTER_URL", "LEMONADE_JUPYTER_TOKEN", "JPY_PARENT_PID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("PYTHONPATH", repo_first_on_pythonpath(dict(os.environ))["PYTHONPATH"])
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("%load_ext lemonade_jupyter"),
        nbformat.v4.new_code_cell(f"%lemonade pull nbsmol {SMOL}:Q8_0"),
    ])
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=False,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[1].outputs
    bars = [o for o in outputs if o.output_type == "display_data"]
    assert len(bars) == 1, outputs  # one display, updated in place
    assert "<progress" in bars[0].data["text/html"]
    assert "(100 %) done" in bars[0].data["text/plain"]
    result = [o for o in outputs if o.output_type == "execute_result"]
    assert result and result[0].data["text/plain"].startswith(
        f"Pulled user.nbsmol (llm) from {SMOL}:Q8_0 in ")
    assert list(hub_cache.glob("models--test--SmolLM2-GGUF/snapshots/*/*Q8_0.gguf"))
