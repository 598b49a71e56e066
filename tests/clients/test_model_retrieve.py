"""``GET lemonade/api/v1/models/{id}`` through a real Jupyter server, with the official
``openai`` client's ``models.retrieve``: a catalog model, an alias, a remote model, and the 404
envelope of an unknown id. Nothing is loaded: the route reads the catalog."""

from __future__ import annotations

import openai
import pytest

from lemonade_jupyter.core.ports import free_port
from tests.helpers.http import API


@pytest.fixture
def client(server_url, token, jp_asyncio_loop):
    c = openai.AsyncOpenAI(base_url=f"{server_url}{API}", api_key=token, max_retries=0,
                           timeout=60)
    yield c
    jp_asyncio_loop.run_until_complete(c.close())


async def listed(api) -> dict[str, dict]:
    answer = await api.get(f"{API}/models", params={"show_all": "true"})
    assert answer.code == 200, answer.body
    return {m["id"]: m for m in answer.json["data"]}


async def test_retrieve_a_catalog_model_gives_its_list_entry(api, client, default_model_name):
    model = await client.models.retrieve(default_model_name)
    assert model.id == default_model_name
    assert model.object == "model"
    assert model.owned_by == "lemonade"
    answer = await api.get(f"{API}/models/{default_model_name}")
    assert answer.code == 200
    assert answer.json == (await listed(api))[default_model_name]


async def test_retrieve_an_alias_names_the_alias_and_its_model(api, client, default_model_name):
    answer = await api.post(f"{API}/alias", {"model_name": default_model_name, "alias": "smol"})
    assert answer.code == 200, answer.body
    model = await client.models.retrieve("smol")
    assert model.id == "smol"
    data = model.model_dump()
    assert data["alias_of"] == default_model_name
    assert data["checkpoint"] == (await listed(api))[default_model_name]["checkpoint"]


async def test_retrieve_a_remote_model(api, client):
    # Registration does not need the upstream to answer; the entry says how it stands.
    base = f"http://127.0.0.1:{free_port()}/v1"
    answer = await api.post(f"{API}/pull", {"model_name": "user.far", "recipe": "remote",
                                            "upstream_model": "far-model", "base_url": base})
    assert answer.code == 200, answer.body
    model = await client.models.retrieve("user.far")
    assert model.id == "user.far"
    assert model.owned_by == "remote"
    assert model.model_dump()["checkpoint"] == "far-model"


async def test_retrieve_an_unknown_model_is_a_404_envelope(api, client):
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("no-such-model")
    assert caught.value.status_code == 404
    answer = await api.get(f"{API}/models/no-such-model")
    assert answer.code == 404
    error = answer.error
    assert error["code"] == "model_not_found"
    assert "no-such-model" in error["message"]
