"""Timing through the proxy, with the stdlib fake llama-server for deterministic timing:
``: ping`` comments during a slow cold load, chunks relayed as they come, concurrent requests
sharing one load, a loaded model answering while another one loads, and a stream's
connection kept out of the proxy's pool."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from lemonade_jupyter.core.backend_logs import latest_log
from tests.helpers.fakes import STALE_REQUEST_LINE
from tests.helpers.http import API
from tests.helpers.polling import wait_until


@pytest.fixture
def lemonade_traits(fake_llama_server_path):
    return {"llama_server_path": fake_llama_server_path}


async def _stream_lines(url: str, token: str, body: dict) -> list[tuple[float, str]]:
    """POST a streaming request; return every non-empty line with its arrival time."""
    lines = []
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", url, json=body,
                               headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert resp.headers["x-accel-buffering"] == "no"
            async for line in resp.aiter_lines():
                if line:
                    lines.append((time.monotonic() - started, line))
    return lines


async def test_pings_during_a_slow_cold_load(api, server_url, token, default_model_name,
                                             monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_READY_AFTER", "1.0")  # read by the backend at its start
    body = {"model": default_model_name, "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}
    lines = await _stream_lines(f"{server_url}{API}/chat/completions", token, body)
    kinds = [line for _, line in lines]
    first_data = next(i for i, line in enumerate(kinds) if line.startswith("data: "))
    pings = [t for t, line in lines[:first_data] if line == ": ping"]
    assert len(pings) >= 3, kinds[:first_data]
    assert pings[0] < 0.8  # the first ping comes long before the backend is ready (1 s)
    assert lines[first_data][0] >= 1.0
    events = [line[6:] for line in kinds if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["model"] for c in chunks} == {default_model_name}  # not the fake's file path
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == (
        "Hello from the fake llama.")
    entry = (await api.loaded())[default_model_name]
    assert entry["status"] == "ready" and entry["in_flight"] == 0


async def test_chunks_are_relayed_as_the_backend_sends_them(api, server_url, token,
                                                           default_model_name, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_TOKEN_DELAY", "0.3")
    await api.load(default_model_name)
    body = {"model": default_model_name, "stream": True, "prompt": "Hi"}
    lines = await _stream_lines(f"{server_url}{API}/completions", token, body)
    data = [(t, line) for t, line in lines if line.startswith("data: {")]
    assert len(data) == 6
    # Six tokens 0.3 s apart arrive spread over ~1.5 s, not together at the end (the median
    # gap, not the smallest: a loaded machine may deliver two at once now and then).
    gaps = sorted(b[0] - a[0] for a, b in zip(data, data[1:]))
    assert gaps[len(gaps) // 2] > 0.15, gaps
    assert data[-1][0] - data[0][0] > 0.9
    assert all(json.loads(line[6:])["model"] == default_model_name for _, line in data)


async def test_concurrent_requests_for_an_unloaded_model_share_one_load(
    api, default_model_name, monkeypatch
):
    monkeypatch.setenv("FAKE_LLAMA_READY_AFTER", "0.5")
    body = {"model": default_model_name, "messages": [{"role": "user", "content": "Hi"}]}
    answers = await asyncio.gather(
        *(api.post(f"{API}/chat/completions", body) for _ in range(6))
    )
    assert [a.code for a in answers] == [200] * 6, [a.body[:200] for a in answers]
    pids = {a.json["pid"] for a in answers}  # the fake names the process that answered
    assert len(pids) == 1
    assert {a.json["model"] for a in answers} == {default_model_name}
    assert (await api.loaded())[default_model_name]["pid"] == pids.pop()


async def test_a_loaded_model_answers_while_another_one_loads(
    api, default_model_name, default_model_file, monkeypatch
):
    await api.post("lemonade/internal/set", {"max_loaded_models": 2})
    await api.pull("user.slow", default_model_file)
    await api.load(default_model_name)
    monkeypatch.setenv("FAKE_LLAMA_READY_AFTER", "3")  # only backends started from now on
    slow = asyncio.ensure_future(api.post(f"{API}/load", {"model_name": "user.slow"}))
    await wait_until(lambda: _loading(api, "user.slow"), what="the slow load to start")
    started = time.monotonic()
    answer = await api.post(f"{API}/chat/completions", {
        "model": default_model_name, "messages": [{"role": "user", "content": "Hi"}]})
    assert answer.code == 200
    assert time.monotonic() - started < 1.5  # not queued behind the 3 s load
    assert not slow.done()
    assert (await slow).code == 200


async def _loading(api, name: str) -> bool:
    entry = (await api.loaded()).get(name)
    return entry is not None and entry["status"] == "loading"


async def test_a_streams_connection_never_serves_the_next_request(
    api, lemonade, server_url, token, default_model_name, monkeypatch
):
    """llama-server answers a stream as keep-alive, then closes the connection. The proxy asks
    for ``Connection: close`` on streams, so that connection never goes back to its pool, where
    the next request would meet it dead. The fake in its stale keep-alive mode logs every
    request that arrives on such a connection."""
    monkeypatch.setenv("FAKE_LLAMA_STALE_KEEPALIVE", "1")  # read by the backend at its start
    await api.load(default_model_name)
    pid = (await api.loaded())[default_model_name]["pid"]
    stream = {"model": default_model_name, "stream": True,
              "messages": [{"role": "user", "content": "Hi"}]}
    for _ in range(3):
        lines = await _stream_lines(f"{server_url}{API}/chat/completions", token, stream)
        assert lines[-1][1] == "data: [DONE]"
        answer = await api.post(f"{API}/chat/completions", {**stream, "stream": False})
        assert answer.code == 200, answer.body
    backend = lemonade.router.get_live(default_model_name).backend
    assert backend.pid == pid
    await backend.flush_log()  # the output reaches its file through a pipe
    log_file, _generation = latest_log(lemonade.router.launcher.log_dir, default_model_name)
    log = log_file.read_text(errors="replace")
    assert log.count("POST /v1/chat/completions") == 6, log  # the fake served all six
    assert STALE_REQUEST_LINE not in log
