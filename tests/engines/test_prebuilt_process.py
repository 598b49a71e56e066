"""The prebuilt engine as a process, and a router running on it: the guarantees the router
relies on (readiness, the per-backend API key, streaming, SIGTERM and SIGKILL, no orphan) hold
for it as they do for llama-server, and ``/health`` says which engine runs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from lemonade_jupyter.core.catalog import DEFAULT_MODEL, Catalog, ModelSpec
from lemonade_jupyter.core.engines import lookup
from lemonade_jupyter.core.engines.llamacpp import LlamaCppEngine
from lemonade_jupyter.core.engines.prebuilt_server import PROG
from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.core.ports import free_port
from lemonade_jupyter.core.router import Router
from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.server.views import health_view
from tests.helpers.jupyter import repo_first_on_pythonpath
from tests.helpers.processes import gone, is_backend

pytest.importorskip("xllamacpp")

#: Generous: a load takes about a second, but this machine is shared and has 2 cores.
DEADLINE_S = 60.0


@pytest.fixture
def prebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The prebuilt engine's launcher, running this work tree's wrapper."""
    monkeypatch.setenv("LEMONADE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", repo_first_on_pythonpath(dict(os.environ))["PYTHONPATH"])
    monkeypatch.delenv("LEMONADE_PREBUILT", raising=False)
    path = lookup.prebuilt_launcher()
    assert path and PROG in path
    return path


def start(binary: str, model: str, tmp_path: Path, key: str = "k-1") -> tuple[
        subprocess.Popen[bytes], str]:
    port = free_port()
    argv = LlamaCppEngine(binary, threads=1).argv(
        ModelSpec(name="m", checkpoint=model), LoadOptions(), port=port)
    log = open(tmp_path / f"engine-{port}.log", "wb")  # noqa: SIM115 - closed by the caller
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                            env=LlamaCppEngine.env(key), start_new_session=True)
    log.close()
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the engine exited with {proc.returncode}"
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    pytest.fail("the prebuilt engine did not get ready")


def test_serves_like_llama_server_and_exits_0_on_sigterm(prebuilt, default_model_file,
                                                         tmp_path):
    proc, url = start(prebuilt, default_model_file, tmp_path)
    try:
        wait_healthy(proc, url)
        assert is_backend(psutil.Process(proc.pid))  # found by the leftover checks
        assert httpx.get(f"{url}/props", timeout=10).status_code == 401
        assert httpx.get(f"{url}/props", headers={"Authorization": "Bearer wrong"},
                         timeout=10).status_code == 401
        props = httpx.get(f"{url}/props", headers={"Authorization": "Bearer k-1"}, timeout=10)
        assert props.status_code == 200 and props.json()["total_slots"] >= 1
        body = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8,
                "stream": True}
        chunks = []
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60,
                          headers={"Authorization": "Bearer k-1"}) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line[6:]))
        assert len(chunks) > 1 and "".join(
            c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE_S) == 0  # like llama-server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_signal_while_loading_ends_it(prebuilt, default_model_file, tmp_path, sig):
    proc, _url = start(prebuilt, default_model_file, tmp_path)
    try:
        time.sleep(0.2)  # somewhere in interpreter start-up or the model load
        os.killpg(proc.pid, sig)
        assert proc.wait(DEADLINE_S) in (-sig, 0)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_a_bad_model_file_is_a_failed_start_with_the_reason(prebuilt, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf" * 10)
    proc, _url = start(prebuilt, str(bad), tmp_path)
    assert proc.wait(DEADLINE_S) == 1
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("engine-*.log"))
    assert "error: the server did not start" in logs


def test_a_router_on_the_prebuilt_engine(prebuilt, tmp_path, monkeypatch):
    """Load, stream through a lease, report the engine, stop: no backend left behind."""

    async def scenario() -> tuple[dict, dict, int]:
        router = Router(Catalog(tmp_path / "data"), RouterSettings(), llama_server_path=None,
                        data_dir=tmp_path / "data", log_dir=tmp_path / "logs")
        router.replace_settings(stop_grace_s=5.0)
        await router.start()
        try:
            await router.load(DEFAULT_MODEL)
            async with router.lease(DEFAULT_MODEL) as lease:
                resp = await router.http.post(
                    f"{lease.url}/v1/chat/completions", headers=lease.headers(), timeout=60,
                    json={"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4})
                assert resp.status_code == 200, resp.text
                pid = lease.backend.pid
            # The key of this backend is not another's: a wrong one is refused.
            other = await router.http.get(f"{lease.url}/props", timeout=10,
                                          headers={"Authorization": "Bearer nope"})
            assert other.status_code == 401
            health = health_view(router, None)
        finally:
            await router.stop()
        return health["engine"], health["all_models_loaded"][0]["engine"], pid

    # No native build anywhere: only the prebuilt engine can be found.
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("LEMONADE_LLAMA_SERVER", raising=False)
    top, per_model, pid = asyncio.run(scenario())
    assert top == per_model
    # A CPU build, answered without running its wrapper (which takes no --list-devices).
    assert {k: top[k] for k in ("flavour", "path", "offload", "source", "backends",
                                "devices", "probe_error")} == {
        "flavour": "prebuilt", "path": prebuilt, "offload": False, "source": "prebuilt",
        "backends": ["CPU"], "devices": [], "probe_error": None}
    assert gone(pid)

