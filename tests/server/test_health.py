"""``GET lemonade/api/v1/health`` and ``/models``: their exact shapes.

With a real backend where the entry describes the process (its pid, its command line); the
rest (``shared_api``: ONE in-process app for the module, on in-memory backends) checks fields
the router fills from its own state, which a backend in memory reports the same way."""

from __future__ import annotations

import psutil

from tests.helpers.http import API

MODEL_KEYS = {
    "model_name", "checkpoint", "type", "recipe", "recipe_options", "pinned", "status", "pid",
    "backend_url", "last_use", "load_duration_ms", "memory_bytes", "is_busy", "device",
    "ctx_size", "ctx_size_requested",
}


def test_health_empty_router(shared_api):
    health = shared_api.health()
    assert health["status"] == "ok"
    assert health["all_models_loaded"] == []
    assert health["max_models"] == {"llm": 1}
    assert health["pinned_models"] == {"llm": 0}
    assert health["memory"]["source"] in ("nvml", "system")


async def test_health_shape_with_a_loaded_pinned_model(api, default_model_name, default_model_file):
    loaded = await api.load(default_model_name, pinned=True)
    assert loaded == {
        "status": "success",
        "model_name": default_model_name,
        "checkpoint": default_model_file,
        "recipe": "llamacpp",
        "pinned": True,
        "ctx_size": 8192,  # auto: the default model's trained context
        "ctx_size_requested": "auto",
    }
    health = await api.health()
    assert health["status"] == "ok"
    [entry] = health["all_models_loaded"]
    assert MODEL_KEYS <= set(entry), MODEL_KEYS - set(entry)
    assert entry["model_name"] == default_model_name
    assert entry["checkpoint"] == default_model_file
    assert entry["type"] == "llm"
    assert entry["recipe"] == "llamacpp"
    assert isinstance(entry["recipe_options"], dict)
    assert entry["pinned"] is True
    assert entry["status"] == "ready"
    assert psutil.pid_exists(entry["pid"])
    assert "llama-server" in " ".join(psutil.Process(entry["pid"]).cmdline())
    assert entry["backend_url"].startswith("http://127.0.0.1:")
    assert isinstance(entry["last_use"], int) and entry["last_use"] > 1_600_000_000_000  # ms
    assert entry["load_duration_ms"] > 0
    assert entry["memory_bytes"] is None or entry["memory_bytes"] > 0
    assert entry["is_busy"] is False
    assert isinstance(entry["device"], str) and entry["device"]
    assert "api_key" not in str(entry).lower()

    assert health["max_models"] == {"llm": 1}
    assert health["pinned_models"] == {"llm": 1}
    memory = health["memory"]
    assert memory["source"] in ("nvml", "system")
    assert memory["devices"], memory
    for device in memory["devices"]:
        assert isinstance(device["name"], str) and device["name"]
        assert isinstance(device["total"], int) and device["total"] > 0
        assert isinstance(device["used"], int) and 0 <= device["used"] <= device["total"]


def test_health_polls_do_not_count_as_use(shared_api, default_model_name):
    shared_api.load(default_model_name)
    first = shared_api.loaded()[default_model_name]["last_use"]
    for _ in range(3):
        shared_api.health()
        shared_api.get("lemonade/internal/config")
        shared_api.get(f"{API}/models")
    assert shared_api.loaded()[default_model_name]["last_use"] == first


def test_models_lists_the_catalog_with_its_fields(shared_api, default_model_name, default_model_file):
    answer = shared_api.get(f"{API}/models")
    assert answer.code == 200
    data = answer.json
    assert data["object"] == "list"
    [entry] = [m for m in data["data"] if m["id"] == default_model_name]
    assert entry["object"] == "model"
    assert entry["labels"] == ["llm"]
    assert entry["type"] == "llm"
    assert entry["recipe"] == "llamacpp"
    assert entry["checkpoint"] == default_model_file
    assert entry["loaded"] is False and entry["pinned"] is False
    shared_api.load(default_model_name, pinned=True)
    data = shared_api.get(f"{API}/models").json
    [entry] = [m for m in data["data"] if m["id"] == default_model_name]
    assert entry["loaded"] is True and entry["pinned"] is True


async def test_polled_gets_are_not_jupyter_activity(api, jp_serverapp):
    """A dashboard polling health/config/models must not keep an idle server from culling."""
    settings = jp_serverapp.web_app.settings
    settings["api_last_activity"] = marker = object()
    for path in (f"{API}/health", f"{API}/models", "lemonade/internal/config",
                 "lemonade/metrics"):
        assert (await api.get(path)).code == 200
        assert settings["api_last_activity"] is marker, path
    await api.post("lemonade/internal/set", {"max_loaded_models": 2})  # a real action counts
    assert settings["api_last_activity"] is not marker
