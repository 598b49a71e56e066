"""The quickstart: Jupyter with the extension, the default model loaded and pinned, one answer.

Starts JupyterLab (or, with ``headless``, a bare Jupyter server) as a child process with a
random token, waits for the lemonade API, loads and pins the default model through it, streams
one chat answer to stdout, prints the URL and the engine the model runs on, and keeps serving
until Ctrl-C (or exits at once with ``exit_after``).

No compiler is needed: without a native build the model runs on the prebuilt engine. While
serving on it (and unless ``build`` is False), the quickstart builds the native
``llama-server`` in the background (``lemonade-jupyter install-llama-server``, at low priority,
with its progress), when cmake and a C++ compiler are there, then reloads the default model on
the native engine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .api_paths import API_V1
from .core.catalog import DEFAULT_MODEL
from .core.engines.install import INSTALL_COMMAND, build_env, missing_tools
from .core.ports import free_port


def run_quickstart(*, headless: bool = False, exit_after: bool = False, port: int = 0,
                   build: bool = True) -> int:
    """Run the quickstart; returns the process exit code."""
    port = port or free_port()
    token = secrets.token_hex(16)
    app = "server" if headless else "lab"
    cmd = [
        sys.executable, "-m", "jupyter", app, f"--port={port}", "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    started = time.monotonic()
    # Jupyter's log goes to a file: a pipe nobody reads while serving would fill up and
    # block the server.
    logs = Path(tempfile.mkdtemp(prefix="lemonade-quickstart-"))
    jupyter_log = logs / "jupyter.log"
    with open(jupyter_log, "wb") as log_file:
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file)
    base = f"http://127.0.0.1:{port}/"
    headers = {"Authorization": f"token {token}"}
    builder: subprocess.Popen[str] | None = None
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            _wait_for_api(client, server, jupyter_log)
            print(f"Jupyter {app} with lemonade is up ({time.monotonic() - started:.1f} s)")
            resp = client.post(f"{API_V1}/load",
                               json={"model_name": DEFAULT_MODEL, "pinned": True})
            if resp.status_code != 200:
                print(f"Load failed: {resp.text}", file=sys.stderr)
                return 1
            print(f"Loaded and pinned {DEFAULT_MODEL}: {json.dumps(resp.json())}")
            print("Chat answer: ", end="", flush=True)
            _stream_chat(client, "Say hello to a data scientist in one sentence.")
            print(f"\nReady in {time.monotonic() - started:.1f} s.")
            print(f"Open {base}{'lab' if app == 'lab' else ''}?token={token}")
            print(f"OpenAI base_url: {base}{API_V1}  api_key: {token}")
            engine = _model_engine(client)
            if engine:
                print(f"Engine: {engine['flavour']} ({engine['path']})")
        prebuilt = bool(engine) and engine.get("flavour") == "prebuilt"
        if exit_after:
            if prebuilt:
                print(f"Running on the prebuilt engine; `{INSTALL_COMMAND}` builds a faster "
                      "native one, which the router then uses.")
            return 0
        if prebuilt and build:
            builder = _start_native_build(base, headers, logs / "build.log")
        print("Serving; press Ctrl-C to stop.")
        server.wait()
        return server.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        if builder is not None and builder.poll() is None:
            _stop_group(builder)
        if builder is None:
            shutil.rmtree(logs, ignore_errors=True)
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.terminate()
                server.wait(10)


def _wait_for_api(client: httpx.Client, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            err = log.read_text(errors="replace") if log.exists() else ""
            raise SystemExit(f"Jupyter exited early:\n{err[-3000:]}")
        try:
            if client.get(f"{API_V1}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"Jupyter did not answer {API_V1}/health within 120 s")


def _stream_chat(client: httpx.Client, prompt: str) -> None:
    body = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 48,
        "stream": True,
    }
    with client.stream("POST", f"{API_V1}/chat/completions", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0].get("delta", {})
            print(delta.get("content") or "", end="", flush=True)


def _model_engine(client: httpx.Client) -> dict[str, Any] | None:
    """The engine the default model runs on, from ``/health``."""
    try:
        health = client.get(f"{API_V1}/health").json()
    except (httpx.HTTPError, ValueError):
        return None
    for entry in health.get("all_models_loaded", []):
        if entry.get("model_name") == DEFAULT_MODEL and entry.get("engine"):
            return dict(entry["engine"])
    return None


def _start_native_build(base: str, headers: dict[str, str],
                        log: Path) -> subprocess.Popen[str] | None:
    """Build the native engine in the background (nice 10), print its progress, and reload
    the default model on it when done. None when the build tools are missing (says which)."""
    missing = missing_tools(build_env())
    if missing:
        print(f"On the prebuilt engine. A native build is faster but needs {' and '.join(missing)}"
              f"; then run `{INSTALL_COMMAND}`.")
        return None
    print(f"On the prebuilt engine; building the native one in the background "
          f"(`{INSTALL_COMMAND}`, minutes; log: {log}).")
    builder = subprocess.Popen(
        [sys.executable, "-m", "lemonade_jupyter.cli", "install-llama-server"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        errors="replace", preexec_fn=lambda: os.nice(10), start_new_session=True,
    )
    threading.Thread(target=_follow_build, args=(builder, base, headers, log), daemon=True,
                     name="lemonade-native-build").start()
    return builder


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """Stop the build and the compilers it started (its own process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(10)
            return
        except subprocess.TimeoutExpired:
            continue


def _follow_build(builder: subprocess.Popen[str], base: str, headers: dict[str, str],
                  log: Path) -> None:
    assert builder.stdout is not None
    with open(log, "w") as out:
        for line in builder.stdout:
            out.write(line)
            out.flush()
            if line.startswith("lemonade-jupyter:"):  # its steps and its progress
                print(f"[native build] {line.rstrip()}", flush=True)
    code = builder.wait()
    if code < 0:  # stopped with the quickstart
        return
    if code != 0:
        print(f"[native build] failed (see {log}); the prebuilt engine keeps serving.",
              flush=True)
        return
    # New starts use the native build from now on; move the default model onto it.
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            client.post(f"{API_V1}/unload", json={"model_name": DEFAULT_MODEL})
            resp = client.post(f"{API_V1}/load",
                               json={"model_name": DEFAULT_MODEL, "pinned": True})
            engine = _model_engine(client) if resp.status_code == 200 else None
    except httpx.HTTPError:
        engine = None
    if engine:
        print(f"[native build] {DEFAULT_MODEL} now runs on the {engine['flavour']} engine "
              f"({engine['path']}).", flush=True)
    else:
        print("[native build] done; models use it from their next load.", flush=True)
