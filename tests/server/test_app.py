"""``LemonadeApp`` traits reach the router, bad ones are refused, and a missing engine is a
clear JSON error naming what to install."""

from __future__ import annotations

import pytest
from traitlets import TraitError

from lemonade_jupyter.core.persistence import DataDirLock
from lemonade_jupyter.server.app import LemonadeApp

from tests.helpers.http import API


@pytest.mark.parametrize(
    "lemonade_traits",
    [{"max_loaded_models": 3, "auto_evict": True, "auto_evict_threshold_pct": 0.5}],
    indirect=True,
)
async def test_traits_configure_the_router(api, lemonade):
    config = (await api.get("lemonade/internal/config")).json
    assert config["max_loaded_models"] == 3
    assert config["auto_evict"] is True
    assert config["auto_evict_threshold_pct"] == 0.5
    assert (await api.health())["max_models"] == {"llm": 3}
    assert lemonade.settings["lemonade_ping_interval_s"] == 0.05


@pytest.mark.parametrize(
    ("trait", "value"),
    [("max_loaded_models", 0), ("max_loaded_models", -2), ("auto_evict_threshold_pct", 1.5),
     ("sse_ping_interval_s", 0), ("sse_ping_interval_s", -1.0)],
)
def test_bad_trait_values_are_refused(trait, value):
    with pytest.raises(TraitError, match=trait):
        LemonadeApp(**{trait: value})


@pytest.mark.parametrize(
    "lemonade_traits", [{"llama_server_path": "/nonexistent/llama-server"}], indirect=True
)
async def test_missing_engine_is_a_clear_json_error(api, default_model_name):
    for path, body in ((f"{API}/load", {"model_name": default_model_name}),
                       (f"{API}/chat/completions", {"model": default_model_name,
                                                    "messages": [{"role": "user",
                                                                  "content": "Hi"}]})):
        answer = await api.post(path, body)
        assert answer.code in (500, 503), answer.body
        err = answer.error
        assert err["code"] == "engine_missing"
        assert "/nonexistent/llama-server" in err["message"]
        assert "lemonade-jupyter install-llama-server" in err["message"]
    assert (await api.health())["all_models_loaded"] == []


async def test_the_server_holds_its_data_folder_and_has_no_note(api, lemonade, lemonade_data_dir):
    """One router per data folder: while this server runs, another router cannot take it
    (``test_shared_data_dir.py`` shows what a second one does instead)."""
    assert (await api.health())["notes"] == []
    with pytest.raises(RuntimeError, match="already uses the data folder"):
        DataDirLock(lemonade_data_dir).acquire()
    await lemonade.stop_extension()
    lock = DataDirLock(lemonade_data_dir)
    lock.acquire()  # given back at stop
    lock.release()
