"""``ctx_size: -1`` (a synonym of ``auto``) through a real Jupyter server: the model runs with
the context it was trained with (its GGUF header), which ``/health`` shows and llama-server's
``/props`` confirms. ``test_ctx_auto.py`` covers ``auto`` itself, the default.
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
    assert entry["ctx_size"] == trained and entry["ctx_size_requested"] == "auto"
    assert entry["recipe_options"] == {}  # -1 is auto, the default: resolved at every load
    # The backend itself says so (its key from the router, as only the router has it).
    async with httpx.AsyncClient(timeout=10) as http:
        backend = f"{entry['backend_url']}/props"
        key = lemonade.router.get_live(DEFAULT_MODEL).backend.auth_headers()
        props = await http.get(backend, headers=key)
    assert props.status_code == 200, props.text
    assert props.json()["default_generation_settings"]["n_ctx"] == trained

    # A plain load is the same: no reload (the same process).
    await api.load(DEFAULT_MODEL, ctx_size=None)
    [again] = (await api.health())["all_models_loaded"]
    assert again["ctx_size"] == trained and again["pid"] == entry["pid"]

