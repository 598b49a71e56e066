"""The Ollama API through a real Jupyter server (``base_url`` ``/jp/``) and real llama-server
backends, driven by the official ``ollama`` client exactly as its users call it:
``ollama.Client(host=".../lemonade/ollama", headers={"Authorization": "token ..."})``.

Chat streamed and whole, generate, embed, list, ps, show, pull from the fake hub and delete;
``keep_alive`` and ``options`` reach the router (idle timeout, context size, unload after the
answer) and a pinned model stays through all of it; bad input gets Ollama's error shape with a
4xx and changes nothing."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import httpx
import ollama
import pytest

from lemonade_jupyter.core.catalog import DEFAULT_MODEL
from tests.helpers.http import API, loaded

GREEDY = {"temperature": 0, "top_k": 1, "seed": 1, "num_predict": 8}
MESSAGES = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture
def client(clean):
    c = ollama.Client(host=f"{clean.url}lemonade/ollama", headers=clean.headers(), timeout=180)
    yield c
    c._client.close()


@pytest.fixture
def rest(clean):
    with clean.client() as c:
        yield c


def health_models(rest) -> dict[str, dict]:
    return loaded(rest.get(f"{API}/health").json())


def register(rest, name: str, path: str, labels: list[str] | None = None) -> None:
    body = {"model_name": name, "checkpoint": path, "recipe": "llamacpp"}
    if labels:
        body["labels"] = labels
    resp = rest.post(f"{API}/pull", json=body)
    assert resp.status_code == 200, resp.text


def last_request(rest) -> dict:
    return rest.get(f"{API}/stats").json()


def test_chat_whole_and_streamed_give_the_same_greedy_answer(client, rest):
    started = time.time()
    whole = client.chat(model=DEFAULT_MODEL, messages=MESSAGES, stream=False, options=GREEDY)
    # Through the router: counted in the request statistics, like an OpenAI request.
    stats = last_request(rest)
    assert stats["finished_at"] >= started and stats["output_tokens"] == whole.eval_count
    assert stats["route"] == "/v1/chat/completions"
    assert whole.done and whole.done_reason in ("stop", "length")
    assert whole.model == DEFAULT_MODEL
    assert whole.message.role == "assistant" and whole.message.content
    assert whole.eval_count and whole.eval_count <= 8
    assert whole.prompt_eval_count and whole.total_duration > 0

    parts = list(client.chat(model=DEFAULT_MODEL, messages=MESSAGES, stream=True,
                             options=GREEDY))
    assert len(parts) >= 3, parts  # token by token, then the final line
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert parts[-1].eval_count == whole.eval_count
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert health_models(rest)[DEFAULT_MODEL]["status"] == "ready"
    assert last_request(rest)["finished_at"] > stats["finished_at"]


def test_generate_whole_streamed_and_raw(client, rest):
    whole = client.generate(model=DEFAULT_MODEL, prompt="Say hi", options=GREEDY, stream=False)
    assert whole.done and whole.response
    assert last_request(rest)["route"] == "/v1/chat/completions"  # the chat template applies
    streamed = list(client.generate(model=DEFAULT_MODEL, prompt="Say hi", options=GREEDY,
                                    stream=True))
    assert "".join(p.response for p in streamed) == whole.response
    raw = client.generate(model=DEFAULT_MODEL, prompt="The capital of France is", raw=True,
                          options=GREEDY, stream=False)
    assert raw.response and raw.eval_count
    assert last_request(rest)["route"] == "/v1/completions"  # the prompt as it is


def test_embed_and_embeddings(client, rest, default_model_file):
    register(rest, "user.embed", default_model_file, ["embeddings"])
    # The chat GGUF stands in for an embedding model; it needs a pooling type.
    assert rest.post(f"{API}/load", json={"model_name": "user.embed",
                                          "llamacpp_args": "--pooling mean"}).status_code == 200
    result = client.embed(model="user.embed", input=["hello world", "goodbye"])
    assert len(result.embeddings) == 2
    assert len(result.embeddings[0]) == len(result.embeddings[1]) > 10
    assert result.embeddings[0] != result.embeddings[1]
    assert result.prompt_eval_count
    single = client.embeddings(model="user.embed", prompt="hello world")
    assert single.embedding == pytest.approx(result.embeddings[0], abs=1e-4)
    models = health_models(rest)
    assert models["user.embed"]["type"] == "embedding"


def test_list_show_and_ps_with_keep_alive(client, rest):
    names = {m.model for m in client.list().models}
    assert DEFAULT_MODEL in names
    entry = next(m for m in client.list().models if m.model == DEFAULT_MODEL)
    assert entry.size > 50_000_000 and entry.details.format == "gguf"

    shown = client.show(DEFAULT_MODEL)
    assert shown.capabilities == ["completion"]
    assert shown.modelinfo["general.architecture"] == "llama"

    assert client.ps().models == []
    client.chat(model=DEFAULT_MODEL, messages=MESSAGES, stream=False, options=GREEDY,
                keep_alive="10m")
    (ps,) = client.ps().models
    assert ps.model == DEFAULT_MODEL and ps.size > 0 and ps.size_vram is not None
    left = (ps.expires_at - datetime.now(timezone.utc)).total_seconds()
    assert 500 < left <= 600
    live = health_models(rest)[DEFAULT_MODEL]
    assert live["recipe_options"]["evict_idle_timeout"] == 600
    assert live["recipe_options"]["auto_evict"] is True

    # keep_alive -1: kept loaded; num_ctx reloads it with that context.
    client.generate(model=DEFAULT_MODEL, prompt="", keep_alive=-1, options={"num_ctx": 1024})
    (ps,) = client.ps().models
    assert ps.expires_at.year > 2200 and ps.context_length == 1024


def test_keep_alive_zero_unloads_after_the_answer(client, rest):
    client.chat(model=DEFAULT_MODEL, messages=MESSAGES, stream=False, options=GREEDY,
                keep_alive=0)
    assert DEFAULT_MODEL not in health_models(rest)
    # A load without messages preloads; keep_alive 0 without messages unloads.
    client.chat(model=DEFAULT_MODEL, messages=[])
    assert health_models(rest)[DEFAULT_MODEL]["status"] == "ready"
    answer = client.generate(model=DEFAULT_MODEL, keep_alive=0)
    assert answer.done_reason == "unload"
    assert DEFAULT_MODEL not in health_models(rest)


def test_a_pinned_model_stays_through_an_ollama_clients_loads(client, rest, default_model_file):
    assert rest.post(f"{API}/load", json={"model_name": DEFAULT_MODEL,
                                          "pinned": True}).status_code == 200
    pid = health_models(rest)[DEFAULT_MODEL]["pid"]
    client.chat(model=DEFAULT_MODEL, messages=MESSAGES, stream=False, options=GREEDY,
                keep_alive=0)
    client.generate(model=DEFAULT_MODEL, keep_alive=0)
    models = health_models(rest)
    assert models[DEFAULT_MODEL]["pinned"] is True and models[DEFAULT_MODEL]["pid"] == pid
    (ps,) = client.ps().models
    assert ps.expires_at.year > 2200
    # Another model of the same type cannot take the only slot: the router's 409.
    register(rest, "user.other", default_model_file)
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="user.other", messages=MESSAGES, stream=False, options=GREEDY)
    assert caught.value.status_code == 409
    assert "pinned" in caught.value.error
    assert set(health_models(rest)) == {DEFAULT_MODEL}
    # A context change reloads the pinned model in its slot: still pinned.
    client.generate(model=DEFAULT_MODEL, prompt="", options={"num_ctx": 512})
    models = health_models(rest)
    assert models[DEFAULT_MODEL]["pinned"] is True and models[DEFAULT_MODEL]["ctx_size"] == 512
    rest.post(f"{API}/delete", json={"model_name": "user.other"})


def test_pull_from_the_hub_with_progress_then_chat_and_delete(client, rest, fake_hub):
    name = "hf.co/test/SmolLM2-GGUF:Q8_0"
    parts = list(client.pull(name, stream=True))
    assert parts[0].status == "pulling manifest"
    progress = [p for p in parts if p.status.startswith("pulling ") and p.total]
    assert progress and progress[-1].completed == progress[-1].total > 50_000_000
    assert [p.completed for p in progress] == sorted(p.completed for p in progress)
    assert parts[-1].status == "success"
    assert "user.SmolLM2-GGUF-Q8_0" in {m.model for m in client.list().models}

    # The name it was pulled by serves it.
    answer = client.chat(model=name, messages=MESSAGES, stream=False, options=GREEDY)
    assert answer.message.content and answer.model == name
    assert set(health_models(rest)) == {"user.SmolLM2-GGUF-Q8_0"}

    assert client.delete(name).status == "success"
    assert "user.SmolLM2-GGUF-Q8_0" not in {m.model for m in client.list().models}
    assert health_models(rest) == {}
    with pytest.raises(ollama.ResponseError) as caught:
        client.delete(name)
    assert caught.value.status_code == 404


@pytest.mark.parametrize("path, body, status, words", [
    ("chat", {"model": DEFAULT_MODEL, "messages": MESSAGES, "options": {"num_thread": 2}},
     400, "num_thread"),
    ("chat", {"model": DEFAULT_MODEL, "messages": MESSAGES, "keep_alive": "soon"},
     400, "keep_alive"),
    ("chat", {"model": DEFAULT_MODEL, "messages": "hi"}, 400, "messages"),
    ("chat", {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi",
                                                   "images": ["aGk="]}]}, 400, "images"),
    ("chat", {"model": DEFAULT_MODEL, "messages": MESSAGES, "format": "yaml"}, 400, "format"),
    ("chat", {"model": DEFAULT_MODEL, "messages": MESSAGES, "options": {"num_ctx": 3}},
     400, "num_ctx"),
    ("chat", {"model": "no-such-model", "messages": MESSAGES}, 404, "no-such-model"),
    ("chat", {"messages": MESSAGES}, 400, "model"),
    ("generate", {"model": DEFAULT_MODEL, "prompt": "x", "suffix": "y"}, 400, "suffix"),
    ("generate", {"model": DEFAULT_MODEL, "prompt": "x", "stream": "yes"}, 400, "stream"),
    ("generate", {"model": DEFAULT_MODEL, "prompt": "x", "options": {"temperature": "hot"}},
     400, "temperature"),
    ("embed", {"model": DEFAULT_MODEL, "input": []}, 400, "input"),
    ("embed", {"model": DEFAULT_MODEL, "input": "hi"}, 400, "embedding"),
    ("show", {"model": "no-such-model"}, 404, "no-such-model"),
    ("pull", {"model": "nothing-like-this"}, 404, "nothing-like-this"),
    ("pull", {"model": DEFAULT_MODEL, "stream": 1}, 400, "stream"),
])
def test_bad_input_gets_an_ollama_error_and_changes_nothing(clean, rest, path, body, status,
                                                            words):
    before = health_models(rest)
    resp = rest.post(f"lemonade/ollama/api/{path}", json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()
    assert set(error) == {"error"} and isinstance(error["error"], str), error
    assert words in error["error"], error
    assert health_models(rest) == before


def test_the_client_raises_ollamas_error_and_auth_is_jupyters(client, clean):
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model=DEFAULT_MODEL, messages=MESSAGES, options={"mirostat": 1})
    assert caught.value.status_code == 400 and "mirostat" in caught.value.error
    stranger = ollama.Client(host=f"{clean.url}lemonade/ollama")
    with pytest.raises(ollama.ResponseError) as caught:
        stranger.list()
    assert caught.value.status_code == 403
    resp = httpx.get(f"{clean.url}lemonade/ollama/api/version", headers=clean.headers())
    assert resp.status_code == 200 and json.loads(resp.text)["version"]
