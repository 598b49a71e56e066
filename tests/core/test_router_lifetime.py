"""What survives a router restart on real backends (the options reach the new processes), and
what must not survive the router's process (its backends).

The restore rules themselves (pins, persisted settings, pinned models first, no restore when
it is off) are in ``test_router_restart_rules.py``, on in-memory backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from lemonade_jupyter.core.catalog import Catalog
from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.errors import ModelLoadError
from tests.helpers.processes import gone

from .conftest import wait_event


async def test_router_restart_keeps_every_models_load_options(
    catalog, make_router, data_dir
):
    """Live, pinned and crashed models all come back with the options they were loaded with,
    not with the defaults: the options are persisted next to the pins."""
    async with make_router(catalog, max_loaded_models=-1) as router:
        await router.load("user.m1", pinned=True, options=LoadOptions(ctx_size=1024),
                          given=frozenset({"ctx_size"}))
        await router.load("user.m2", options=LoadOptions(ctx_size=768),
                          given=frozenset({"ctx_size"}))
        m3 = await router.load("user.m3", options=LoadOptions(ctx_size=640),
                               given=frozenset({"ctx_size"}))
        crashed = m3.backend.pid
        os.kill(crashed, signal.SIGKILL)  # unpinned: not reloaded until its next request
        await wait_event(router, "crash", "user.m3")
        assert router.get_live("user.m3") is None
    state = json.loads((data_dir / "router_state.json").read_text())
    assert state["models"]["user.m3"] == {"pinned": False, "options": {"ctx_size": 640}}

    async with make_router(Catalog(data_dir), max_loaded_models=-1) as router:
        await wait_event(router, "reload", "user.m1")
        await wait_event(router, "reload", "user.m2")
        for name, ctx in (("user.m1", 1024), ("user.m2", 768)):
            m = router.get_live(name)
            assert m.options.ctx_size == ctx
            argv = psutil.Process(m.backend.pid).cmdline()
            assert argv[argv.index("--ctx-size") + 1] == str(ctx), argv
        assert router.get_live("user.m1").pinned and not router.get_live("user.m2").pinned
        assert router.get_live("user.m3") is None  # it was not loaded when the router stopped
        m3 = await router.load("user.m3")  # options omitted: the remembered ones apply
        argv = psutil.Process(m3.backend.pid).cmdline()
        assert argv[argv.index("--ctx-size") + 1] == "640", argv
        await router.unload("user.m3")  # an explicit unload forgets them
        m3 = await router.load("user.m3")
        assert m3.options.ctx_size is None
        argv = psutil.Process(m3.backend.pid).cmdline()
        assert argv[argv.index("--ctx-size") + 1] != "640", argv


async def test_router_failed_load_keeps_the_previous_options(catalog, make_router, tmp_path):
    """Options are remembered once a start with them succeeded: a bad one does not stick."""
    async with make_router(catalog) as router:
        await router.load("user.m1", options=LoadOptions(ctx_size=1024),
                          given=frozenset({"ctx_size"}))
        with pytest.raises(ModelLoadError):
            # Allowed flags that llama.cpp cannot start with: a quantized V cache needs flash
            # attention, which they turn off.
            await router.load("user.m1",
                              options=LoadOptions(llamacpp_args="-ctv q4_0 -fa off"),
                              given=frozenset({"llamacpp_args"}))
        m = await router.load("user.m1")
        assert m.options.ctx_size == 1024 and m.options.llamacpp_args == ""


HOST_SCRIPT = textwrap.dedent("""
    import asyncio, sys, time
    from pathlib import Path
    from lemonade_jupyter.core.catalog import Catalog
    from lemonade_jupyter.core.router import Router

    async def main():
        data = Path(sys.argv[1])
        router = Router(Catalog(data), llama_server_path=sys.argv[2], data_dir=data,
                        log_dir=data / "logs")
        await router.start()
        m = await router.load("user.m1", pinned=True)
        print(m.backend.pid, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
""")


def test_router_host_sigkill_leaves_no_backend(catalog, data_dir, llama_server_path, tmp_path):
    """SIGKILL of the process hosting the router: no Python code runs, yet its backends die."""
    script = tmp_path / "host.py"
    script.write_text(HOST_SCRIPT)
    host = subprocess.Popen(
        [sys.executable, str(script), str(data_dir), llama_server_path],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = host.stdout.readline()
        assert line.strip().isdigit(), f"host printed {line!r}"
        backend_pid = int(line)
        backend = psutil.Process(backend_pid)
        assert "llama-server" in " ".join(backend.cmdline())
        assert backend.ppid() == host.pid
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait(10)
        host.stdout.close()

    deadline = time.monotonic() + 5.0
    while not gone(backend_pid):
        if time.monotonic() > deadline:
            os.kill(backend_pid, signal.SIGKILL)  # do not leak it into other tests
            raise AssertionError(f"llama-server {backend_pid} outlived its router by 5 s")
        time.sleep(0.05)
