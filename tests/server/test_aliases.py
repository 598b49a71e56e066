"""Model aliases through a real Jupyter server and real llama-server backends.

An alias routes an OpenAI request (official ``openai`` client), a load, a pin and an unload to
its model, and the answers name the alias; ``/models`` lists it; it persists in the data folder
and works on a new server over it; a clash with a model name or another model's alias is a 400
that changes nothing; deleting a model drops its aliases.
"""

from __future__ import annotations

import httpx

from lemonade_jupyter.core.catalog import DEFAULT_MODEL
from lemonade_jupyter.server.embedded import EmbeddedServer

from tests.helpers.http import API


async def aliases(api) -> dict[str, str]:
    answer = await api.get(f"{API}/alias")
    assert answer.code == 200, answer.body
    return answer.json["aliases"]


async def model_entries(api) -> dict[str, dict]:
    return {m["id"]: m for m in (await api.get(f"{API}/models")).json["data"]}


async def test_alias_routes_every_call_to_its_model_and_persists_across_a_restart(
    api, client, lemonade, lemonade_data_dir
):
    answer = await api.post(f"{API}/alias", {"model_name": DEFAULT_MODEL, "alias": "smol"})
    assert answer.code == 200, answer.body
    assert answer.json == {"status": "success", "alias": "smol", "model_name": DEFAULT_MODEL}
    assert await aliases(api) == {"smol": DEFAULT_MODEL}
    assert (await model_entries(api))[DEFAULT_MODEL]["aliases"] == ["smol"]

    # A chat for the alias auto-loads its model; the answer names what was asked for.
    reply = await client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert reply.model == "smol"
    assert list(await api.loaded()) == [DEFAULT_MODEL]

    loaded = await api.load("smol", pinned=True)
    assert loaded["model_name"] == "smol" and loaded["pinned"] is True
    assert (await api.loaded())[DEFAULT_MODEL]["pinned"] is True
    pin = await api.post("lemonade/internal/pin", {"model": "smol", "pinned": False})
    assert pin.code == 200 and pin.json["model_name"] == "smol", pin.body
    assert (await api.loaded())[DEFAULT_MODEL]["pinned"] is False
    assert (await api.post(f"{API}/unload", {"model_name": "smol"})).code == 200
    assert await api.loaded() == {}

    # A new server over the same data folder (once this one let go of it) knows the alias.
    await lemonade.stop_extension()
    other = EmbeddedServer(data_dir=lemonade_data_dir)
    other.start()
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            headers = {"Authorization": f"token {other.token}"}
            listed = (await http.get(f"{other.url}{API}/alias", headers=headers)).json()
            chat = await http.post(f"{other.url}{API}/chat/completions", headers=headers, json={
                "model": "smol", "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 2})
            health = (await http.get(f"{other.url}{API}/health", headers=headers)).json()
    finally:
        other.stop()
    assert listed == {"aliases": {"smol": DEFAULT_MODEL}}
    assert chat.status_code == 200, chat.text
    assert chat.json()["model"] == "smol"
    assert [m["model_name"] for m in health["all_models_loaded"]] == [DEFAULT_MODEL]


async def test_alias_clashes_and_bad_names_are_400s_that_change_nothing(
    api, default_model_file
):
    await api.pull("user.other", default_model_file)
    assert (await api.post(f"{API}/alias", {"model_name": DEFAULT_MODEL,
                                            "alias": "smol"})).code == 200
    before = await aliases(api)
    for why, body in [
        ("a model's name", {"model_name": "user.other", "alias": DEFAULT_MODEL}),
        ("a user model's name", {"model_name": DEFAULT_MODEL, "alias": "user.other"}),
        ("another model's alias", {"model_name": "user.other", "alias": "smol"}),
        ("user. names are user models'", {"model_name": DEFAULT_MODEL, "alias": "user.new"}),
        ("bad spelling", {"model_name": DEFAULT_MODEL, "alias": "has space"}),
        ("not a string", {"model_name": DEFAULT_MODEL, "alias": 3}),
        ("missing alias", {"model_name": DEFAULT_MODEL}),
        ("unknown key", {"model_name": DEFAULT_MODEL, "alias": "x", "extra": 1}),
    ]:
        answer = await api.post(f"{API}/alias", body)
        assert answer.code == 400, (why, answer.body)
        assert answer.error["type"] == "invalid_request_error", why
    missing = await api.post(f"{API}/alias", {"model_name": "nope", "alias": "x"})
    assert missing.code == 404 and missing.error["code"] == "model_not_found"
    gone = await api.post(f"{API}/alias/remove", {"alias": "nope"})
    assert gone.code == 404, gone.body
    assert await aliases(api) == before
    # The same alias for the same model again is no clash.
    again = await api.post(f"{API}/alias", {"model_name": DEFAULT_MODEL, "alias": "smol"})
    assert again.code == 200 and await aliases(api) == before
    # Removed, it is free for another model.
    assert (await api.post(f"{API}/alias/remove", {"alias": "smol"})).json == {
        "status": "success", "alias": "smol", "model_name": DEFAULT_MODEL}
    assert (await api.post(f"{API}/alias", {"model_name": "user.other",
                                            "alias": "smol"})).code == 200
    assert await aliases(api) == {"smol": "user.other"}


async def test_deleting_a_model_drops_its_aliases(api, default_model_file):
    await api.pull("user.other", default_model_file)
    for alias in ("o1", "o2"):
        assert (await api.post(f"{API}/alias", {"model_name": "user.other",
                                                "alias": alias})).code == 200
    assert (await api.post(f"{API}/alias", {"model_name": DEFAULT_MODEL,
                                            "alias": "smol"})).code == 200
    answer = await api.post(f"{API}/delete", {"model_name": "o1"})  # by one of its aliases
    assert answer.code == 200, answer.body
    assert "user.other" not in await model_entries(api)
    assert await aliases(api) == {"smol": DEFAULT_MODEL}
    chat = await api.post(f"{API}/chat/completions", {
        "model": "o2", "messages": [{"role": "user", "content": "Hi"}]})
    assert chat.code == 404 and chat.error["code"] == "model_not_found"
