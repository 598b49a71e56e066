"""A whisper model in the router, inside a real Jupyter server: the same lifecycle as a
llama-server backend (its own port and key, readiness, pins, one slot per type, crash reload
that keeps the pin, measured memory), with the real engine on the synthetic model.

The router's transcription routes are tested elsewhere; these tests speak to the engine's
``/inference`` directly, with the key the router gave it.
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from lemonade_jupyter.errors import EngineMissingError, ModelLoadError
from tests.helpers.http import API
from tests.helpers.polling import wait_until
from tests.speech.conftest import WHISPER, engine_inference, register_whisper

SECOND_LLM = "user.second-llm"

pytestmark = pytest.mark.parametrize(
    "lemonade_traits", [{"memory_sample_interval_s": 0.2, "watchdog_interval_s": 0.2}],
    indirect=True)


def entry(health: dict, name: str) -> dict | None:
    return next((m for m in health["all_models_loaded"] if m["model_name"] == name), None)


async def test_whisper_model_loads_pinned_into_the_transcription_pool(
        api, lemonade, whisper_model_file, jfk_wav):
    await register_whisper(api, whisper_model_file)
    loaded = await api.load(WHISPER, pinned=True)
    assert loaded["recipe"] == "whispercpp" and loaded["pinned"] is True

    async def measured():
        health = await api.health()
        e = entry(health, WHISPER)
        return health if e and e["memory_bytes"] else None

    health = await wait_until(measured, what="the whisper backend's memory")
    e = entry(health, WHISPER)
    assert e["type"] == "transcription" and e["status"] == "ready" and e["pinned"] is True
    assert e["memory_bytes"] > 10 * 2**20  # the engine's RSS: Python, whisper.cpp, the model
    assert e["engine"]["flavour"] == "pywhispercpp"
    assert health["loaded_models"]["transcription"] == 1
    assert health["pinned_models"]["transcription"] == 1
    assert health["max_models"]["transcription"] == 1
    assert {"model_name": WHISPER, "type": "transcription"}.items() <= \
        health["pins"][0].items()
    cmd = " ".join(psutil.Process(e["pid"]).cmdline())
    assert "whisper_server" in cmd and lemonade.router.get_live(WHISPER).backend.api_key \
        not in cmd  # the key travels in the environment

    backend = lemonade.router.get_live(WHISPER).backend
    answer = await engine_inference(backend.url, backend.api_key, jfk_wav,
                                    response_format="verbose_json", language="en")
    assert answer.status_code == 200, answer.text
    assert answer.json()["duration"] == 11.0


async def test_whisper_backend_refuses_a_request_without_its_key(api, lemonade,
                                                                 whisper_model_file, jfk_wav):
    await register_whisper(api, whisper_model_file)
    await api.load(WHISPER)
    backend = lemonade.router.get_live(WHISPER).backend
    assert (await engine_inference(backend.url, None, jfk_wav)).status_code == 401
    assert (await engine_inference(backend.url, "guess", jfk_wav)).status_code == 401
    assert (await engine_inference(backend.url, backend.api_key, jfk_wav)).status_code == 200


async def test_an_llm_and_a_whisper_model_are_loaded_together(
        api, whisper_model_file, default_model_name):
    """max_loaded_models is per type: one llm slot and one transcription slot."""
    await register_whisper(api, whisper_model_file)
    await api.load(default_model_name)
    await api.load(WHISPER)
    health = await api.health()
    assert health["max_models"]["llm"] == 1 and health["max_models"]["transcription"] == 1
    assert {m["model_name"]: m["status"] for m in health["all_models_loaded"]} == {
        default_model_name: "ready", WHISPER: "ready"}


async def test_a_pinned_whisper_model_survives_llm_swaps(
        api, whisper_model_file, default_model_name, default_model_file):
    await register_whisper(api, whisper_model_file)
    await api.pull(SECOND_LLM, default_model_file)
    await api.load(WHISPER, pinned=True)
    pid = entry(await api.health(), WHISPER)["pid"]
    for llm, gone in ((default_model_name, None), (SECOND_LLM, default_model_name),
                      (default_model_name, SECOND_LLM)):
        await api.load(llm)
        health = await api.health()
        names = {m["model_name"] for m in health["all_models_loaded"]}
        assert names == {WHISPER, llm}, names
        assert gone not in names
        w = entry(health, WHISPER)
        assert w["pid"] == pid and w["pinned"] is True and w["status"] == "ready"


async def test_a_killed_whisper_backend_is_reloaded_with_its_pin(
        api, lemonade, whisper_model_file, jfk_wav):
    await register_whisper(api, whisper_model_file)
    await api.load(WHISPER, pinned=True)
    old = entry(await api.health(), WHISPER)
    os.kill(old["pid"], signal.SIGKILL)

    async def reloaded():
        e = entry(await api.health(), WHISPER)
        return e if e and e["status"] == "ready" and e["pid"] != old["pid"] else None

    new = await wait_until(reloaded, what="the whisper backend's reload")
    assert new["pinned"] is True and new["backend_url"] != ""
    assert not psutil.pid_exists(old["pid"]) or \
        psutil.Process(old["pid"]).status() == psutil.STATUS_ZOMBIE
    backend = lemonade.router.get_live(WHISPER).backend
    answer = await engine_inference(backend.url, backend.api_key, jfk_wav)
    assert answer.status_code == 200, answer.text


async def test_a_whisper_model_needs_a_ggml_file(api, tmp_path, default_model_file,
                                                 whisper_model_file):
    """The recipe decides the format: a GGUF is no whisper model, a ggml file no llm."""
    not_ggml = await api.post(f"{API}/pull", {"model_name": "user.w2",
                                              "checkpoint": default_model_file,
                                              "recipe": "whispercpp"})
    assert not_ggml.code == 400 and not_ggml.error["param"] == "checkpoint"
    not_gguf = await api.post(f"{API}/pull", {"model_name": "user.w3",
                                              "checkpoint": whisper_model_file,
                                              "recipe": "llamacpp"})
    assert not_gguf.code == 400 and not_gguf.error["param"] == "checkpoint"
    wrong_label = await api.post(f"{API}/pull", {"model_name": "user.w4",
                                                 "checkpoint": whisper_model_file,
                                                 "recipe": "whispercpp", "labels": ["llm"]})
    assert wrong_label.code == 400 and wrong_label.error["param"] == "labels"
    default_label = await api.post(f"{API}/pull", {"model_name": "user.w5",
                                                   "checkpoint": whisper_model_file,
                                                   "recipe": "whispercpp"})
    assert default_label.code == 200, default_label.body
    models = (await api.get(f"{API}/models")).json["data"]
    w5 = next(m for m in models if m["id"] == "user.w5")
    assert w5["type"] == "transcription" and w5["labels"] == ["transcription"]
    assert not any(m["id"] in ("user.w2", "user.w3", "user.w4") for m in models)


async def test_a_whisper_model_that_cannot_load_fails_with_the_engines_words(
        api, tmp_path, whisper_model_file):
    """A file with whisper.cpp's magic and sizes it would crash on: the load fails with the
    engine's reason, nothing keeps running, nothing holds the slot."""
    fields = bytearray(open(whisper_model_file, "rb").read(48))
    fields[12:16] = (15).to_bytes(4, "little")  # n_audio_state != n_text_state
    broken = tmp_path / "ggml-broken.bin"
    broken.write_bytes(bytes(fields) + b"\0" * 64)
    await register_whisper(api, str(broken), "user.broken")
    answer = await api.post(f"{API}/load", {"model_name": "user.broken"})
    assert answer.code == ModelLoadError.status_code, answer.body
    assert answer.error["code"] == ModelLoadError.code
    message = answer.error["message"]
    assert "whisper-server for 'user.broken'" in message and "impossible" in message
    assert entry(await api.health(), "user.broken") is None


async def test_a_downsized_whisper_model_keeps_its_slot_and_comes_back(
        api, lemonade, whisper_model_file, jfk_wav):
    """Downsizing a whisper model stops its process and keeps its slot; the next load
    starts it again."""
    await register_whisper(api, whisper_model_file)
    await api.load(WHISPER)
    old_pid = entry(await api.health(), WHISPER)["pid"]
    freed = await lemonade.router.downsize(lemonade.router.get_live(WHISPER))
    e = entry(await api.health(), WHISPER)
    assert e["status"] == "downsized" and e["memory_bytes"] == 0 and e["pid"] is None
    assert freed is None or freed > 0
    assert (await api.health())["loaded_models"]["transcription"] == 1
    await api.load(WHISPER)
    e = entry(await api.health(), WHISPER)
    assert e["status"] == "ready" and e["pid"] not in (None, old_pid)
    backend = lemonade.router.get_live(WHISPER).backend
    assert (await engine_inference(backend.url, backend.api_key, jfk_wav)).status_code == 200


async def test_no_whisper_engine_is_refused_before_anything_moves(
        api, whisper_model_file, tmp_path, monkeypatch):
    """The engine check runs before admission: a missing whisper engine evicts nobody."""
    await register_whisper(api, whisper_model_file)
    await register_whisper(api, whisper_model_file, "user.whisper2")
    await api.load(WHISPER)
    before = await api.loaded()
    monkeypatch.setenv("LEMONADE_WHISPER_SERVER", str(tmp_path / "no-whisper-server"))
    answer = await api.post(f"{API}/load", {"model_name": "user.whisper2"})
    assert answer.code == EngineMissingError.status_code, answer.body
    assert "LEMONADE_WHISPER_SERVER" in answer.error["message"]
    assert await api.loaded() == before
