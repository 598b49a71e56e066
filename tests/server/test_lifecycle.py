"""The extension's life cycle: ``stop_extension`` leaves no backend, a real ``jupyter server``
process serves the official ``openai`` client end to end, and a plain ``pip install`` enables
the extension by itself."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import REPO
from tests.helpers.http import API, auth_headers
from tests.helpers.jupyter import JupyterProcess
from tests.helpers.processes import unreaped

#: A streamed answer long enough to be still running when the test acts.
LONG_STREAM = {"stream": True, "max_tokens": 1500, "ignore_eos": True,
               "messages": [{"role": "user", "content": "Talk."}]}


async def _stream(url: str, token: str, model: str, first_data: asyncio.Event) -> list[str]:
    """Stream a long chat answer through the extension; set ``first_data`` at its first data
    line; return every line once the stream ends."""
    lines = []
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", f"{url}{API}/chat/completions",
                               json={"model": model, **LONG_STREAM},
                               headers=auth_headers(token)) as resp:
            async for line in resp.aiter_lines():
                lines.append(line)
                if line.startswith("data: {"):
                    first_data.set()
    return lines


async def test_stop_extension_stops_every_backend(api, lemonade, server_url, token,
                                                  default_model_name, default_model_file):
    await api.pull("user.embed", default_model_file, labels=["embeddings"])
    await api.load(default_model_name, pinned=True)
    await api.load("user.embed")
    pids = [m["pid"] for m in (await api.loaded()).values()]
    assert len(pids) == 2 and all(unreaped(p) for p in pids)

    # A stream in flight when the server stops.
    first_data = asyncio.Event()
    streaming = asyncio.ensure_future(_stream(server_url, token, default_model_name, first_data))
    await asyncio.wait_for(first_data.wait(), 60)

    await lemonade.stop_extension()
    # Every backend is stopped and reaped when stop_extension returns.
    assert not [p for p in pids if unreaped(p)]
    # The open stream ends (with an SSE error event) instead of hanging.
    lines = await asyncio.wait_for(streaming, 30)
    assert any('"error"' in line for line in lines if line.startswith("data: "))
    # After the stop: no model, and a load is refused with the JSON envelope.
    assert (await api.health())["all_models_loaded"] == []
    answer = await api.post(f"{API}/load", {"model_name": default_model_name})
    assert answer.code == 503 and answer.error["code"] == "router_shutdown"


async def test_stop_extension_with_a_stream_in_flight_is_prompt(
    api, lemonade, server_url, token, default_model_name
):
    """Regression: shutdown waited out stop_grace_s (5 s) then SIGKILLed, because llama-server
    ignores SIGTERM while it streams and the router stopped backends before closing the
    in-flight upstream connections. Router.stop now closes the pool first."""
    await api.load(default_model_name)
    first_data = asyncio.Event()
    streaming = asyncio.ensure_future(_stream(server_url, token, default_model_name, first_data))
    await asyncio.wait_for(first_data.wait(), 60)
    started = time.monotonic()
    await lemonade.stop_extension()
    elapsed = time.monotonic() - started
    await asyncio.wait_for(streaming, 30)
    assert elapsed < 2.0, f"stop_extension took {elapsed:.1f} s"


@pytest.fixture
def jupyter_server(tmp_path, llama_server_path):
    """A real ``jupyter server`` subprocess with the extension enabled by its installed config
    (``etc/jupyter/jupyter_server_config.d``), base_url ``/jp/``; stopped with SIGTERM."""
    server = JupyterProcess(tmp_path, server_app={"base_url": "/jp/"}, enable_extension=False,
                            lemonade={"llama_server_path": llama_server_path},
                            token="e2e-" + os.urandom(8).hex())
    server.start()
    try:
        yield server.url, server.token, server.proc
    finally:
        server.stop()


def test_real_jupyter_server_streams_to_the_openai_client(jupyter_server, default_model_name):
    base, token, proc = jupyter_server
    auth = {"Authorization": f"Bearer {token}"}
    client = openai.OpenAI(base_url=f"{base}lemonade/api/v1", api_key=token, max_retries=0,
                           timeout=120)
    try:
        models = [m.id for m in client.models.list()]
        assert default_model_name in models
        stream = client.chat.completions.create(
            model=default_model_name, max_tokens=24, stream=True,
            messages=[{"role": "user", "content": "Count from one to one hundred."}],
            extra_body={"ignore_eos": True},
        )
        chunks = []
        for chunk in stream:
            if not chunks:
                # The first chunk arrives while the answer is still being generated: the model
                # is busy (the proxy holds it for the whole stream).
                health = httpx.get(f"{base}{API}/health", headers=auth).json()
                [entry] = health["all_models_loaded"]
                assert entry["is_busy"] is True, entry
            chunks.append(chunk)
    finally:
        client.close()
    assert len(chunks) >= 3
    assert {c.model for c in chunks} == {default_model_name}
    assert chunks[-1].choices[0].finish_reason == "length"
    health = httpx.get(f"{base}{API}/health", headers=auth).json()
    [entry] = health["all_models_loaded"]
    assert entry["is_busy"] is False
    pid = entry["pid"]
    # Stopping the server (SIGTERM, Jupyter's normal shutdown) stops the backend too.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    deadline = time.monotonic() + 10
    while unreaped(pid):
        assert time.monotonic() < deadline, f"backend {pid} outlived the Jupyter server"
        time.sleep(0.05)


@pytest.mark.slow
def test_plain_install_enables_the_extension(tmp_path):
    """``pip install .`` (not editable) into a fresh venv installs the auto-enable config.

    Run from ``tmp_path``: from the repository, ``python -c`` would import the checkout.

    The dependencies come from the dev venv through a ``.pth`` path entry (no download; the
    build backend does come from the package index or pip's cache), so only this project is
    installed into the new venv; its own copy is the one that gets validated.
    """
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist")
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("lemonade_jupyter", "jupyter-config"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    dev_site = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    Path(site, "_dev_dependencies.pth").write_text(dev_site + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
         "--disable-pip-version-check", "-q", str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"))
    env.pop("JUPYTER_PATH", None)
    where = subprocess.run(
        [str(py), "-c", "import lemonade_jupyter; print(lemonade_jupyter.__file__)"],
        check=True, capture_output=True, text=True, env=env, cwd=tmp_path,
    ).stdout
    assert where.startswith(str(venv)), where  # the installed copy, not the editable checkout
    assert (venv / "etc/jupyter/jupyter_server_config.d/lemonade_jupyter.json").is_file()
    listed = subprocess.run(
        [str(py), "-m", "jupyter_server", "extension", "list"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    out = listed.stdout + listed.stderr
    section = out.split(f"Config dir: {venv}/etc/jupyter", 1)
    assert len(section) == 2, out
    venv_part = section[1].split("Config dir:", 1)[0]
    assert "lemonade_jupyter" in venv_part and "enabled" in venv_part, out
    assert "lemonade_jupyter 0.1.0" in venv_part and "OK" in venv_part, out
    assert json.loads(
        (venv / "etc/jupyter/jupyter_server_config.d/lemonade_jupyter.json").read_text()
    ) == {"ServerApp": {"jpserver_extensions": {"lemonade_jupyter": True}}}

