"""``ctx_size: -1`` through a real Jupyter server: the model runs with the context it was
trained with (its GGUF header), which ``/health`` shows and llama-server's ``/props`` confirms.
"""

from __future__ import annotations

import httpx

from lemonade_jupyter.core.catalog import DEFAULT_MODEL
from lemonade_jupyter.core.gguf_facts import read_facts

from tests.helpers.http import API


async def test_ctx_size_minus_one_loads_the_trained_context(api, lemonade, default_model_file):
    trained = read_facts(default_model_file).context_length
    assert trained == 8192
    answer = await api.post(f"{API}/load", {"model_name": DEFAULT_MODEL, "ctx_size": -1})
    assert answer.code == 200, answer.body
    [entry] = (await api.health())["all_models_loaded"]
    assert entry["ctx_size"] == trained
    assert entry["recipe_options"] == {"ctx_size": -1}  # what was asked for, kept for reloads
    # The backend itself says so (its key from the router, as only the router has it).
    async with httpx.AsyncClient(timeout=10) as http:
        backend = f"{entry['backend_url']}/props"
        key = lemonade.router.get_live(DEFAULT_MODEL).backend.auth_headers()
        props = await http.get(backend, headers=key)
    assert props.status_code == 200, props.text
    assert props.json()["default_generation_settings"]["n_ctx"] == trained

    # A plain load shows the default context.
    await api.load(DEFAULT_MODEL, ctx_size=None)
    [entry] = (await api.health())["all_models_loaded"]
    assert entry["ctx_size"] == 2048 and entry["recipe_options"] == {}

