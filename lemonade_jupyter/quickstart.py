"""The quickstart: Jupyter with the extension, the default model loaded and pinned, one answer.

Starts JupyterLab (or, with ``headless``, a bare Jupyter server) as a child process with a
random token, waits for the lemonade API, loads and pins the default model through it, streams
one chat answer to stdout, prints the URL, and keeps serving until Ctrl-C (or exits at once with
``exit_after``).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import httpx

from .core.catalog import DEFAULT_MODEL


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_quickstart(*, headless: bool = False, exit_after: bool = False, port: int = 0) -> int:
    """Run the quickstart; returns the process exit code."""
    port = port or _free_port()
    token = secrets.token_hex(16)
    app = "server" if headless else "lab"
    cmd = [
        sys.executable, "-m", "jupyter", app, f"--port={port}", "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}", "--ServerApp.open_browser=False",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    started = time.monotonic()
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/"
    headers = {"Authorization": f"token {token}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            _wait_for_api(client, server)
            print(f"Jupyter {app} with lemonade is up ({time.monotonic() - started:.1f} s)")
            resp = client.post("lemonade/api/v1/load",
                               json={"model_name": DEFAULT_MODEL, "pinned": True})
            if resp.status_code != 200:
                print(f"Load failed: {resp.text}", file=sys.stderr)
                return 1
            print(f"Loaded and pinned {DEFAULT_MODEL}: {json.dumps(resp.json())}")
            print("Chat answer: ", end="", flush=True)
            _stream_chat(client, "Say hello to a data scientist in one sentence.")
            print(f"\nReady in {time.monotonic() - started:.1f} s.")
            print(f"Open {base}{'lab' if app == 'lab' else ''}?token={token}")
            print(f"OpenAI base_url: {base}lemonade/api/v1  api_key: {token}")
        if exit_after:
            return 0
        print("Serving; press Ctrl-C to stop.")
        server.wait()
        return server.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.terminate()
                server.wait(10)


def _wait_for_api(client: httpx.Client, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            err = server.stderr.read() if server.stderr else ""
            raise SystemExit(f"Jupyter exited early:\n{err[-3000:]}")
        try:
            if client.get("lemonade/api/v1/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("Jupyter did not answer lemonade/api/v1/health within 120 s")


def _stream_chat(client: httpx.Client, prompt: str) -> None:
    body = {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 48,
        "stream": True,
    }
    with client.stream("POST", "lemonade/api/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0].get("delta", {})
            print(delta.get("content") or "", end="", flush=True)
