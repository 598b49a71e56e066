"""A user's own server under the node's hub: it starts no router, and a kernel with its
environment reaches the node router as its user, with the server's own Hub token.

The Hub spawns alice's single-user server (``SimpleLocalProcessSpawner``, the test's config)
with the documented spawner environment; the kernel here is started by nbclient with that
server's environment as the Hub gave it (read from the process), as the server would.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import nbformat
import pytest
from nbclient import NotebookClient

from lemonade_jupyter.core.catalog import DEFAULT_MODEL

from tests.helpers.http import API, loaded
from tests.helpers.processes import backend_children
from tests.hub_node.hub import HubNode

A = DEFAULT_MODEL


@pytest.fixture
def alice_server(node: HubNode) -> Iterator[str]:
    url = node.start_server("alice")
    try:
        yield url
    finally:
        node.stop_server("alice")


def _run(env: dict[str, str], cells: list[str], path: str) -> list[list[dict[str, Any]]]:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, timeout=180, kernel_name="python3", allow_errors=False,
                   resources={"metadata": {"path": path}}).execute(env=env)
    return [list(cell.outputs) for cell in nb.cells]


def _text(outputs: list[dict[str, Any]]) -> str:
    parts = []
    for o in outputs:
        if o.get("output_type") == "stream":
            parts.append(o.get("text", ""))
        elif "data" in o:
            parts.append(o["data"].get("text/plain", ""))
    return "".join(parts)


@pytest.mark.timeout(600)
def test_node_kernel_of_a_users_server_reaches_the_node_as_that_user(node, alice_server,
                                                                     tmp_path):
    # Her server runs no router: its lemonade routes name the node, and it started no process.
    with httpx.Client(timeout=30, headers={
            "Authorization": f"token {node.tokens['alice']}"}) as http:
        resp = http.get(f"{alice_server}lemonade/api/v1/health")
    assert resp.status_code == 404, resp.text
    error = resp.json()["error"]
    assert error["code"] == "router_on_node" and node.service_url in error["message"]
    server = node.server_process("alice")
    # No backend below it (JupyterLab's own start-up may still run `npm prefix` a moment).
    assert backend_children(server.pid) == []

    env = dict(server.environ())
    assert "LEMONADE_JUPYTER_TOKEN" not in env  # nothing copied: the server's own token
    outputs = _run(env, [
        "%load_ext lemonade_jupyter",
        "%lemonade status",
        f"%lemonade load {A} --pinned",
        f"%lemonade chat --max-tokens 8 {A} Say hello",
        "from lemonade_jupyter import openai_client\n"
        "print(sorted(m.id for m in openai_client().models.list()))",
    ], str(tmp_path))

    assert f"node router at {node.service_url}, as alice" in _text(outputs[1])
    assert _text(outputs[3]).strip()  # the model's answer
    assert A in json.loads(_text(outputs[4]).replace("'", '"'))
    with node.client("admin") as http:
        health = http.get(f"{API}/health").json()
    model = loaded(health)[A]
    assert model["owner"] == "alice" and model["pinned"] is True
    # Still no router in her server: the load went to the node (no backend below her server).
    assert backend_children(server.pid) == []
