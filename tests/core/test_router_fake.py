"""Router logic and fault injection against the fake llama-server (tests/fakes).

The fake starts in milliseconds and fails on demand; its knobs are environment variables that
the router's children inherit, so a test sets one just before the load it should affect.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import psutil
import pytest

from lemonade_jupyter.core import launcher, process
from lemonade_jupyter.core.catalog import Catalog
from lemonade_jupyter.errors import CoolingDownError, EngineMissingError, ModelLoadError

from tests.helpers.fakes import clear_fake_knobs
from tests.helpers.polling import wait_until

from .conftest import chat, events, post, ready_pid


@pytest.fixture
def fake_catalog(data_dir, tmp_path, monkeypatch):
    clear_fake_knobs(monkeypatch)
    weights = tmp_path / "tiny.gguf"
    weights.write_bytes(b"GGUF" + bytes(60))
    cat = Catalog(data_dir)
    for name in ("user.f1", "user.f2", "user.f3"):
        cat.add_user_model(name, str(weights))
    cat.add_user_model("user.emb", str(weights), "llamacpp", ["embeddings"])
    return cat


@pytest.fixture
def make_fake_router(make_router, fake_llama_server_path):
    def factory(catalog, **settings):
        return make_router(catalog, server=fake_llama_server_path, **settings)
    return factory


async def embeddings(router, n: int) -> None:
    for _ in range(n):
        _pid, body = await chat(router, "user.emb", "text", path="/v1/embeddings")
        assert body["data"][0]["embedding"]


async def test_router_slow_load_does_not_block_other_pools(
    fake_catalog, make_fake_router, monkeypatch, tmp_path
):
    gate = tmp_path / "ready"
    async with make_fake_router(fake_catalog, max_loaded_models=1) as router:
        await router.load("user.emb")
        # only backends started from now on stay unready until the test opens the gate
        monkeypatch.setenv("FAKE_LLAMA_READY_FILE", str(gate))
        load = asyncio.ensure_future(router.load("user.f1"))
        await wait_until(lambda: router.get_live("user.f1"), what="the llm load to start")
        # the load cannot finish before the gate opens, so these are served beside it
        await asyncio.wait_for(embeddings(router, 5), 20)
        assert not load.done()
        gate.touch()
        await asyncio.wait_for(load, 20)
        assert ready_pid(router, "user.f1") and ready_pid(router, "user.emb")


async def test_router_admission_waits_for_busy_model_without_blocking_others(
    fake_catalog, make_fake_router
):
    async with make_fake_router(fake_catalog, max_loaded_models=1) as router:
        await router.load("user.emb")
        async with router.lease("user.f1") as busy:
            load = asyncio.ensure_future(router.load("user.f2"))
            # f2 waits for f1's slot as long as this lease is held; other pools do not wait
            await asyncio.wait_for(embeddings(router, 3), 20)
            # the request in flight on f1 is served by the same process, not evicted
            resp = await post(router, busy, "/v1/chat/completions",
                              {"messages": [{"role": "user", "content": "hi"}]})
            assert resp.status_code == 200
            assert not load.done() and router.get_live("user.f1") is busy.model
        await asyncio.wait_for(load, 30)
        assert [(e.model, e.reason) for e in events(router, "evict")] == [("user.f1", "lru")]


async def test_router_stream_in_flight_is_never_evicted(
    fake_catalog, make_fake_router, monkeypatch
):
    monkeypatch.setenv("FAKE_LLAMA_TOKEN_DELAY", "0.2")
    async with make_fake_router(fake_catalog, max_loaded_models=1) as router:
        chunks: list[str] = []
        load_done_at_chunk: list[int] = []
        async with router.lease("user.f1") as lease:
            load = asyncio.ensure_future(router.load("user.f2"))
            load.add_done_callback(lambda _f: load_done_at_chunk.append(len(chunks)))
            async with router.http.stream(
                "POST", f"{lease.url}/v1/chat/completions", headers=lease.headers(),
                json={"stream": True, "messages": [{"role": "user", "content": "hi"}]},
            ) as resp:
                assert resp.status_code == 200
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        chunks.append(line[6:])
        await asyncio.wait_for(load, 30)
        assert chunks[-1] == "[DONE]"
        text = "".join(json.loads(c)["choices"][0]["delta"]["content"] for c in chunks[:-1])
        assert text == "Hello from the fake llama."
        assert load_done_at_chunk == [len(chunks)]  # admitted only after the stream ended


async def test_router_backend_ignoring_sigterm_is_killed_and_reaped(
    fake_catalog, make_fake_router, monkeypatch
):
    monkeypatch.setenv("FAKE_LLAMA_IGNORE_SIGTERM", "1")
    async with make_fake_router(fake_catalog, stop_grace_s=0.3) as router:
        m = await router.load("user.f1")
        backend = m.backend
        started = time.monotonic()
        await router.unload("user.f1")
        assert backend.exited.done() and backend.exited.result() == -9
        assert time.monotonic() - started < 5


async def test_router_start_failure_reports_engine_reason_then_cools_down(
    fake_catalog, make_fake_router, monkeypatch, tmp_path
):
    async with make_fake_router(fake_catalog, max_loaded_models=-1) as router:
        await router.load("user.f2", pinned=True)
        await router.load("user.f3")
        monkeypatch.setenv("FAKE_LLAMA_FAIL_START", "1")
        with pytest.raises(ModelLoadError, match="FAKE_LLAMA_FAIL_START"):
            await router.load("user.f1")
        assert [(e.model, e.reason) for e in events(router, "evict")] == [("user.f3", "retry")]
        assert ready_pid(router, "user.f2") and router.get_live("user.f2").pinned
        # Cooling down: an automatic load (a request) is refused with the engine's reason...
        with pytest.raises(CoolingDownError) as info:
            await router.acquire("user.f1")
        assert "FAKE_LLAMA_FAIL_START" in info.value.message
        # ...an explicit load never is: it is tried once, now, without the evicting retry.
        logs = tmp_path / "logs"
        assert len(list(logs.glob("user.f1.*.log"))) == 2  # the first try and its retry
        with pytest.raises(ModelLoadError, match="FAKE_LLAMA_FAIL_START"):
            await router.load("user.f1")
        assert len(list(logs.glob("user.f1.*.log"))) == 3
        monkeypatch.delenv("FAKE_LLAMA_FAIL_START")
        assert ready_pid(router, (await router.load("user.f1")).name)


async def test_router_ready_timeout_is_a_load_error(fake_catalog, make_fake_router, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_READY_AFTER", "60")
    async with make_fake_router(fake_catalog, ready_timeout_s=0.5) as router:
        with pytest.raises(ModelLoadError, match="not ready after"):
            await router.load("user.f1")
        assert router.get_live("user.f1") is None


async def test_router_backend_dying_mid_request_is_replayed_on_a_new_one(
    fake_catalog, make_fake_router, monkeypatch
):
    monkeypatch.setenv("FAKE_LLAMA_CRASH_AFTER_REQUESTS", "1")
    async with make_fake_router(fake_catalog) as router:
        first_pid, _ = await chat(router, "user.f1")
        # the second request kills the backend while it is being served (no ConnectError:
        # the connection is reset mid-request), and is replayed once on a new backend
        second_pid, body = await chat(router, "user.f1")
        assert second_pid != first_pid and body["pid"] == second_pid
        [crash] = events(router, "crash", "user.f1")
        assert crash.detail["exit_code"] == 1


async def test_fake_backend_requires_key(fake_catalog, make_fake_router):
    async with make_fake_router(fake_catalog) as router:
        async with router.lease("user.f1") as lease:
            assert (await post(router, lease, "/v1/completions", {"prompt": "x"},
                               headers={})).status_code == 401
            resp = await post(router, lease, "/v1/completions", {"prompt": "x"})
            assert resp.json()["choices"][0]["text"]
            props = await router.http.get(f"{lease.url}/props", headers=lease.headers())
            assert props.json()["is_sleeping"] is False
            with pytest.raises(httpx.HTTPStatusError):
                (await router.http.get(f"{lease.url}/props")).raise_for_status()


@pytest.mark.timeout(30)
async def test_router_request_during_backend_stop_waits_instead_of_spinning(
    fake_catalog, make_fake_router, monkeypatch
):
    """Bug story: between a stopped backend's exit and the end of ``Backend.stop()`` the
    loop runs other tasks. A request arriving then saw an exited backend whose stop the
    router had asked for; ``_on_backend_exit`` rightly ignored it, and ``_ensure`` looped
    again at once, never awaiting: the whole event loop spun forever. Here the window is
    widened by a slow ``terminate``."""
    original = process.terminate

    async def slow_terminate(proc, grace_s):
        code = await original(proc, grace_s)
        await asyncio.sleep(0.5)
        return code

    monkeypatch.setattr(process, "terminate", slow_terminate)
    async with make_fake_router(fake_catalog) as router:
        m = await router.load("user.f1")
        old = m.backend
        unload = asyncio.ensure_future(router.unload("user.f1"))
        await wait_until(lambda: old.exited.done(), what="the backend to exit")
        assert router.get_live("user.f1") is m and m.backend is old  # still stopping
        async with router.lease("user.f1") as lease:
            assert lease.backend is not old
        await unload


async def test_router_unload_of_stopped_backend_does_not_wait_for_the_grace(
    fake_catalog, make_fake_router
):
    """A SIGSTOPped process keeps SIGTERM pending; the stop continues it (SIGCONT) so that
    it ends by the SIGTERM instead of by the SIGKILL at the end of the grace period."""
    async with make_fake_router(fake_catalog, stop_grace_s=60) as router:
        m = await router.load("user.f1")
        backend = m.backend
        os.kill(backend.pid, signal.SIGSTOP)
        await asyncio.wait_for(router.unload("user.f1"), 30)
        assert backend.exited.result() == -signal.SIGTERM


async def test_router_stop_during_spawn_leaves_no_orphan(
    fake_catalog, make_fake_router, monkeypatch
):
    """Bug story: ``Router.stop()`` cancels loads in progress. A cancel that landed while
    ``create_subprocess_exec`` was returning lost the new process (it was never assigned to
    the backend), so ``stop()`` could not reap it and it outlived the router. The window is
    widened by a spawn that is slow to return."""
    original = process.spawn
    spawned: list[int] = []

    async def slow_spawn(argv, *, env, log):
        proc = await original(argv, env=env, log=log)
        spawned.append(proc.pid)
        await asyncio.sleep(1.0)
        return proc

    monkeypatch.setattr(process, "spawn", slow_spawn)
    async with make_fake_router(fake_catalog) as router:
        load = asyncio.ensure_future(router.load("user.f1"))
        await wait_until(lambda: spawned, what="the spawn")
    await asyncio.gather(load, return_exceptions=True)
    [pid] = spawned
    child = psutil.Process(pid) if psutil.pid_exists(pid) else None
    assert child is None or child.status() == psutil.STATUS_ZOMBIE, "backend outlived stop()"


@pytest.mark.timeout(60)
async def test_router_crash_while_downsizing_does_not_wedge_the_model(
    fake_catalog, make_fake_router
):
    """A backend that dies while the router prepares to downsize it (measuring its memory)
    is a crash like any other: the next request reloads the model."""
    async with make_fake_router(fake_catalog) as router:
        m = await router.load("user.f1")
        old = m.backend
        original = router.memory.sample

        async def sample_while_crashing(*args, **kwargs):
            os.kill(old.pid, signal.SIGKILL)
            await wait_until(lambda: m.backend is None, what="the crash to be handled")
            return await original(*args, **kwargs)

        router.memory.sample = sample_while_crashing
        await asyncio.gather(router.downsize(m), return_exceptions=True)
        router.memory.sample = original
        pid, _ = await asyncio.wait_for(chat(router, "user.f1"), 20)
        assert pid != old.pid
        assert events(router, "crash", "user.f1")


async def test_one_engine_lookup_per_start_and_a_new_path_looks_again(
    fake_catalog, make_fake_router, monkeypatch, tmp_path
):
    """A start asks for the engine from the checks, placement, fit and the start itself; the
    file checks of the lookup run once for all of them. Configuring another path looks again
    at once (no stale answer), and so does a start after the lookup went stale."""
    calls: list[str | None] = []
    real = launcher.find_engine

    def counted(configured=None, **kwargs):
        calls.append(configured)
        return real(configured, **kwargs)

    monkeypatch.setattr(launcher, "find_engine", counted)
    async with make_fake_router(fake_catalog, max_loaded_models=-1,
                                memory_budget_mib=100_000) as router:
        await router.load("user.f1")
        assert len(calls) == 1  # with a budget, placement and fit both ask too
        router.launcher.llama_server_path = str(tmp_path / "elsewhere" / "llama-server")
        with pytest.raises(EngineMissingError):
            await router.load("user.f2")
        assert calls[-1] == str(tmp_path / "elsewhere" / "llama-server")
        router.launcher.llama_server_path = real_path = calls[0]
        monkeypatch.setattr(launcher, "ENGINE_LOOKUP_TTL_S", 0.0)
        before = len(calls)
        await router.load("user.f2")
        assert calls[before:] and all(c == real_path for c in calls[before:])
