"""``lemonade-jupyter node``: the Jupyter server's command line under a Hub, and the refusals
of a node that is not under one or that would pass any llama-server flag."""

from __future__ import annotations

import pytest
from traitlets import TraitError
from traitlets.config import Config

from lemonade_jupyter.server.app import LemonadeApp
from lemonade_jupyter.server.node import NodeConfigError, node_argv
from lemonade_jupyter.server.node_access import server_user

HUB_ENV = {
    "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:10101",
    "JUPYTERHUB_SERVICE_PREFIX": "/services/lemonade/",
    "JUPYTERHUB_API_TOKEN": "secret",
    "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api",
}


def test_node_argv_listens_where_the_hub_says_with_its_auth_last():
    argv = node_argv(HUB_ENV, ["--LemonadeApp.data_dir=/srv/x",
                               "--ServerApp.identity_provider_class=x.Open"])
    assert "--ServerApp.ip=127.0.0.1" in argv and "--ServerApp.port=10101" in argv
    assert "--ServerApp.base_url=/services/lemonade/" in argv
    assert "--LemonadeApp.node_mode=True" in argv
    providers = [a for a in argv if a.startswith("--ServerApp.identity_provider_class=")]
    assert providers[-1].endswith("hub_auth.NodeIdentityProvider")  # the last one wins
    assert argv[0] == "--LemonadeApp.data_dir=/srv/x"


@pytest.mark.parametrize("change", [
    {"JUPYTERHUB_API_TOKEN": ""},
    {"JUPYTERHUB_SERVICE_URL": "https://127.0.0.1:1"},
    {"JUPYTERHUB_SERVICE_URL": "http://127.0.0.1"},
])
def test_node_argv_refuses_an_environment_that_is_not_a_hub_service(change):
    with pytest.raises(NodeConfigError):
        node_argv({**HUB_ENV, **change})


def test_node_mode_refuses_allow_any_llamacpp_args_at_start(tmp_path):
    app = LemonadeApp(config=Config({"LemonadeApp": {
        "node_mode": True, "allow_any_llamacpp_args": True, "data_dir": str(tmp_path)}}))
    with pytest.raises(TraitError, match="node mode"):
        app.initialize_settings()
    assert list(tmp_path.iterdir()) == []  # refused before anything was touched


def test_node_single_user_owner_is_the_hubs_name_for_the_server_else_the_systems(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_USER", "carol")
    assert server_user() == "carol"
    monkeypatch.delenv("JUPYTERHUB_USER")
    monkeypatch.setattr("getpass.getuser", lambda: "dave")
    assert server_user() == "dave"
