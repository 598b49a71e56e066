"""Fixtures of the notebook-side tests: an IPython shell, the app on memory backends, real routers.

``app``: the whole app (real router, real handlers) on in-memory backends, one per test
(:class:`tests.helpers.memory_app.MemoryApp`: it starts in about 0.1 s and runs no process).
Its catalog is the built-in default model plus ``user.embedder`` (an embedding model).

With ``llama-server``: ``embedded`` (the kernel's own embedded router, on its thread) and
``jupyter_server`` (a ``jupyter server`` subprocess with the extension, in isolated Jupyter
dirs). Both are module-scoped; ``clean_router`` unloads everything after each test so the
session's zombie/orphan check sees no backend left behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

from lemonade_jupyter.core.catalog import DEFAULT_MODEL, Catalog
from lemonade_jupyter.kernel.client import RouterClient
from lemonade_jupyter.kernel.embedded_client import embedded_client, shutdown_embedded
from lemonade_jupyter.kernel.magics import LemonadeMagics
from tests.helpers.http import loaded
from tests.helpers.jupyter import JupyterProcess
from tests.helpers.memory_app import MemoryApp
from tests.helpers.polling import wait_for

#: The built-in model every app has (its backends are in memory: the weights are never read).
DEFAULT = DEFAULT_MODEL
#: The embedding model of ``app``'s catalog.
EMBEDDER = "user.embedder"


@pytest.fixture
def ip(monkeypatch: pytest.MonkeyPatch) -> InteractiveShell:
    """The IPython shell with ``%load_ext lemonade_jupyter`` done (no discovery env leaks in)."""
    for var in ("LEMONADE_JUPYTER_URL", "LEMONADE_JUPYTER_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "lemonade_jupyter")
    return shell


def use_client(shell: InteractiveShell, client: RouterClient, **traits: Any) -> LemonadeMagics:
    """Register a fresh ``LemonadeMagics`` bound to ``client`` (text progress by default)."""
    traits.setdefault("progress", "text")
    magics = LemonadeMagics(shell, **traits)
    magics.client = client
    shell.register_magics(magics)
    return magics


def tiny_gguf(path: Path) -> Path:
    """A file with a GGUF header (memory backends never read the rest)."""
    path.write_bytes(b"GGUF" + bytes(60))
    return path


@pytest.fixture
def app(tmp_path: Path) -> Iterator[MemoryApp]:
    """The real app on memory backends, one llm and one embedding slot, memory sampled every
    0.1 s (charts fill in quickly); stopped after."""
    Catalog(tmp_path / "data").add_user_model(
        EMBEDDER, str(tiny_gguf(tmp_path / "embedder.gguf")), "llamacpp", ["embeddings"])
    with MemoryApp(tmp_path, max_loaded_models=1, memory_sample_interval_s=0.1) as running:
        yield running


@pytest.fixture
def app_magics(ip: InteractiveShell, app: MemoryApp) -> LemonadeMagics:
    return use_client(ip, app.client())


# -- the embedded router ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded(
    tmp_path_factory: pytest.TempPathFactory, llama_server_path: str
) -> Iterator[RouterClient]:
    """The process's embedded router (the kernel's own code path), in a private data dir."""
    data = tmp_path_factory.mktemp("embedded-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_DATA_DIR", str(data))
        mp.setenv("LEMONADE_LLAMA_SERVER", llama_server_path)
        shutdown_embedded()
        client = embedded_client()
        yield client
        shutdown_embedded()


# -- a real Jupyter server with the extension ------------------------------------------------
@pytest.fixture(scope="module")
def jupyter_server(
    tmp_path_factory: pytest.TempPathFactory, llama_server_path: str
) -> Iterator[JupyterProcess]:
    """A ``jupyter server`` subprocess with the extension and one slot per type."""
    server = JupyterProcess(tmp_path_factory.mktemp("jupyter"), lemonade={"max_loaded_models": 1},
                            env={"LEMONADE_LLAMA_SERVER": llama_server_path})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clean_router() -> Iterator[list[RouterClient]]:
    """Append real-router clients to the yielded list; every model is unloaded afterwards."""
    clients: list[RouterClient] = []
    yield clients
    for client in clients:
        client.unload()
        wait_for(lambda c=client: not loaded(c), timeout=30)
