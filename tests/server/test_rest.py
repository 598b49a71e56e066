"""REST routes through a real Jupyter server and real llama-server backends, with every error
they answer: status, ``type``, ``code`` and message.

The tests of bad requests and settings (``shared_api``) share ONE app for the module, on
in-memory backends: a refused request never reaches a backend, and the answers (status,
envelope, "changes nothing") are the real handlers' and router's. What needs a process (pins
that keep a backend, evictions, reloads, deletes that stop one) stays on llama-server."""

from __future__ import annotations

import json

import httpx
import psutil
import pytest

from lemonade_jupyter.server.embedded import EmbeddedServer

from tests.helpers.envelope import slots_pinned_envelope
from tests.helpers.http import API
from tests.helpers.polling import wait_until
from tests.helpers.processes import gone

PIN = "lemonade/internal/pin"
PINNED_REQUIRED = "Parameter 'pinned' is required and must be a boolean"
NAME_REQUIRED = "Parameter 'model' or 'model_name' is required"


# ---------------------------------------------------------------------------- /internal/pin
M = "SmolLM2-135M-Instruct-GGUF"
#: (case, raw body, expected message; "Invalid JSON body" is a prefix).
PIN_CASES = [
    ("bad JSON", "{", "Invalid JSON body"),
    ("empty body", "", "Invalid JSON body"),
    ("JSON array", "[true]", "Invalid JSON body"),
    ("no name", json.dumps({"pinned": True}), NAME_REQUIRED),
    ("nothing", json.dumps({}), NAME_REQUIRED),
    ("no pinned", json.dumps({"model_name": M}), PINNED_REQUIRED),
    ("string true", json.dumps({"model": M, "pinned": "true"}), PINNED_REQUIRED),
    ("string false", json.dumps({"model_name": M, "pinned": "false"}), PINNED_REQUIRED),
    ("int", json.dumps({"model_name": M, "pinned": 1}), PINNED_REQUIRED),
    ("null", json.dumps({"model_name": M, "pinned": None}), PINNED_REQUIRED),
    ("list", json.dumps({"model_name": M, "pinned": [True]}), PINNED_REQUIRED),
]


def test_pin_validation_messages(shared_api, default_model_name):
    """Every validation message verbatim; the loaded model is left as it was."""
    assert default_model_name == M
    shared_api.load(default_model_name)
    before = shared_api.loaded()
    for case, raw, message in PIN_CASES:
        answer = shared_api.post(PIN, raw=raw)
        assert answer.code == 400, (case, answer.body)
        err = answer.error
        assert err["type"] == "invalid_request_error", case
        if message == "Invalid JSON body":
            assert err["message"].startswith("Invalid JSON body"), (case, err)
        else:
            assert err["message"] == message, case
    assert shared_api.loaded() == before  # not pinned, not touched


def test_pin_of_a_model_that_is_not_loaded_is_404(shared_api, default_model_name):
    answer = shared_api.post(PIN, {"model_name": default_model_name, "pinned": True})
    assert answer.code == 404
    err = answer.error
    assert "not loaded" in err["message"] and default_model_name in err["message"]
    assert err["code"] == "model_not_found"
    answer = shared_api.post(PIN, {"model": "no-such-model", "pinned": True})
    assert answer.code == 404 and answer.error["code"] == "model_not_found"
    assert shared_api.health()["all_models_loaded"] == []


async def test_pin_and_unpin_a_loaded_model_keeps_its_backend(api, default_model_name):
    await api.load(default_model_name)
    pid = (await api.loaded())[default_model_name]["pid"]
    for body_key in ("model", "model_name"):
        answer = await api.post(PIN, {body_key: default_model_name, "pinned": True})
        assert answer.code == 200, answer.body
        assert answer.json == {"status": "success", "model_name": default_model_name,
                               "pinned": True}
        entry = (await api.loaded())[default_model_name]
        assert entry["pinned"] is True and entry["pid"] == pid
        assert (await api.health())["pinned_models"]["llm"] == 1
        answer = await api.post(PIN, {body_key: default_model_name, "pinned": False})
        assert answer.json["pinned"] is False
        assert (await api.loaded())[default_model_name]["pinned"] is False
    assert (await api.loaded())[default_model_name]["pid"] == pid


# ---------------------------------------------------------------------------- /load /unload
def test_load_unknown_model_is_404(shared_api):
    answer = shared_api.post(f"{API}/load", {"model_name": "no-such-model"})
    assert answer.code == 404
    err = answer.error
    assert err["code"] == "model_not_found" and "no-such-model" in err["message"]
    assert shared_api.health()["all_models_loaded"] == []


@pytest.mark.parametrize("pinned", ["true", 1, None, [True]])
def test_load_with_a_non_boolean_pinned_is_400(shared_api, default_model_name, pinned):
    answer = shared_api.post(f"{API}/load", {"model_name": default_model_name, "pinned": pinned})
    assert answer.code == 400, answer.body
    assert answer.error["type"] == "invalid_request_error"
    assert answer.error["param"] == "pinned"
    assert shared_api.health()["all_models_loaded"] == []


def test_load_bad_option_is_400_and_loads_nothing(shared_api, default_model_name):
    for body in ({"ctx_size": "big"}, {"ctx_size": 1}, {"llamacpp_args": "--port 1"},
                 {"no_such_option": 1}):
        answer = shared_api.post(f"{API}/load", {"model_name": default_model_name, **body})
        assert answer.code == 400, (body, answer.body)
        assert answer.error["type"] == "invalid_request_error"
    assert shared_api.health()["all_models_loaded"] == []


def test_load_into_a_full_pinned_pool_is_409_and_evicts_nothing(
    shared_api, default_model_name, default_model_file
):
    """On the shared app: the pinned backend is still the same one (its address; an in-memory
    backend has no pid) and nothing else was started."""
    pulled = shared_api.post(f"{API}/pull", {"model_name": "user.alias",
                                            "checkpoint": default_model_file,
                                            "recipe": "llamacpp"})
    assert pulled.code == 200, pulled.body
    shared_api.load(default_model_name, pinned=True)
    before = shared_api.loaded()
    answer = shared_api.post(f"{API}/load", {"model_name": "user.alias"})
    assert answer.code == 409
    assert answer.json == slots_pinned_envelope("user.alias")
    after = shared_api.loaded()
    assert after.keys() == {default_model_name}
    assert after[default_model_name]["backend_url"] == before[default_model_name]["backend_url"]
    assert after[default_model_name]["pinned"] is True


async def test_load_into_a_full_unpinned_pool_evicts_the_lru(
    api, default_model_name, default_model_file
):
    await api.pull("user.alias", default_model_file)
    await api.load(default_model_name)
    old_pid = (await api.loaded())[default_model_name]["pid"]
    loaded = await api.load("user.alias")
    assert loaded["model_name"] == "user.alias" and loaded["pinned"] is False
    assert (await api.loaded()).keys() == {"user.alias"}
    await wait_until(lambda: gone(old_pid), what="the evicted backend to exit")


async def test_unload_one_pinned_model_then_all(api, default_model_name, default_model_file):
    await api.post("lemonade/internal/set", {"max_loaded_models": 2})
    await api.pull("user.alias", default_model_file)
    await api.load(default_model_name, pinned=True)
    await api.load("user.alias", pinned=True)
    pids = {n: m["pid"] for n, m in (await api.loaded()).items()}
    answer = await api.post(f"{API}/unload", {"model_name": default_model_name})
    assert answer.code == 200 and answer.json == {"status": "success"}
    assert (await api.loaded()).keys() == {"user.alias"}
    assert gone(pids[default_model_name])
    answer = await api.post(f"{API}/unload", {})
    assert answer.code == 200 and answer.json == {"status": "success"}
    health = await api.health()
    assert health["all_models_loaded"] == [] and health["pinned_models"]["llm"] == 0
    assert gone(pids["user.alias"])


def test_unload_unknown_or_not_loaded_model_is_404(shared_api, default_model_name):
    for name in ("no-such-model", default_model_name):
        answer = shared_api.post(f"{API}/unload", {"model_name": name})
        assert answer.code == 404, answer.body
        assert answer.error["code"] == "model_not_found" and name in answer.error["message"]


# ---------------------------------------------------------------------------- config / set
def test_config_and_set(shared_api):
    answer = shared_api.get("lemonade/internal/config")
    assert answer.code == 200
    config = answer.json
    for key in ("max_loaded_models", "auto_evict", "auto_evict_threshold_pct"):
        assert key in config
    assert config["max_loaded_models"] == 1
    answer = shared_api.post("lemonade/internal/set",
                            {"max_loaded_models": 2, "auto_evict_threshold_pct": 0.5})
    assert answer.code == 200, answer.body
    assert answer.json["max_loaded_models"] == 2
    assert answer.json["auto_evict_threshold_pct"] == 0.5
    assert shared_api.get("lemonade/internal/config").json == answer.json
    assert shared_api.health()["max_models"]["llm"] == 2  # two models fit: see the unload test


@pytest.mark.parametrize(
    "body",
    [
        {"max_loaded_models": 0},
        {"max_loaded_models": -2},
        {"max_loaded_models": "2"},
        {"max_loaded_models": True},
        {"max_loaded_models": 1.5},
        {"max_loaded_models": None},
        {"auto_evict": "yes"},
        {"auto_evict_threshold_pct": 0},
        {"auto_evict_threshold_pct": 1.5},
        {"auto_evict_threshold_pct": "0.5"},
        {"no_such_key": 1},
        {"max_loaded_models": 3, "auto_evict_threshold_pct": 2},  # one bad value: nothing set
        {},
    ],
)
def test_set_bad_value_is_400_and_changes_nothing(shared_api, body):
    before = shared_api.get("lemonade/internal/config").json
    answer = shared_api.post("lemonade/internal/set", body)
    assert answer.code == 400, answer.body
    assert answer.error["type"] == "invalid_request_error"
    assert shared_api.get("lemonade/internal/config").json == before


# ---------------------------------------------------------------------------- pull / delete
@pytest.fixture
def not_gguf(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_bytes(b"NOTGGUF" + b"\0" * 64)
    return str(path)


def test_pull_rejects_bad_checkpoints(shared_api, tmp_path, not_gguf, default_model_file):
    before = shared_api.get(f"{API}/models").json
    cases = {
        "not a GGUF": not_gguf,
        "missing": str(tmp_path / "missing.gguf"),
        "relative": "model.gguf",
        "directory": str(tmp_path),
        "not a string": 5,
        "empty": "",
    }
    for why, checkpoint in cases.items():
        answer = shared_api.post(f"{API}/pull", {"model_name": "user.bad", "checkpoint": checkpoint,
                                                "recipe": "llamacpp"})
        assert answer.code == 400, (why, answer.body)
        assert answer.error["type"] == "invalid_request_error", why
        assert answer.error["param"] == "checkpoint", why
    for why, body in {
        "no user. prefix": {"model_name": "bad", "checkpoint": default_model_file},
        "unknown recipe": {"model_name": "user.x", "checkpoint": default_model_file,
                           "recipe": "vllm"},
        "labels not a list": {"model_name": "user.x", "checkpoint": default_model_file,
                              "labels": "llm"},
        "unknown key": {"model_name": "user.x", "checkpoint": default_model_file, "x": 1},
    }.items():
        answer = shared_api.post(f"{API}/pull", body)
        assert answer.code == 400, (why, answer.body)
        assert answer.error["type"] == "invalid_request_error", why
    assert shared_api.get(f"{API}/models").json == before


async def test_pull_registers_and_persists(api, lemonade, lemonade_data_dir, default_model_file):
    answer = await api.post(f"{API}/pull", {"model_name": "user.embed",
                                            "checkpoint": default_model_file,
                                            "recipe": "llamacpp", "labels": ["embeddings"]})
    assert answer.code == 200, answer.body
    assert answer.json["status"] == "success"
    models = {m["id"]: m for m in (await api.get(f"{API}/models")).json["data"]}
    assert models["user.embed"]["labels"] == ["embeddings"]
    assert models["user.embed"]["type"] == "embedding"
    assert models["user.embed"]["checkpoint"] == default_model_file
    assert (await api.health())["max_models"] == {"embedding": 1, "llm": 1}

    # A new server over the same data dir (the embedded one: same handlers, fresh router),
    # once this one let go of it.
    await lemonade.stop_extension()
    other = EmbeddedServer(data_dir=lemonade_data_dir)
    other.start()
    try:
        async with httpx.AsyncClient() as client:
            resp = await client.get(f"{other.url}lemonade/api/v1/models",
                                    headers={"Authorization": f"token {other.token}"})
    finally:
        other.stop()
    assert resp.status_code == 200
    again = {m["id"]: m for m in resp.json()["data"]}
    assert again["user.embed"]["labels"] == ["embeddings"]
    assert again["user.embed"]["checkpoint"] == default_model_file


async def test_delete_unloads_first(api, default_model_file):
    await api.pull("user.alias", default_model_file)
    await api.load("user.alias", pinned=True)
    pid = (await api.loaded())["user.alias"]["pid"]
    answer = await api.post(f"{API}/delete", {"model_name": "user.alias"})
    assert answer.code == 200, answer.body
    assert answer.json["status"] == "success"
    assert gone(pid)
    assert (await api.health())["all_models_loaded"] == []
    ids = [m["id"] for m in (await api.get(f"{API}/models")).json["data"]]
    assert "user.alias" not in ids
    answer = await api.post(f"{API}/load", {"model_name": "user.alias"})
    assert answer.code == 404 and answer.error["code"] == "model_not_found"


def test_delete_errors(shared_api, default_model_name):
    answer = shared_api.post(f"{API}/delete", {"model_name": "user.nope"})
    assert answer.code == 404 and answer.error["code"] == "model_not_found"
    answer = shared_api.post(f"{API}/delete", {"model_name": default_model_name})
    assert answer.code == 400 and answer.error["type"] == "invalid_request_error"
    answer = shared_api.post(f"{API}/delete", {})
    assert answer.code == 400 and answer.error["message"] == NAME_REQUIRED
    assert default_model_name in [m["id"] for m in shared_api.get(f"{API}/models").json["data"]]


async def test_option_change_reloads_in_place_and_keeps_the_pin(api, default_model_name):
    await api.load(default_model_name, pinned=True)
    first = (await api.loaded())[default_model_name]
    again = await api.load(default_model_name)  # repeat load: no reload, pin kept (rule 5)
    assert again["pinned"] is True
    assert (await api.loaded())[default_model_name]["pid"] == first["pid"]
    reloaded = await api.load(default_model_name, ctx_size=1024)  # new process (rule 6)
    assert reloaded["pinned"] is True
    entry = (await api.loaded())[default_model_name]
    assert entry["pid"] != first["pid"] and entry["pinned"] is True
    assert entry["recipe_options"]["ctx_size"] == 1024
    assert "1024" in psutil.Process(entry["pid"]).cmdline()
    assert gone(first["pid"])


async def test_lowering_the_slots_shrinks_the_pool_but_keeps_pins(
    api, default_model_name, default_model_file
):
    await api.post("lemonade/internal/set", {"max_loaded_models": 2})
    await api.pull("user.alias", default_model_file)
    await api.load(default_model_name, pinned=True)
    await api.load("user.alias")
    answer = await api.post("lemonade/internal/set", {"max_loaded_models": 1})
    assert answer.code == 200
    loaded = await api.loaded()
    assert loaded.keys() == {default_model_name} and loaded[default_model_name]["pinned"]
