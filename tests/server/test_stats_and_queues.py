"""Request statistics, bounded queues and the loading state, through a real Jupyter server and
real llama-server backends: ``GET lemonade/api/v1/stats`` after a chat matches the engine's own
``timings``; a one-slot model with ``max_queue: 2`` refuses the fourth of four concurrent
requests with 429 while the others complete; a cold streaming chat tells its load as
reasoning content when ``stream_loading_state`` is on. The ``max_queue`` setting route uses
``shared_api`` (ONE in-process app for the module): it checks the settings table, no backend."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import psutil
import pytest

from lemonade_jupyter.server.node_access import server_user

from tests.helpers.http import API, chat_body
from tests.helpers.polling import wait_until


def assert_stats_match(stats: dict, timings: dict, model: str, route: str) -> None:
    assert stats["model"] == model and stats["route"] == route
    assert stats["time_to_first_token"] == pytest.approx(timings["prompt_ms"] / 1000)
    assert stats["tokens_per_second"] == pytest.approx(timings["predicted_per_second"])
    assert stats["input_tokens"] == timings["prompt_n"]
    assert stats["cached_tokens"] == timings["cache_n"]
    assert stats["prompt_tokens"] == timings["prompt_n"] + timings["cache_n"]
    assert stats["output_tokens"] == timings["predicted_n"]


def histogram_count(metrics: str, name: str, model: str) -> float:
    found = re.search(rf'^{name}_count{{model="{re.escape(model)}"}} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


# ---------------------------------------------------------------------------- statistics
async def test_stats_after_a_chat_match_the_engine_timings(api, default_model_name,
                                                           server_url, token):
    before = await api.get(f"{API}/stats")
    assert before.code == 200
    last = dict(before.json)
    assert last.pop("users") == {} and last.pop("totals")["requests"] == 0
    assert set(last.values()) == {None}  # nothing yet

    answer = await api.post(f"{API}/chat/completions",
                            chat_body(default_model_name, max_tokens=6))
    assert answer.code == 200, answer.body
    stats = (await api.get(f"{API}/stats")).json
    assert_stats_match(stats, answer.json["timings"], default_model_name, "/v1/chat/completions")
    assert stats["output_tokens"] == answer.json["usage"]["completion_tokens"]
    assert stats["prompt_tokens"] == answer.json["usage"]["prompt_tokens"]

    # Streamed: the timings are in the last event before [DONE].
    events = []
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", f"{server_url}{API}/chat/completions",
                               json=chat_body(default_model_name, stream=True, max_tokens=7,
                                              prompt="Count to ten"),
                               headers={"Authorization": f"token {token}"}) as resp:
            async for line in resp.aiter_lines():
                if line.startswith("data: {"):
                    events.append(json.loads(line[6:]))
    timings = events[-1]["timings"]
    stats = (await api.get(f"{API}/stats")).json
    assert_stats_match(stats, timings, default_model_name, "/v1/chat/completions")
    assert stats["output_tokens"] == 7

    metrics = (await api.get("lemonade/metrics")).body.decode()
    for name in ("lemonade_time_to_first_token_seconds", "lemonade_tokens_per_second"):
        assert histogram_count(metrics, name, default_model_name) == 2, name

    # A single-user server's requests are its user's: the usage names them.
    user = server_user()
    assert stats["user"] == user
    usage = stats["users"][user]
    assert usage["requests"] == 2 and usage["completion_tokens"] == 6 + 7
    assert stats["totals"]["requests"] == 2
    assert f'lemonade_user_requests_total{{user="{user}"}} 2.0' in metrics


async def test_a_request_without_timings_keeps_the_last_stats(api, default_model_name):
    answer = await api.post(f"{API}/completions", {"model": default_model_name,
                                                   "prompt": "Once upon", "max_tokens": 3})
    assert answer.code == 200
    first = (await api.get(f"{API}/stats")).json
    assert_stats_match(first, answer.json["timings"], default_model_name, "/v1/completions")
    # Tokenizing carries no timings, and an engine error neither: the stats stay.
    assert (await api.post(f"{API}/tokenize", {"model": default_model_name,
                                               "content": "x"})).code == 200
    assert (await api.post(f"{API}/infill", {"model": default_model_name,
                                             "input_prefix": "a"})).code == 400  # not supported
    assert (await api.get(f"{API}/stats")).json == first


# ---------------------------------------------------------------------------- bounded queues
async def test_fourth_of_four_requests_to_a_one_slot_model_gets_429(api, lemonade,
                                                                    default_model_name):
    loaded = await api.load(default_model_name, parallel=1, max_queue=2)
    assert loaded["status"] == "success"
    cmdline = psutil.Process(lemonade.router.get_live(default_model_name).backend.pid).cmdline()
    assert cmdline[cmdline.index("--parallel") + 1] == "1"
    long = {**chat_body(default_model_name, max_tokens=120, prompt="Tell a long story."),
            "ignore_eos": True}
    first_three = [asyncio.ensure_future(api.post(f"{API}/chat/completions", long))
                   for _ in range(3)]

    async def two_waiting() -> bool:
        metrics = (await api.get("lemonade/metrics")).body.decode()
        return f'lemonade_queue_depth{{model="{default_model_name}"}} 2.0' in metrics

    await wait_until(two_waiting, timeout=60, what="two requests waiting for the slot")
    entry = (await api.loaded())[default_model_name]
    assert (entry["in_flight"], entry["queued"], entry["is_busy"]) == (1, 2, True)
    fourth = await api.post(f"{API}/chat/completions", long)
    assert fourth.code == 429, fourth.body
    assert fourth.headers["Retry-After"] == "1"
    assert fourth.error["code"] == "queue_full" and fourth.error["type"] == "rate_limit_error"
    answers = await asyncio.gather(*first_three)
    assert [a.code for a in answers] == [200, 200, 200]
    assert all(a.json["usage"]["completion_tokens"] == 120 for a in answers)
    metrics = (await api.get("lemonade/metrics")).body.decode()
    assert f'lemonade_queue_depth{{model="{default_model_name}"}} 0.0' in metrics


async def test_parallel_sets_the_engine_slots_and_a_change_reloads(api, lemonade,
                                                                   default_model_name):
    await api.load(default_model_name, parallel=2, pinned=True)
    first = lemonade.router.get_live(default_model_name).backend
    assert first.total_slots == 2  # what llama-server itself says in /props
    await api.load(default_model_name, max_queue=0)  # not a process option: no reload
    assert lemonade.router.get_live(default_model_name).backend is first
    await api.load(default_model_name, parallel=1)
    live = lemonade.router.get_live(default_model_name)
    assert live.backend is not first and live.backend.total_slots == 1
    assert live.pinned is True
    bad = await api.post(f"{API}/load", {"model_name": default_model_name, "parallel": 0})
    assert bad.code == 400 and bad.error["param"] == "parallel"
    bad = await api.post(f"{API}/load", {"model_name": default_model_name,
                                         "llamacpp_args": "-np 4"})
    assert bad.code == 400 and bad.error["param"] == "llamacpp_args"


def test_max_queue_setting_at_run_time(shared_api):
    answer = shared_api.post("lemonade/internal/set", {"max_queue": 3})
    assert answer.code == 200 and answer.json["max_queue"] == 3
    answer = shared_api.post("lemonade/internal/set", {"max_queue": -2})
    assert answer.code == 400 and answer.error["param"] == "max_queue"
    assert shared_api.get("lemonade/internal/config").json["max_queue"] == 3


# ---------------------------------------------------------------------------- loading state
def reasoning_of(chunks) -> str:
    return "".join(getattr(c.choices[0].delta, "reasoning_content", None) or ""
                   for c in chunks if c.choices)


def content_of(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def chat_stream(client, model: str) -> list:
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=6,
        stream=True)
    return [chunk async for chunk in stream]


@pytest.mark.parametrize("lemonade_traits", [{"stream_loading_state": True}], indirect=True)
async def test_cold_stream_tells_its_load_as_reasoning_content(client, default_model_name):
    chunks = await chat_stream(client, default_model_name)
    told = reasoning_of(chunks)
    assert told.startswith(f"Loading model {default_model_name}")
    assert f"Model {default_model_name} is loaded in" in told
    # The load's story comes first, then the answer, which the openai client parses whole.
    first_content = next(i for i, c in enumerate(chunks)
                         if c.choices and c.choices[0].delta.content)
    assert all(not getattr(c.choices[0].delta, "reasoning_content", None)
               for c in chunks[first_content:] if c.choices)
    assert content_of(chunks).strip() and chunks[-1].choices[0].finish_reason == "length"
    assert {c.model for c in chunks} == {default_model_name}
    # Warm: nothing to tell.
    assert reasoning_of(await chat_stream(client, default_model_name)) == ""


@pytest.mark.parametrize("lemonade_traits", [{"stream_loading_state": True}], indirect=True)
async def test_loading_state_tells_the_eviction_that_makes_room(api, client, default_model_name,
                                                                default_model_file):
    await api.pull("user.other", default_model_file)
    await api.load(default_model_name)  # the one llm slot
    told = reasoning_of(await chat_stream(client, "user.other"))
    assert f"Unloading {default_model_name} to make room (lru)." in told
    assert told.index("Unloading") < told.index("Model user.other is loaded")
    assert set((await api.loaded())) == {"user.other"}


async def test_loading_state_is_off_by_default(client, default_model_name):
    chunks = await chat_stream(client, default_model_name)
    assert reasoning_of(chunks) == "" and content_of(chunks).strip()
