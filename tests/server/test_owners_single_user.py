"""In a single-user server the owner of a model is the server's user (the Hub's name for it,
else the system's), and nothing else changes: no scope is asked for, and a refused flag is the
usual 400."""

from __future__ import annotations

import getpass
import os

import pytest

from tests.helpers.http import API

pytestmark = pytest.mark.usefixtures("lemonade")


@pytest.fixture
def lemonade_traits(fake_llama_server_path):
    return {"llama_server_path": fake_llama_server_path}


async def test_owners_single_user_owner_is_the_servers_user(api, default_model_name):
    username = os.environ.get("JUPYTERHUB_USER") or getpass.getuser()
    answer = await api.post(f"{API}/load", {"model_name": default_model_name, "pinned": True})
    assert answer.code == 200, answer.body
    health = (await api.get(f"{API}/health")).json
    (entry,) = health["all_models_loaded"]
    assert entry["owner"] == username
    assert health["pins"] == [{"model_name": default_model_name, "type": "llm",
                               "owner": username}]
    # Unpinning needs no scope here, and the bad flag is the usual 400, not a node's 403.
    answer = await api.post("lemonade/internal/pin",
                            {"model_name": default_model_name, "pinned": False})
    assert answer.code == 200
    answer = await api.post(f"{API}/load", {"model_name": default_model_name,
                                            "llamacpp_args": "--lora /tmp/x.gguf"})
    assert answer.code == 400 and answer.error["type"] == "invalid_request_error"
