"""``GET lemonade/api/v1/logs/{model}`` through a real Jupyter server and real llama-server.

A stream opened before the load shows the load's own lines, follows a reload into its new log
file, and never shows a backend's API key: llama-server at ``-lv 4`` prints the last four
characters of its key (``api_keys: ****abcd``), which must come out redacted. ``tail`` with
``follow=false`` is the dashboard's one-shot read.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from lemonade_jupyter.core.catalog import DEFAULT_MODEL

from tests.helpers.http import API


class LogStream:
    """Reads one log stream in a task; ``events`` grows as (event, data) pairs arrive."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.events: list[tuple[str, str]] = []
        self.status: int | None = None
        self._task = asyncio.ensure_future(self._read(http, url))

    async def _read(self, http: httpx.AsyncClient, url: str) -> None:
        async with http.stream("GET", url) as resp:
            self.status = resp.status_code
            kind = "message"
            async for line in resp.aiter_lines():
                if line.startswith("event: "):
                    kind = line[len("event: "):]
                elif line.startswith("data: "):
                    self.events.append((kind, line[len("data: "):]))
                    kind = "message"

    def text(self) -> str:
        return "\n".join(data for _kind, data in self.events)

    async def wait_for(self, predicate, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert not self._task.done(), f"stream ended before {what}: {self._task}"
            assert time.monotonic() < deadline, f"no {what} in {self.text()[-2000:]}"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture
def http(token, jp_asyncio_loop):
    client = httpx.AsyncClient(timeout=60, headers={"Authorization": f"token {token}"})
    yield client
    jp_asyncio_loop.run_until_complete(client.aclose())


async def test_log_stream_shows_a_load_follows_a_reload_and_never_a_secret(
    api, lemonade, http, server_url, token
):
    stream = LogStream(http, f"{server_url}{API}/logs/{DEFAULT_MODEL}?tail=0")
    try:
        await stream.wait_for(lambda: stream.status is not None, "headers")
        assert stream.status == 200
        await api.load(DEFAULT_MODEL, llamacpp_args="-lv 4")
        first = lemonade.router.get_live(DEFAULT_MODEL).backend
        await stream.wait_for(lambda: "model loaded" in stream.text(), "load lines")
        assert ("start", f'{{"generation": {first.generation}}}') in stream.events
        chat = await api.post(f"{API}/chat/completions", {
            "model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2})
        assert chat.code == 200, chat.body

        # A reload starts a new file: the stream goes on with it.
        await api.load(DEFAULT_MODEL, llamacpp_args="-lv 4", ctx_size=1024)
        second = lemonade.router.get_live(DEFAULT_MODEL).backend
        assert second.generation > first.generation
        new_start = ("start", f'{{"generation": {second.generation}}}')
        await stream.wait_for(lambda: new_start in stream.events
                              and stream.text().count("model loaded") >= 2, "reload lines")
        text = stream.text()
    finally:
        await stream.close()
    assert "n_ctx_slot = 1024" in text or "n_ctx = 1024" in text
    # llama-server printed its key's tail; what reached us is redacted.
    assert "api_keys: [redacted]" in text
    for backend in (first, second):
        assert backend.api_key not in text
        assert f"****{backend.api_key[-4:]}" not in text
    assert token not in text


async def test_log_tail_without_follow_ends_after_the_last_lines(api, http, server_url):
    await api.load(DEFAULT_MODEL)
    resp = await http.get(f"{server_url}{API}/logs/{DEFAULT_MODEL}?tail=5&follow=false")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    lines = [ln for ln in resp.text.splitlines() if ln.startswith("data: ")]
    assert len(lines) == 6  # the "start" event and five log lines
    assert "listening on" in resp.text or "model loaded" in resp.text


async def test_log_stream_refuses_unknown_models_and_bad_parameters(api):
    for path, params, code in [(f"{API}/logs/no-such-model", {}, 404),
                               (f"{API}/logs/{DEFAULT_MODEL}", {"tail": "-1"}, 400),
                               (f"{API}/logs/{DEFAULT_MODEL}", {"tail": "abc"}, 400),
                               (f"{API}/logs/{DEFAULT_MODEL}", {"follow": "maybe"}, 400)]:
        answer = await api.get(path, params=params)
        assert answer.code == code, (path, params, answer.body)
        assert answer.error
