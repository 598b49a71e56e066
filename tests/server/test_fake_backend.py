"""SSE timing through the proxy, with the stdlib fake llama-server for deterministic timing:
``: ping`` comments during a slow cold load, chunks relayed as they come."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from .conftest import API


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
