"""``lemonade-jupyter`` as a client CLI, run as a subprocess against a real Jupyter server
with the extension (``base_url`` ``/jp/``) and real llama-server backends.

Every subcommand; ``--json`` equal to the API's answer; the warning before a load that evicts
a model and the stop before one into a pool whose every slot is pinned; the exit codes of
"not reachable" (4), "refused" (3) and "bad input" (2); a pull from the fake hub with its
progress; ``chat`` from stdin; finding the server the way a kernel does (its info file, or
``LEMONADE_JUPYTER_URL``/``LEMONADE_JUPYTER_TOKEN``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from lemonade_jupyter.core.catalog import DEFAULT_MODEL
from lemonade_jupyter.core.ports import free_port
from tests.helpers.http import API, loaded
from tests.helpers.jupyter import LEAKY_ENV, repo_first_on_pythonpath

ALL_PINNED = "All loaded models of type llm are pinned. Unload a model first."
#: Fields of a /health entry that move by themselves.
VOLATILE = {"idle_s", "memory_bytes", "memory_freed_bytes", "device", "memory_by_device",
            "memory_source"}


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_ENV}
    # No Jupyter server of this machine's user may be found by accident.
    env["JUPYTER_RUNTIME_DIR"] = "/nonexistent-runtime-dir"
    env.update(extra)
    return repo_first_on_pythonpath(env)


def run_cli(*args: str, server=None, stdin: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m lemonade_jupyter.cli ARGS``; with ``server``, ``--url``/``--token`` too."""
    argv = [sys.executable, "-m", "lemonade_jupyter.cli", *args]
    if server is not None:
        argv += ["--url", server.url, "--token", server.token]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout,
                          env=env or cli_env())


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result


@pytest.fixture
def rest(clean):
    with clean.client() as c:
        yield c


def steady(health: dict[str, Any]) -> dict[str, Any]:
    health = dict(health)
    health["all_models_loaded"] = [{k: v for k, v in m.items() if k not in VOLATILE}
                                   for m in health["all_models_loaded"]]
    health.pop("memory", None)
    return health


def register(rest, name: str, path: str) -> None:
    resp = rest.post(f"{API}/pull", json={"model_name": name, "checkpoint": path,
                                          "recipe": "llamacpp"})
    assert resp.status_code == 200, resp.text


def test_status_and_models_print_the_apis_json_and_a_table(clean, rest):
    assert rest.post(f"{API}/load", json={"model_name": DEFAULT_MODEL,
                                          "pinned": True}).status_code == 200
    shown = json.loads(ok(run_cli("status", "--json", server=clean)).stdout)
    assert steady(shown) == steady(rest.get(f"{API}/health").json())
    text = ok(run_cli("status", server=clean)).stdout
    row = next(line for line in text.splitlines() if line.startswith(DEFAULT_MODEL))
    assert row.split()[1:4] == ["llm", "ready", "yes"], row
    (entry,) = shown["all_models_loaded"]
    assert entry["owner"] and row.split()[4] == entry["owner"], row  # who loaded it
    assert "MiB" in row
    assert "llm: 1 of 1 slots in use, 1 pinned" in text

    listed = json.loads(ok(run_cli("models", "--json", server=clean)).stdout)
    assert listed == rest.get(f"{API}/models", params={"show_all": "true"}).json()
    text = ok(run_cli("models", server=clean)).stdout
    row = next(line for line in text.splitlines() if line.startswith(DEFAULT_MODEL))
    assert row.split()[1:5] == ["llm", "llamacpp", "yes", "pinned"], row
    assert any(line.split()[3] == "no" for line in text.splitlines()[1:])  # not downloaded
    downloaded = json.loads(ok(run_cli("models", "--downloaded", "--json", server=clean)).stdout)
    assert downloaded["data"] and all(m["downloaded"] for m in downloaded["data"])


def test_load_pin_unpin_unload_with_options(clean, rest):
    result = ok(run_cli("load", DEFAULT_MODEL, "--pinned", "--ctx-size", "1024", "--device",
                        "cpu", "--json", server=clean))
    answer = json.loads(result.stdout)
    assert answer["pinned"] is True and answer["model_name"] == DEFAULT_MODEL
    live = loaded(rest.get(f"{API}/health").json())[DEFAULT_MODEL]
    assert live["pinned"] is True and live["ctx_size"] == 1024
    assert live["recipe_options"]["device"] == "cpu"

    assert "Unpinned" in ok(run_cli("unpin", DEFAULT_MODEL, server=clean)).stdout
    assert loaded(rest.get(f"{API}/health").json())[DEFAULT_MODEL]["pinned"] is False
    assert json.loads(ok(run_cli("pin", DEFAULT_MODEL, "--json", server=clean)).stdout) == {
        "status": "success", "model_name": DEFAULT_MODEL, "pinned": True}
    assert loaded(rest.get(f"{API}/health").json())[DEFAULT_MODEL]["pinned"] is True
    ok(run_cli("unload", DEFAULT_MODEL, server=clean))
    assert loaded(rest.get(f"{API}/health").json()) == {}


def test_load_warns_before_it_evicts_and_stops_when_every_slot_is_pinned(
        clean, rest, default_model_file):
    register(rest, "user.other", default_model_file)
    assert rest.post(f"{API}/alias", json={"model_name": "user.other",
                                           "alias": "other"}).status_code == 200
    ok(run_cli("load", DEFAULT_MODEL, server=clean))
    result = ok(run_cli("load", "other", server=clean))  # an alias is checked like its model
    assert (f"warning: every llm slot is in use (1 of 1); loading other unloads "
            f"{DEFAULT_MODEL}") in result.stderr
    assert set(loaded(rest.get(f"{API}/health").json())) == {"user.other"}

    ok(run_cli("pin", "user.other", server=clean))
    before = steady(rest.get(f"{API}/health").json())
    # --pinned into an all-pinned pool: stopped before asking, with the API's 409 message.
    result = run_cli("load", DEFAULT_MODEL, "--pinned", server=clean)
    assert result.returncode == 3
    assert result.stderr == f"lemonade-jupyter: {ALL_PINNED}\n"
    # Without --pinned: warned, tried, and the router's 409 gives the same line.
    result = run_cli("load", DEFAULT_MODEL, server=clean)
    assert result.returncode == 3
    assert result.stderr.splitlines() == [f"lemonade-jupyter: warning: {ALL_PINNED}",
                                          f"lemonade-jupyter: {ALL_PINNED}"]
    assert steady(rest.get(f"{API}/health").json()) == before
    rest.post(f"{API}/delete", json={"model_name": "user.other"})


def test_exit_codes_for_unreachable_refused_and_bad_input(clean, rest):
    nobody = f"http://127.0.0.1:{free_port()}/jp/"
    result = run_cli("status", "--url", nobody)
    assert result.returncode == 4 and "Cannot reach the router" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    # No server to discover (an empty runtime dir, no environment): not reachable either.
    result = run_cli("status")
    assert result.returncode == 4 and "No Jupyter server" in result.stderr

    result = run_cli("unload", "no-such-model", server=clean)
    assert result.returncode == 3 and "no-such-model" in result.stderr
    result = run_cli("pin", DEFAULT_MODEL, server=clean)  # not loaded: 404
    assert result.returncode == 3 and "not loaded" in result.stderr
    result = run_cli("status", "--url", clean.url, "--token", "wrong")
    assert result.returncode == 3 and "token" in result.stderr

    result = run_cli("config", "max_loaded_models=0", server=clean)
    assert result.returncode == 2 and "max_loaded_models" in result.stderr
    assert rest.get("lemonade/internal/config").json()["max_loaded_models"] == 1
    result = run_cli("load", DEFAULT_MODEL, "--ctx-size", "3", server=clean)
    assert result.returncode == 2 and "ctx_size" in result.stderr
    result = run_cli("load", DEFAULT_MODEL, "--device", "gpu9", server=clean)
    assert result.returncode == 2 and "--device" in result.stderr
    result = run_cli("load", server=clean)  # usage: the model is missing
    assert result.returncode == 2
    assert loaded(rest.get(f"{API}/health").json()) == {}
    for result in (run_cli("config", "max_loaded_models=0", server=clean),
                   run_cli("unload", "no-such-model", server=clean)):
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_pull_from_the_hub_shows_progress_then_delete(clean, rest, fake_hub):
    result = ok(run_cli("pull", "user.cli-pull", "test/SmolLM2-GGUF:Q4_K_M", "--json",
                        server=clean))
    answer = json.loads(result.stdout)
    assert answer["model_name"] == "user.cli-pull" and answer["status"] == "success"
    lines = [line for line in result.stderr.splitlines() if "%" in line]
    assert lines, result.stderr
    assert "100.0%" in lines[-1] and "SmolLM2-135M-Instruct-Q4_K_M.gguf" in lines[-1]
    models = {m["id"]: m for m in rest.get(f"{API}/models").json()["data"]}
    assert models["user.cli-pull"]["downloaded"] is True

    result = run_cli("pull", "test/SmolLM2-GGUF:Q4_K_M", server=clean)
    assert result.returncode == 2 and "user.NAME" in result.stderr
    assert "Deleted" in ok(run_cli("delete", "user.cli-pull", server=clean)).stdout
    assert "user.cli-pull" not in {m["id"] for m in rest.get(f"{API}/models").json()["data"]}


def test_chat_streams_a_prompt_from_stdin_or_the_command_line(clean, rest):
    greedy = ("--max-tokens", "8", "--temperature", "0")
    via_stdin = ok(run_cli("chat", DEFAULT_MODEL, *greedy, server=clean,
                           stdin="Name three colours.\n")).stdout
    assert via_stdin.strip()
    direct = ok(run_cli("chat", DEFAULT_MODEL, "Name three colours.\n", *greedy,
                        server=clean)).stdout
    assert direct == via_stdin
    answer = json.loads(ok(run_cli("chat", DEFAULT_MODEL, "--json", *greedy, server=clean,
                                   stdin="Name three colours.\n")).stdout)
    assert answer["choices"][0]["message"]["content"].strip() == via_stdin.strip()
    result = run_cli("chat", DEFAULT_MODEL, server=clean, stdin="   ")
    assert result.returncode == 2 and "no prompt" in result.stderr


def test_logs_print_and_follow_the_backend_log(clean, rest):
    ok(run_cli("load", DEFAULT_MODEL, server=clean))
    text = ok(run_cli("logs", DEFAULT_MODEL, "-n", "5", server=clean)).stdout
    assert 1 <= len(text.splitlines()) <= 5, text
    events = [json.loads(line) for line in
              ok(run_cli("logs", DEFAULT_MODEL, "-n", "3", "--json", server=clean)).stdout
              .splitlines()]
    assert [e["event"] for e in events if e["event"] == "log"] == ["log"] * 3

    argv = [sys.executable, "-m", "lemonade_jupyter.cli", "logs", DEFAULT_MODEL, "-f", "-n",
            "1", "--url", clean.url, "--token", clean.token]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=cli_env()) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.strip()
        # A request makes the backend write more lines: they arrive while following.
        rest.post(f"{API}/chat/completions", json={
            "model": DEFAULT_MODEL, "max_tokens": 2,
            "messages": [{"role": "user", "content": "hi"}]})
        assert proc.stdout.readline().strip()
        assert proc.poll() is None  # still following
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0


def test_config_shows_and_sets_runtime_settings(clean, rest):
    shown = json.loads(ok(run_cli("config", "--json", server=clean)).stdout)
    assert shown == rest.get("lemonade/internal/config").json()
    assert "max_loaded_models = 1" in ok(run_cli("config", server=clean)).stdout
    try:
        answer = json.loads(ok(run_cli("config", "max_loaded_models=2", "--json",
                                       server=clean)).stdout)
        assert answer["max_loaded_models"] == 2
        assert rest.get("lemonade/internal/config").json()["max_loaded_models"] == 2
    finally:
        rest.post("lemonade/internal/set", json={"max_loaded_models": 1})


def test_finds_the_server_like_a_kernel_does(clean, rest):
    # Its info file in the runtime dir (what kernels read), no URL given.
    env = cli_env(JUPYTER_RUNTIME_DIR=str(clean.runtime_dir))
    shown = json.loads(ok(run_cli("status", "--json", env=env)).stdout)
    assert shown["status"] == "ok"
    # The environment variables a kernel reads.
    env = cli_env(LEMONADE_JUPYTER_URL=clean.url, LEMONADE_JUPYTER_TOKEN=clean.token)
    assert json.loads(ok(run_cli("config", "--json", env=env)).stdout)["max_loaded_models"] == 1
    # --url wins over the environment; the token still comes from it.
    env = cli_env(LEMONADE_JUPYTER_URL=f"http://127.0.0.1:{free_port()}/",
                  LEMONADE_JUPYTER_TOKEN=clean.token)
    ok(run_cli("status", "--url", clean.url, env=env))


def test_pull_on_a_terminal_draws_a_bar_and_ctrl_c_cancels_it_on_the_server(clean, rest,
                                                                             fake_hub):
    import pty
    import select

    master, slave = pty.openpty()  # stderr is a terminal: the bar is redrawn in place
    argv = [sys.executable, "-m", "lemonade_jupyter.cli", "pull", "user.cli-slow",
            "test/slow-GGUF:Q4_1", "--url", clean.url, "--token", clean.token]
    seen = b""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=slave, env=cli_env()) as proc:
        os.close(slave)
        deadline = time.monotonic() + 60
        while b"%" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                seen += os.read(master, 4096)
        assert b"\r[" in seen and b"%" in seen, seen
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        while True:  # what it wrote after the interrupt
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    os.close(master)
    assert b"pull of user.cli-slow cancelled" in seen
    # Cancelled on the server (its event log says how the pull ended); nothing registered.
    assert pull_outcome(clean, "user.cli-slow") == "cancelled"
    assert "user.cli-slow" not in {m["id"] for m in rest.get(f"{API}/models").json()["data"]}


def pull_outcome(server, name: str) -> str:
    """How the router's event log says the pull of ``name`` ended (waits for it)."""
    for event in server.router_client.events(last_event_id=1, read_timeout=30):
        if (event.get("kind") == "pull" and event.get("model") == name
                and event.get("reason") in ("cancelled", "complete", "error")):
            return str(event["reason"])
    raise AssertionError(f"the event stream ended before the pull of {name} did")
