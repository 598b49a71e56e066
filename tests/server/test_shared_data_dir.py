"""Two routers on one data folder: the second server serves but keeps no state.

JupyterHub's named servers of one user share a home, so two Jupyter servers can find the same
lemonade data folder. Here the test itself holds the folder's lock (as a first server would)
before the fixture server starts, with a saved state that asks for a pinned model.
"""

from __future__ import annotations

import json

import pytest

from lemonade_jupyter.core.persistence import DataDirLock
from tests.helpers.http import API
from tests.helpers.processes import backend_pids


@pytest.fixture
def lemonade_data_dir(tmp_path, default_model_name):
    path = tmp_path / "lemonade-data"
    path.mkdir()
    (path / "router_state.json").write_text(json.dumps({
        "models": {default_model_name: {"pinned": True}}, "loaded": [default_model_name]}))
    lock = DataDirLock(path)
    lock.acquire()  # "another server" holds the folder
    yield path
    lock.release()


@pytest.mark.parametrize("lemonade_traits", [{"restore_on_start": True}], indirect=True)
async def test_second_server_on_a_held_folder_serves_but_restores_and_saves_nothing(
        api, lemonade, lemonade_data_dir, default_model_name):
    state = (lemonade_data_dir / "router_state.json").read_bytes()
    health = await api.health()
    assert health["all_models_loaded"] == [] and backend_pids() == set()
    [note] = health["notes"]
    assert str(lemonade_data_dir) in note and "restores and saves no state" in note
    loaded = await api.post(f"{API}/load", {"model_name": default_model_name, "pinned": True})
    assert loaded.code == 200, loaded.body
    assert (await api.post(f"{API}/unload", {"model_name": default_model_name})).code == 200
    assert (lemonade_data_dir / "router_state.json").read_bytes() == state

