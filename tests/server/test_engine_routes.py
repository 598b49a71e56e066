"""The engine's other inference routes through a real Jupyter server and real llama-server
backends: OpenAI's Responses API with the official ``openai`` client, Anthropic's messages with
the official ``anthropic`` client, reranking, infill, tokenizing and the chat template, each
answering what the engine answers; and bodies that cannot succeed refused before any load
(those on ``shared_api``: ONE in-process app for the module, on in-memory backends, as a
refused body never reaches one)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import anthropic
import httpx
import pytest

from tests.helpers.http import API
from tests.helpers.polling import wait_until

#: llama-server's own answer is compared with ours: greedy sampling gives the same tokens.
GREEDY = {"temperature": 0, "seed": 1}


@pytest.fixture
def claude(api, server_url, token, jp_asyncio_loop):
    """The official Anthropic client against ``lemonade/api`` (it adds ``/v1/messages``).

    It sends its key as ``x-api-key``, which Jupyter does not read: Jupyter's token goes in
    ``Authorization`` (``default_headers``), and the key is any non-empty string."""
    c = anthropic.AsyncAnthropic(
        base_url=f"{server_url}lemonade/api", api_key="unused", max_retries=0, timeout=60,
        default_headers={"Authorization": f"token {token}"},
    )
    yield c
    jp_asyncio_loop.run_until_complete(c.close())


@pytest.fixture(scope="session")
def fim_model_file(default_model_file, tmp_path_factory) -> str:
    """The default GGUF with fill-in-the-middle tokens named in its metadata.

    SmolLM2's GGUF names none, so llama-server refuses ``/infill`` for it. Any three special
    tokens will do for the engine to build an infill prompt (the model was not trained for it,
    so what it writes is no good code, but it is the engine's answer, which is what we test)."""
    out = tmp_path_factory.mktemp("fim") / "smollm2-fim.gguf"
    subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--force",
         "--special-token-by-id", "fim_pre", "8", "--special-token-by-id", "fim_suf", "9",
         "--special-token-by-id", "fim_mid", "10", default_model_file, str(out)],
        check=True, capture_output=True, timeout=300,
    )
    return str(out)


async def direct(lemonade, name: str, path: str, body: dict) -> httpx.Response:
    """Ask the model's llama-server itself, with its key (what our answer must match)."""
    live = lemonade.router.get_live(name)
    assert live is not None and live.backend is not None
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(f"{live.backend.url}{path}", json=body,
                               headers=live.backend.auth_headers())


# ---------------------------------------------------------------------------- OpenAI Responses
async def test_responses_with_the_openai_client(client, default_model_name):
    resp = await client.responses.create(model=default_model_name, input="Say hi",
                                         max_output_tokens=8, temperature=0)
    assert resp.model == default_model_name
    assert resp.status == "completed" and resp.output_text.strip()
    assert resp.usage.output_tokens == 8


async def test_responses_streaming_with_the_openai_client(client, default_model_name):
    stream = await client.responses.create(model=default_model_name, input="Count to ten",
                                           max_output_tokens=8, stream=True)
    kinds, deltas, final = [], [], None
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        elif event.type == "response.completed":
            final = event.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert len(deltas) >= 2  # event by event, not one buffered blob
    assert final is not None and final.model == default_model_name
    assert final.output_text == "".join(deltas)


# ---------------------------------------------------------------------------- Anthropic messages
async def test_messages_with_the_anthropic_client(claude, default_model_name):
    message = await claude.messages.create(
        model=default_model_name, max_tokens=8,
        messages=[{"role": "user", "content": "Say hi"}], system="You are terse.")
    assert message.model == default_model_name and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text.strip()
    assert message.stop_reason in ("max_tokens", "end_turn")
    assert message.usage.output_tokens > 0
    counted = await claude.messages.count_tokens(
        model=default_model_name, messages=[{"role": "user", "content": "Say hi"}])
    assert counted.input_tokens > 2


async def test_messages_streaming_with_the_anthropic_client(claude, default_model_name):
    # Greedy: a sampled answer may end (end_turn) before its 8 tokens, and llama-server's
    # messages route ignores ignore_eos.
    async with claude.messages.stream(
        model=default_model_name, max_tokens=8, extra_body={"temperature": 0},
        messages=[{"role": "user", "content": "Count to ten"}],
    ) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(texts) >= 2
    assert final.model == default_model_name
    assert final.content[0].text == "".join(texts)
    assert final.stop_reason == "max_tokens"


async def test_anthropic_errors_come_back_as_the_anthropic_client_reads_them(
        claude, api, default_model_name):
    with pytest.raises(anthropic.NotFoundError) as info:
        await claude.messages.create(model="no-such-model", max_tokens=4,
                                     messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["error"]["code"] == "model_not_found"
    with pytest.raises(anthropic.BadRequestError) as bad:
        await claude.messages.create(model=default_model_name, max_tokens=4, messages=[])
    assert bad.value.body["error"]["param"] == "messages"
    assert (await api.health())["all_models_loaded"] == []


async def test_responses_replayed_once_when_the_backend_dies_mid_request(api, lemonade,
                                                                       default_model_name):
    """The replay rule of chat holds on the new routes: a plain request whose backend is
    killed while it generates is sent again to a reloaded backend and answered whole.
    (``ignore_eos`` makes the length certain; llama-server's messages route ignores it.)"""
    await api.load(default_model_name)
    first = lemonade.router.get_live(default_model_name).backend
    body = {"model": default_model_name, "max_output_tokens": 400, "ignore_eos": True,
            "input": "Tell a long story."}
    request = asyncio.ensure_future(api.post(f"{API}/responses", body))

    async def generating() -> bool:
        async with httpx.AsyncClient(timeout=5) as http:
            slots = await http.get(f"{first.url}/slots", headers=first.auth_headers())
        return any(slot.get("is_processing") for slot in slots.json())

    await wait_until(generating, timeout=30, what="the backend to start generating")
    os.kill(first.pid, signal.SIGKILL)
    answer = await request
    assert answer.code == 200, answer.body
    assert answer.json["usage"]["output_tokens"] == 400
    live = lemonade.router.get_live(default_model_name)
    assert live.backend is not first and live.backend.pid != first.pid


# ---------------------------------------------------------------------------- rerank and infill
async def test_rerank_answers_what_the_engine_answers(api, lemonade, default_model_file):
    await api.pull("user.rerank", default_model_file, labels=["reranking"])
    body = {"model": "user.rerank", "query": "What is a cat?",
            "documents": ["A cat is a small furry animal.", "Stocks fell on Monday."]}
    ours = await api.post(f"{API}/rerank", body)  # auto-loads it, like chat
    assert ours.code == 200, ours.body
    engine = await direct(lemonade, "user.rerank", "/v1/rerank", body)
    assert engine.status_code == 200
    assert ours.json["results"] == engine.json()["results"]
    assert ours.json["model"] == "user.rerank"
    same = await api.post(f"{API}/reranking", body)  # the older name: the same handler
    assert same.json["results"] == ours.json["results"]


async def test_infill_answers_what_the_engine_answers(api, lemonade, fim_model_file,
                                                      server_url, token):
    await api.pull("user.fim", fim_model_file)
    body = {"model": "user.fim", "input_prefix": "def add(a, b):\n    return ",
            "input_suffix": "\n", "n_predict": 6, **GREEDY}
    ours = await api.post(f"{API}/infill", body)
    assert ours.code == 200, ours.body
    engine = (await direct(lemonade, "user.fim", "/infill", body)).json()
    assert ours.json["content"] == engine["content"]
    assert ours.json["tokens_predicted"] == engine["tokens_predicted"] == 6
    assert ours.json["model"] == "user.fim"
    # Streamed: llama-server's events, renamed, in order.
    events = []
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", f"{server_url}{API}/infill",
                               json={**body, "stream": True},
                               headers={"Authorization": f"token {token}"}) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line.startswith("data: {"):
                    events.append(line)
    assert len(events) >= 2
    assert all('"model":"user.fim"' in e for e in events if '"model"' in e)


async def test_infill_refusal_of_the_engine_arrives_in_our_envelope(api, lemonade,
                                                                    default_model_name):
    """The default model names no fill-in-the-middle tokens: the engine's own refusal (501,
    not supported) comes back in our envelope as the caller's error: 400, with its message."""
    body = {"model": default_model_name, "input_prefix": "def f(", "input_suffix": "):",
            "n_predict": 4}
    ours = await api.post(f"{API}/infill", body)
    engine = await direct(lemonade, default_model_name, "/infill", body)
    assert engine.status_code == 501
    assert ours.code == 400
    assert ours.error["message"] == engine.json()["error"]["message"]
    assert "infill is not supported" in ours.error["message"].lower()
    assert ours.error["type"] == engine.json()["error"]["type"]
    assert ours.error["code"] == "not_supported"


async def test_llama_cpp_completion_answers_what_the_engine_answers(api, lemonade,
                                                                    default_model_name):
    body = {"model": default_model_name, "prompt": "Once upon a time", "n_predict": 6,
            **GREEDY}
    ours = await api.post(f"{API}/completion", body)
    assert ours.code == 200, ours.body
    engine = (await direct(lemonade, default_model_name, "/completion", body)).json()
    assert ours.json["content"] == engine["content"] and ours.json["tokens_predicted"] == 6
    assert ours.json["model"] == default_model_name


# ---------------------------------------------------------------------------- tokenizer, template
async def test_tokenize_detokenize_and_apply_template(api, lemonade, default_model_name):
    tokens = await api.post(f"{API}/tokenize",
                            {"model": default_model_name, "content": "hello world"})
    assert tokens.code == 200, tokens.body
    engine = await direct(lemonade, default_model_name, "/tokenize", {"content": "hello world"})
    assert tokens.json == engine.json() and len(tokens.json["tokens"]) >= 2
    text = await api.post(f"{API}/detokenize",
                          {"model": default_model_name, "tokens": tokens.json["tokens"]})
    assert text.code == 200 and text.json["content"].strip() == "hello world"
    messages = [{"role": "user", "content": "hi"}]
    prompt = await api.post(f"{API}/apply-template",
                            {"model": default_model_name, "messages": messages})
    engine = await direct(lemonade, default_model_name, "/apply-template",
                          {"messages": messages})
    assert prompt.code == 200 and prompt.json == engine.json()
    assert "hi" in prompt.json["prompt"]


async def test_tokenizing_takes_no_slot(api, lemonade, default_model_name):
    """Tokenizing is answered beside running generations: with the one slot of a model taken
    and no room to wait, a chat is refused (429) while tokenizing still answers."""
    await api.load(default_model_name, parallel=1, max_queue=0)
    held = await lemonade.router.acquire(default_model_name)  # the only slot
    try:
        chat = await api.post(f"{API}/chat/completions", {
            "model": default_model_name, "messages": [{"role": "user", "content": "hi"}]})
        assert chat.code == 429, chat.body
        for route, body in (("tokenize", {"content": "x"}), ("detokenize", {"tokens": [28]}),
                            ("apply-template", {"messages": [{"role": "user",
                                                              "content": "hi"}]}),
                            ("messages/count_tokens", {"messages": [{"role": "user",
                                                                     "content": "hi"}]})):
            answer = await api.post(f"{API}/{route}", {"model": default_model_name, **body})
            assert answer.code == 200, (route, answer.body)
    finally:
        lemonade.router.release(held)


# ---------------------------------------------------------------------------- refused up front
BAD_BODIES = [
    ("responses", {"input": 5}, "input"),
    ("responses", {"input": "hi", "max_output_tokens": "many"}, "max_output_tokens"),
    ("messages", {"messages": []}, "messages"),
    ("messages", {"messages": "hi"}, "messages"),
    ("messages", {"messages": [{"role": "user", "content": "hi"}], "system": 5}, "system"),
    ("messages/count_tokens", {}, "messages"),
    ("infill", {"input_prefix": 5}, "input_prefix"),
    ("infill", {"input_extra": "x"}, "input_extra"),
    ("tokenize", {"content": ["a"]}, "content"),
    ("detokenize", {"tokens": ["a"]}, "tokens"),
    ("detokenize", {"tokens": [-1]}, "tokens"),
    ("apply-template", {"messages": "hi"}, "messages"),
    ("rerank", {"query": "q", "documents": ["d"]}, "model"),  # not a reranking model
    ("completion", {"prompt": []}, "prompt"),
]


@pytest.mark.parametrize("route,body,param", BAD_BODIES,
                         ids=[f"{r}-{p}" for r, _, p in BAD_BODIES])
def test_bodies_that_cannot_succeed_are_refused_before_a_load(
        shared_api, default_model_name, route, body, param):
    answer = shared_api.post(f"{API}/{route}", {"model": default_model_name, **body})
    assert answer.code == 400, answer.body
    assert answer.error["param"] == param
    assert shared_api.health()["all_models_loaded"] == []  # nothing loaded or evicted


@pytest.mark.parametrize("route", ["responses", "messages", "infill", "completion", "tokenize",
                                   "detokenize", "apply-template", "messages/count_tokens",
                                   "rerank"])
def test_unknown_model_is_404_on_every_route(shared_api, route):
    answer = shared_api.post(f"{API}/{route}", {"model": "no-such-model"})
    assert answer.code == 404 and answer.error["code"] == "model_not_found"


# ---------------------------------------------------------------------------- default length
async def _sse_answers(server_url: str, token: str, route: str, body: dict) -> list[dict]:
    """The JSON events of a streamed answer."""
    events = []
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", f"{server_url}{API}/{route}", json=body,
                               headers={"Authorization": f"token {token}"}) as resp:
            assert resp.status_code == 200
            async for line in resp.aiter_lines():
                if line.startswith("data: {"):
                    events.append(json.loads(line[len("data: "):]))
    return events


async def test_llama_cpp_completion_without_a_length_stops_at_default_n_predict(
        api, server_url, token, default_model_name):
    """llama.cpp's own ``completion`` route generates until the context is full when the body
    names no length; the router sends ``default_n_predict`` instead (``ignore_eos``: the
    model cannot stop early, so only the cap ends the reply)."""
    assert (await api.load(default_model_name, ctx_size=512))["status"] == "success"
    assert (await api.post("lemonade/internal/set", {"default_n_predict": 5})).code == 200
    body = {"model": default_model_name, "prompt": "Once upon a time", "ignore_eos": True,
            **GREEDY}
    capped = await api.post(f"{API}/completion", body)
    assert capped.code == 200, capped.body
    assert capped.json["tokens_predicted"] == capped.json["timings"]["predicted_n"] == 5
    # Streamed: the last event's timings count the same.
    events = await _sse_answers(server_url, token, "completion", {**body, "stream": True})
    assert events[-1]["timings"]["predicted_n"] == 5
    # A length the client gives is honoured, above the default as below it.
    for field, n in (("n_predict", 9), ("max_tokens", 7), ("n_predict", 3)):
        given = await api.post(f"{API}/completion", {**body, field: n})
        assert given.code == 200, given.body
        assert given.json["tokens_predicted"] == n, field


async def test_infill_without_a_length_stops_at_default_n_predict(
        api, lemonade, fim_model_file):
    await api.pull("user.fim", fim_model_file)
    assert (await api.load("user.fim", ctx_size=512))["status"] == "success"
    assert (await api.post("lemonade/internal/set", {"default_n_predict": 4})).code == 200
    body = {"model": "user.fim", "input_prefix": "def add(a, b):\n    return ",
            "input_suffix": "\n", "ignore_eos": True, **GREEDY}
    capped = await api.post(f"{API}/infill", body)
    assert capped.code == 200, capped.body
    assert capped.json["tokens_predicted"] == 4
    given = await api.post(f"{API}/infill", {**body, "n_predict": 6})
    assert given.json["tokens_predicted"] == 6


async def test_default_n_predict_leaves_the_openai_routes_alone(api, default_model_name):
    """The OpenAI-style routes are sent as the client wrote them: a chat without a length runs
    to the end of its (small) context, past the default cap."""
    assert (await api.load(default_model_name, ctx_size=128))["status"] == "success"
    assert (await api.post("lemonade/internal/set", {"default_n_predict": 2})).code == 200
    chat = await api.post(f"{API}/chat/completions", {
        "model": default_model_name, "messages": [{"role": "user", "content": "Count"}],
        "ignore_eos": True, **GREEDY})
    assert chat.code == 200, chat.body
    assert chat.json["usage"]["completion_tokens"] > 2
