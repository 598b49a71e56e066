"""``ctx_size: -1`` with a real llama-server: the trained context, capped under a RAM budget.

llama-server's own ``/props`` (``default_generation_settings.n_ctx``) says which context it
really runs with.
"""

from __future__ import annotations

from lemonade_jupyter.core.catalog import default_model_path
from lemonade_jupyter.core.gguf_facts import read_facts
from lemonade_jupyter.core.options import LoadOptions

from .conftest import events

MIB = 1024 * 1024


async def served_n_ctx(router, name: str) -> int:
    backend = router.get_live(name).backend
    resp = await router.http.get(f"{backend.url}/props", headers=backend.auth_headers())
    resp.raise_for_status()
    return int(resp.json()["default_generation_settings"]["n_ctx"])


async def test_trained_context_is_capped_to_what_fits_the_memory_budget(catalog, make_router):
    facts = read_facts(default_model_path())
    assert facts.context_length == 8192  # what SmolLM2-135M was trained with
    # Room for 4096 cells and a hundred more: the cap is 4096 (a multiple of 256).
    budget = (facts.estimate_bytes(4096) + 100 * facts.kv_cache_bytes(1)) / MIB
    async with make_router(catalog, memory_budget_mib=budget) as router:
        m = await router.load("user.m1", options=LoadOptions(ctx_size=-1),
                              given=frozenset({"ctx_size"}))
        assert m.ctx_size == 4096 and m.options.ctx_size == -1
        assert await served_n_ctx(router, "user.m1") == 4096
        [capped] = events(router, "context", "user.m1")
        assert capped.reason == "fit"
        assert capped.detail == {"trained": 8192, "ctx_size": 4096}

        # With room for the whole trained context, a reload runs with all of it.
        await router.update_settings({"memory_budget_mib": facts.estimate_bytes(8192) / MIB + 1})
        await router.load("user.m1", options=LoadOptions(ctx_size=1024),
                          given=frozenset({"ctx_size"}))
        await router.load("user.m1", options=LoadOptions(ctx_size=-1),
                          given=frozenset({"ctx_size"}))
        assert await served_n_ctx(router, "user.m1") == 8192
        assert len(events(router, "context")) == 1
