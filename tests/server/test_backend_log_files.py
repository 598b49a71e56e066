"""Backend log files through a real Jupyter server: private, in the data folder, cleaned after
a killed server, capped for a chatty backend; and ``/health`` stays fast while many big log
tails are read and redacted.

The first test runs the real llama-server (its start-up lines feed the memory-buffer report);
the cap is tested with the stdlib fake llama-server made chatty (``FAKE_LLAMA_LOG_LINES``)
rather than by waiting for a real backend to log a MiB.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lemonade_jupyter.core.backend_logs import latest_log, log_path
from lemonade_jupyter.core.capped_log import CappedLog
from lemonade_jupyter.core.catalog import DEFAULT_MODEL
from lemonade_jupyter.core.log_folder import FOLDER_NAME

from tests.helpers import REPO
from tests.helpers.http import API, chat_body
from tests.helpers.polling import wait_until


@pytest.fixture
def http(token, jp_asyncio_loop):
    client = httpx.AsyncClient(timeout=60, headers={"Authorization": f"token {token}"})
    yield client
    jp_asyncio_loop.run_until_complete(client.aclose())


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


async def test_backend_logs_are_private_files_under_the_data_folder(
        api, lemonade, lemonade_data_dir):
    await api.load(DEFAULT_MODEL)
    log_dir = lemonade.router.launcher.log_dir
    assert log_dir.parent == lemonade_data_dir / FOLDER_NAME
    assert mode(log_dir.parent) == mode(log_dir) == 0o700
    found = latest_log(log_dir, DEFAULT_MODEL)
    assert found is not None and mode(found[0]) == 0o600
    assert "listening on" in found[0].read_text()  # what the engine printed while loading


_EMBEDDED = """
import sys, time
from lemonade_jupyter.server.embedded import EmbeddedServer
server = EmbeddedServer(data_dir=sys.argv[1])
server.start()
print(server.router.launcher.log_dir, flush=True)
time.sleep(600)
"""


def test_a_killed_servers_logs_are_removed_at_the_next_start(request, lemonade_data_dir):
    """An embedded router (its own process) keeps its logs in its data folder; killed with
    SIGKILL it cannot clean up, so the next router over the same folder does."""
    proc = subprocess.Popen([sys.executable, "-c", _EMBEDDED, str(lemonade_data_dir)],
                            stdout=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stdout.readline().decode().strip()  # ends with the process at the latest
        assert line, "the embedded router did not start"
        dead = Path(line)
        assert dead.parent == lemonade_data_dir / FOLDER_NAME and mode(dead) == 0o700
        log_path(dead, "user.x", 1).write_text("a line of a killed server\n")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
    assert dead.is_dir()  # nobody removed it yet
    lemonade = request.getfixturevalue("lemonade")  # a server starts over the same data folder
    assert not dead.exists()
    assert lemonade.router.launcher.log_dir.parent == dead.parent
    assert lemonade.router.launcher.log_dir.is_dir()


@pytest.fixture
def chatty(monkeypatch, fake_llama_server_path):
    """Backends started from now on print 10,000 numbered lines per request."""
    monkeypatch.setenv("FAKE_LLAMA_LOG_LINES", "10000")
    return fake_llama_server_path


@pytest.mark.parametrize("lemonade_traits", [{"backend_log_max_mib": 1}], indirect=True)
async def test_a_chatty_backends_log_keeps_its_head_and_newest_lines_under_the_cap(
        chatty, api, lemonade, http, server_url):
    lemonade.router.launcher.llama_server_path = chatty
    requests = 8  # about 300 KiB of log each
    for _ in range(requests):
        answer = await api.post(f"{API}/chat/completions", chat_body(DEFAULT_MODEL))
        assert answer.code == 200, answer.body
    path, _generation = latest_log(lemonade.router.launcher.log_dir, DEFAULT_MODEL)
    newest = f"verbose: request {requests} line 9999\n"
    await wait_until(lambda: newest in path.read_text()[-4096:], what="the newest line")
    content = path.read_text()
    assert len(content.encode()) <= 1 << 20
    head = content[:content.index("[lemonade: ")]
    assert "CPU_Mapped model buffer size" in head and "server is listening" in head
    numbers = [(int(w[2]), int(w[4])) for w in (ln.split() for ln in content.splitlines())
               if w[:2] == ["verbose:", "request"] and len(w) == 5]
    tail = numbers[numbers.index(max(numbers)) - 1000:]
    assert tail[-1] == (requests, 9999)
    assert all(b > a for a, b in zip(tail, tail[1:]))  # the newest lines, in order
    backend = lemonade.router.get_live(DEFAULT_MODEL).backend
    assert backend.buffer_report == {"host": 98 << 20}
    # The log stream reads the capped file like any other.
    resp = await http.get(f"{server_url}{API}/logs/{DEFAULT_MODEL}?tail=4&follow=false")
    lines = [ln[len("data: "):] for ln in resp.text.splitlines() if ln.startswith("data: verb")]
    assert lines == [f"verbose: request {requests} line {n}" for n in (9997, 9998, 9999)]


_LOAD = """
import asyncio, json, sys
import httpx

async def main(url, token, clients, rounds):
    headers = {"Authorization": f"token {token}"}
    async with httpx.AsyncClient(timeout=300, headers=headers,
                                 limits=httpx.Limits(max_connections=clients)) as http:
        async def one():
            r = await http.get(url)
            return r.status_code, r.text.count("event: log"), "hunter2secret" in r.text
        results = []
        print("go", flush=True)
        for _ in range(rounds):
            results += await asyncio.gather(*(one() for _ in range(clients)))
    print(json.dumps(results))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
"""


async def _health_latency(api) -> float:
    started = time.perf_counter()
    answer = await api.get(f"{API}/health")
    assert answer.code == 200
    return time.perf_counter() - started


async def test_health_stays_fast_while_many_big_log_tails_are_read(
        api, lemonade, server_url, token):
    """50 clients read a 10,000-line tail of a log full of credentials at once, twice, while
    ``/health`` is asked again and again; compared with ``/health`` on the idle server just
    before, it must stay about as fast: its median within a small multiple, and the time it
    took more than 50 times its idle median at most a quarter of the time the tails took.
    (Redacting on the event loop, ``/health`` waited seconds at a time: that share was over
    half.)"""
    line = ("0.00.001 I srv  params: api_key: hunter2secret, Authorization: Bearer "
            "hunter2secret, {n:06d}\n")
    log_file = log_path(lemonade.router.launcher.log_dir, DEFAULT_MODEL, 1)
    log_file.write_text("".join(line.format(n=n) for n in range(10_000)))
    idle = []
    for _ in range(30):
        idle.append(await _health_latency(api))
        await asyncio.sleep(0.01)
    url = f"{server_url}{API}/logs/{DEFAULT_MODEL}?tail=10000&follow=false"
    load = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LOAD, url, token, "50", "2", stdout=subprocess.PIPE)
    busy = []
    try:
        assert await asyncio.wait_for(load.stdout.readline(), 120) == b"go\n"
        started = time.perf_counter()
        reader = asyncio.ensure_future(load.stdout.read())
        while not reader.done() and len(busy) < 10_000:  # sample while the tails are read
            busy.append(await _health_latency(api))
            await asyncio.sleep(0.01)
        out = await asyncio.wait_for(reader, 300)
        took = time.perf_counter() - started
    finally:
        if load.returncode is None:
            load.kill()
        await asyncio.wait_for(load.wait(), 60)
    results = json.loads(out)
    assert results == [[200, 10_000, False]] * 100  # every tail whole, every secret redacted
    assert len(busy) >= 5, "too few samples while the tails were read"
    usual = statistics.median(idle)
    stalled = sum(t for t in busy if t > 50 * usual)
    summary = (f"/health median {usual * 1000:.1f} ms idle, {statistics.median(busy) * 1000:.1f}"
               f" ms while the tails were read ({len(busy)} samples, max "
               f"{max(busy) * 1000:.0f} ms); slow for {stalled:.2f} s of {took:.2f} s")
    print(summary)
    assert statistics.median(busy) <= 10 * usual, summary
    assert stalled <= took / 4, summary


async def test_the_buffer_report_is_read_after_the_log_caught_up(
        chatty, api, lemonade, monkeypatch):
    """The engine prints its buffer sizes before it answers ``/health``, but they reach the
    file through a pipe and a thread: the report is parsed only once that copy caught up.
    Fault injection: every write to the file takes a while, so the copy lags."""
    slow = CappedLog.write

    def lagging(self: CappedLog, data: bytes) -> None:
        time.sleep(0.3)
        slow(self, data)

    monkeypatch.setattr(CappedLog, "write", lagging)
    lemonade.router.launcher.llama_server_path = chatty
    await api.load(DEFAULT_MODEL)
    backend = lemonade.router.get_live(DEFAULT_MODEL).backend
    assert backend.buffer_report == {"host": 98 << 20}
