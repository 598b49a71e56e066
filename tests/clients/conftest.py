"""Fixtures of the client tests.

* the in-process Jupyter server of ``tests/server`` (for the ``openai`` client, which has an
  async flavour that does not block that server's loop);
* ``jupyter``: a ``jupyter server`` subprocess with the extension under a non-root
  ``base_url``, one slot per type, the fake hub of ``tests/hub`` as its Hugging Face endpoint
  and a private hub cache, for the blocking clients (``ollama``, the CLI). Module-scoped;
  ``clean`` unloads every model after each test, so tests do not depend on each other and the
  autouse leftover check sees no backend.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.http import API, loaded
from tests.helpers.jupyter import JupyterProcess
from tests.helpers.polling import wait_for
from tests.hub.conftest import fake_hub, hub_dir  # noqa: F401 - the fake hub's fixtures
from tests.server.conftest import (  # noqa: F401 - fixtures shared with the server tests
    api, jp_server_config, lemonade, lemonade_data_dir, lemonade_traits, server_url, token,
)


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory, llama_server_path: str,
            fake_hub) -> Iterator[JupyterProcess]:  # noqa: F811 - the fixture above
    root = tmp_path_factory.mktemp("jupyter")
    server = JupyterProcess(
        root, lemonade={"max_loaded_models": 1, "restore_on_start": False,
                        "llama_server_path": llama_server_path},
        server_app={"base_url": "/jp/"},
        env={"HF_ENDPOINT": fake_hub.url, "HF_HUB_CACHE": str(root / "hf-cache"),
             "HF_TOKEN": None, "HF_HUB_OFFLINE": None})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def clean(jupyter: JupyterProcess) -> Iterator[JupyterProcess]:
    """The module's server; every model is unloaded (pins too) once the test is done."""
    yield jupyter
    with jupyter.client() as c:
        c.post(f"{API}/unload", json={})
        wait_for(lambda: not loaded(c.get(f"{API}/health").json()), timeout=60,
                 what="every model unloaded")
