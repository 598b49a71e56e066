"""The watchdog must not kill a healthy backend that just finished streams."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.helpers.fakes import STALE_REQUEST_LINE, clear_fake_knobs

ROUNDS = 4


@pytest.mark.parametrize("backend", ["fake", "real"])
async def test_watchdog_probes_after_streams_do_not_kill_a_healthy_backend(
    backend, catalog, make_router, fake_llama_server_path, tmp_path: Path, monkeypatch
):
    """The benchmark's 16-stream batches saw the watchdog kill a healthy backend: probes sent
    right after streams failed at once on pooled connections the backend had closed.
    llama-server answers a stream as keep-alive and then closes the connection, so a probe that
    reuses it before the close arrives gets no answer. ``Backend.probe`` retries a transport
    error once, on a fresh connection.

    ``fake``: the fake backend's stale keep-alive mode makes that race certain. The first probe
    after each batch of streams meets a dead connection (the fake logs each one), so without
    the retry the watchdog, which here kills after one failed probe, kills the backend.
    ``real``: the same run on llama-server, where the race depends on timing."""
    clear_fake_knobs(monkeypatch)
    if backend == "fake":
        monkeypatch.setenv("FAKE_LLAMA_STALE_KEEPALIVE", "1")  # read by the backend at start
    async with make_router(catalog, server=fake_llama_server_path if backend == "fake" else None,
                           watchdog_interval_s=3600.0, watchdog_probe_failures=1) as router:
        model = await router.load("user.m1")
        backend_proc = model.backend
        assert backend_proc is not None
        body = {"messages": [{"role": "user", "content": "Count."}], "max_tokens": 8,
                "stream": True}

        async def one_stream() -> None:
            async with router.lease("user.m1") as lease:
                async with router.http.stream(
                    "POST", lease.url + "/v1/chat/completions", json=body,
                    headers=lease.headers(),
                ) as resp:
                    assert resp.status_code == 200
                    async for _chunk in resp.aiter_raw():
                        pass

        for _ in range(ROUNDS):
            await asyncio.gather(*(one_stream() for _ in range(4)))
            # Probe right after the streams, when the pool holds their closed connections.
            for _ in range(3):
                await router.check_backends()
        assert router.get_live("user.m1") is model
        assert model.backend is backend_proc and not backend_proc.exited.done()
        assert not [e for e in router.events if e.kind == "crash"]
    if backend == "fake":
        # The race happened in every round: the test did probe over dead connections.
        log = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
        assert log.count(STALE_REQUEST_LINE) >= ROUNDS, log[-2000:]
