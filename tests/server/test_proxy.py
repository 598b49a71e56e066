"""The OpenAI proxy through a real Jupyter server and real llama-server backends, driven by the
official ``openai`` client: streaming chunk by chunk, ``model`` rewriting, embeddings, the 409 of
an auto-load into a pinned pool, and a client that goes away mid-stream. The refusals of
unknown models and bad bodies use ``shared_api`` (ONE in-process app for the module, on
in-memory backends): they are answered before any backend is asked."""

from __future__ import annotations

import json
import time

import httpx
import openai
import psutil
import pytest

from tests.helpers.envelope import slots_pinned_envelope
from tests.helpers.http import API
from tests.helpers.polling import wait_until

PINNED_409 = slots_pinned_envelope("user.alias")


@pytest.fixture
def alias(api, default_model_file, jp_asyncio_loop):
    """The default GGUF registered again as ``user.alias``: answers must name ``user.alias``."""
    jp_asyncio_loop.run_until_complete(api.pull("user.alias", default_model_file))
    return "user.alias"


async def backend_is_generating(lemonade, name: str) -> bool:
    """Ask the model's llama-server itself (``GET /slots``) whether any slot is processing."""
    live = lemonade.router.get_live(name)
    assert live is not None and live.backend is not None
    backend = live.backend
    async with httpx.AsyncClient() as c:
        resp = await c.get(f"{backend.url}/slots", headers=backend.auth_headers(), timeout=5)
    resp.raise_for_status()
    return any(slot.get("is_processing") for slot in resp.json())


async def test_stream_chat_chunk_by_chunk_with_the_openai_client(api, lemonade, client, alias):
    messages = [{"role": "user", "content": "Count from one to one hundred."}]
    stream = await client.chat.completions.create(
        model=alias, messages=messages, max_tokens=24, stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = []
    async for chunk in stream:
        if not chunks:
            # The first chunk is here before the answer is complete: llama-server is still
            # generating it, and the proxy holds the model busy for the whole stream.
            assert await backend_is_generating(lemonade, alias)
            entry = (await api.loaded())[alias]
            assert entry["is_busy"] is True and entry["in_flight"] == 1
        chunks.append(chunk)
    # llama-server sends one event per token, or a few tokens per event when it is starved of
    # CPU; either way many events, not one buffered blob.
    assert len(chunks) >= 3
    assert {c.model for c in chunks} == {alias}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason == "length"
    entry = (await api.loaded())[alias]
    assert entry["is_busy"] is False and entry["in_flight"] == 0


async def test_answers_name_the_requested_model(client, alias):
    """llama-server names its GGUF path; clients must see the name they asked for. (Streamed
    chat and plain chat answers are checked by the streaming and disconnect tests.)"""
    completion = await client.completions.create(model=alias, prompt="Once upon", max_tokens=3)
    assert completion.model == alias and completion.choices[0].text
    stream = await client.completions.create(model=alias, prompt="Once upon", max_tokens=3,
                                             stream=True)
    models = {chunk.model async for chunk in stream}
    assert models == {alias}


async def test_embeddings_from_an_embedding_labelled_model(api, client, default_model_name,
                                                           default_model_file):
    await api.pull("user.embed", default_model_file, labels=["embeddings"])
    await api.load(default_model_name, pinned=True)  # the llm pool is full and pinned
    # SmolLM2 is a chat model whose GGUF names no pooling type, and llama-server refuses
    # OpenAI embeddings with pooling "none" (a real embedding GGUF carries its own): the
    # auto-loaded backend's refusal comes back as our envelope, with the backend's status.
    answer = await api.post(f"{API}/embeddings", {"model": "user.embed", "input": "hi"})
    assert answer.code == 400, answer.body
    assert answer.error["code"] == "backend_error"
    assert "pooling" in answer.error["message"].lower()
    # With a pooling type it serves (reloaded in place, in its own pool).
    await api.load("user.embed", llamacpp_args="--pooling mean")
    result = await client.embeddings.create(model="user.embed", input=["hello world", "goodbye"])
    assert result.model == "user.embed"
    assert [d.index for d in result.data] == [0, 1]
    dims = {len(d.embedding) for d in result.data}
    assert len(dims) == 1 and dims.pop() > 16
    assert result.data[0].embedding != result.data[1].embedding
    loaded = await api.loaded()
    assert loaded.keys() == {default_model_name, "user.embed"}  # separate pools
    assert loaded["user.embed"]["type"] == "embedding"
    assert "--embeddings" in psutil.Process(loaded["user.embed"]["pid"]).cmdline()
    assert "--embeddings" not in psutil.Process(loaded[default_model_name]["pid"]).cmdline()


@pytest.mark.parametrize("stream", [False, True])
async def test_auto_load_into_a_pinned_pool_is_409_and_evicts_nothing(
    api, default_model_name, alias, stream
):
    await api.load(default_model_name, pinned=True)
    before = await api.loaded()
    body = {"model": alias, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
            "stream": stream}
    answer = await api.post(f"{API}/chat/completions", body)
    assert answer.code == 409, answer.body
    assert answer.json == PINNED_409
    assert await api.loaded() == before


async def test_auto_load_409_through_the_openai_client(api, client, default_model_name, alias):
    await api.load(default_model_name, pinned=True)
    with pytest.raises(openai.ConflictError) as info:
        await client.chat.completions.create(
            model=alias, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    assert info.value.status_code == 409
    assert info.value.body == PINNED_409["error"]
    assert (await api.loaded()).keys() == {default_model_name}


def test_unknown_model_and_bad_requests(shared_api):
    for stream in (False, True):
        answer = shared_api.post(f"{API}/chat/completions",
                                {"model": "no-such-model", "messages": [], "stream": stream})
        assert answer.code == 404, answer.body
        assert answer.error["code"] == "model_not_found"
    for body in ({"messages": []}, {"model": 5}, {"model": ""},
                 {"model": "SmolLM2-135M-Instruct-GGUF", "stream": "yes"}):
        for route in ("chat/completions", "completions", "embeddings"):
            answer = shared_api.post(f"{API}/{route}", body)
            assert answer.code == 400, (route, body, answer.body)
            assert answer.error["type"] == "invalid_request_error"
    assert shared_api.health()["all_models_loaded"] == []


async def test_client_disconnect_mid_stream_frees_the_backend(
    api, lemonade, server_url, token, alias
):
    body = {"model": alias, "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": 1500, "ignore_eos": True, "stream": True}
    data_events = 0
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", f"{server_url}{API}/chat/completions", json=body,
                               headers={"Authorization": f"token {token}"}) as resp:
            assert resp.status_code == 200
            # Keep a reference to the line iterator: a dropped one is finalized by the loop,
            # and httpcore then closes the connection at a random moment (that would be the
            # disconnect, too early).
            lines = resp.aiter_lines()
            async for line in lines:
                if line.startswith("data: {"):
                    data_events += 1
                    assert json.loads(line[6:])["model"] == alias
                if data_events >= 3:
                    break
            assert await backend_is_generating(lemonade, alias)
            await lines.aclose()
    # The connection is closed. 1500 tokens take 17 s or more: the proxy must notice,
    # release the model and close the backend request so llama-server stops generating.
    disconnected = time.monotonic()

    async def released() -> bool:
        entry = (await api.loaded())[alias]
        return entry["in_flight"] == 0 and entry["is_busy"] is False

    await wait_until(released, timeout=10, what="the proxy to release the model")

    async def stopped() -> bool:
        return not await backend_is_generating(lemonade, alias)

    await wait_until(stopped, timeout=10, what="llama-server to stop generating")
    assert time.monotonic() - disconnected < 10
    # The backend is still healthy and serves the next request.
    answer = await api.post(f"{API}/chat/completions",
                            {"model": alias, "messages": [{"role": "user", "content": "Hi"}],
                             "max_tokens": 2})
    assert answer.code == 200 and answer.json["model"] == alias
