"""Fixtures of the node tests: one real JupyterHub running the node router as a service.

The Hub is slow to start (its proxy, its database, the service's Jupyter server), so one runs
for the whole folder (:func:`hub`); :func:`node` gives each test a node with nothing loaded,
so the tests do not depend on their order. The node's backends are the fake llama-server:
what these tests check (identities, owners, scopes, refusals, restarts) does not depend on the
engine. Three catalog models: the default one, and ``user.b`` and ``user.c``, registered from
files in the node's model folder (links to the default model's file).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator

import pytest

from tests.helpers.processes import assert_no_leftovers, backend_pids
from tests.hub_node.hub import HubNode

MODELS = ("user.b", "user.c")


def _needs() -> None:
    """JupyterHub and its proxy are test needs (``pip install -e .[test]`` and
    ``npm install -g configurable-http-proxy``; scripts/test.sh installs both)."""
    assert importlib.util.find_spec("jupyterhub"), (
        "jupyterhub is missing: pip install -e '.[test]' (or pip install jupyterhub)")
    assert shutil.which("configurable-http-proxy"), (
        "configurable-http-proxy is missing: npm install -g configurable-http-proxy")


@pytest.fixture(autouse=True)
def no_zombies_or_orphans():
    """The node's backends outlive a test by design (the service runs for the folder); the
    :func:`hub` fixture checks that none is left once the Hub is gone."""
    yield


@pytest.fixture(scope="session")
def hub(tmp_path_factory, fake_llama_server_path, default_model_file) -> Iterator[HubNode]:
    _needs()
    root = tmp_path_factory.mktemp("hub")
    folder = root / "models"
    folder.mkdir()
    for name in MODELS:
        target = folder / f"{name}.gguf"
        try:
            os.link(default_model_file, target)
        except OSError:  # another file system
            shutil.copyfile(default_model_file, target)
    before = backend_pids()
    node = HubNode(root / "hub", lemonade={
        "llama_server_path": fake_llama_server_path,
        "node_model_folders": [str(folder)],
        "max_loaded_models": 2,
        "remote_key_envs": ["LEMONADE_REMOTE_KEY_*"],
        # The tests' remote upstreams listen on this machine, which a node refuses by default:
        # they are named "localhost", the one host allowed (127.0.0.1 stays refused).
        "remote_allowed_hosts": ["localhost"],
    })
    try:
        node.start()
        with node.client("alice") as alice:
            for name in MODELS:
                resp = alice.post("lemonade/api/v1/pull", json={
                    "model_name": name, "checkpoint": str(folder / f"{name}.gguf"),
                    "recipe": "llamacpp", "labels": ["llm"]})
                assert resp.status_code == 200, resp.text
        yield node
    finally:
        node.stop()
    assert_no_leftovers(before, timeout=30)


@pytest.fixture
def node(hub: HubNode) -> Iterator[HubNode]:
    """The Hub's node with nothing loaded before and after the test (admin unloads all)."""
    hub.wait_for_service(60)
    with hub.client("admin") as admin:
        assert admin.post("lemonade/api/v1/unload", json={}).status_code == 200
    yield hub
    hub.wait_for_service(180)
    with hub.client("admin") as admin:
        assert admin.post("lemonade/api/v1/unload", json={}).status_code == 200
