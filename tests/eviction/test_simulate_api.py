"""``POST lemonade/internal/simulate-vram-pressure``: input validation and auth.

A rejected call is a 400 JSON envelope and evaluates nothing: the model that a valid call would
downsize at once stays as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.server.embedded import EmbeddedServer

from tests.helpers.envelope import assert_envelope
from tests.helpers.processes import backend_pids

from .conftest import SIMULATE, TEST_SETTINGS, Lemonade

BAD_BODIES = [
    pytest.param({"pct": "0.95"}, id="string"),
    pytest.param({"pct": True}, id="true"),
    pytest.param({"pct": False}, id="false"),
    pytest.param({"pct": None}, id="null"),
    pytest.param({"pct": [0.95]}, id="list"),
    pytest.param({"pct": {"value": 0.95}}, id="object"),
    pytest.param({"pct": 2}, id="two"),
    pytest.param({"pct": 1.0001}, id="just-over-one"),
    pytest.param({"pct": -0.5}, id="minus-half"),
    pytest.param({"pct": -1.5}, id="minus-one-and-a-half"),
    pytest.param({"pct": -2}, id="minus-two"),
    pytest.param({}, id="missing"),
    pytest.param({"percent": 0.95}, id="misnamed"),
]

BAD_RAW = [
    pytest.param(b'{"pct": NaN}', id="nan"),
    pytest.param(b'{"pct": Infinity}', id="infinity"),
    pytest.param(b'{"pct": -Infinity}', id="minus-infinity"),
    pytest.param(b'{"pct": 1e999}', id="overflowing-float"),
    pytest.param(b'{"pct": 1' + b"0" * 400 + b"}", id="huge-int"),
    pytest.param(b'{"pct": -1' + b"0" * 400 + b"}", id="huge-negative-int"),
    pytest.param(b"not json", id="not-json"),
    pytest.param(b"[0.95]", id="array"),
    pytest.param(b"0.95", id="bare-number"),
    pytest.param(b"", id="empty"),
]


@contextlib.contextmanager
def armed_server(data_dir: Path, llama_server_path: str, default_model_file: str
                 ) -> Iterator[Lemonade]:
    """m1 loaded with ``downsize_idle_timeout: 0`` and auto-evict on, so any evaluation that
    ran would downsize it."""
    server = EmbeddedServer(data_dir=data_dir, settings=RouterSettings(**TEST_SETTINGS),
                            llama_server_path=llama_server_path)
    server.start()
    lemon = Lemonade(server)
    try:
        lemon.ok(lemon.post("api/v1/pull", {"model_name": "user.m1",
                                            "checkpoint": default_model_file}))
        lemon.load("user.m1", downsize_idle_timeout=0)
        lemon.set(auto_evict=True)
        yield lemon
    finally:
        lemon.close()
        server.stop()


@pytest.fixture(scope="module")
def armed(tmp_path_factory, llama_server_path, default_model_file):
    """One armed server for the whole table (no test of the table may change it)."""
    with armed_server(tmp_path_factory.mktemp("simulate"), llama_server_path,
                      default_model_file) as lemon:
        yield lemon
    # The per-test orphan check sees this backend as older than each test: check it here.
    assert backend_pids() == set()


def check_rejected(lemon, resp: httpx.Response, pid: int, events: int) -> None:
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = assert_envelope(resp)  # a non-empty message and a type
    assert error["type"] == "invalid_request_error"
    assert "Traceback" not in resp.text
    entry = lemon.model("user.m1")
    assert entry["status"] == "ready" and entry["pid"] == pid
    assert len(list(lemon.router.events)) == events


@pytest.mark.parametrize("body", BAD_BODIES)
def test_bad_pct_is_a_400_and_changes_nothing(armed, body):
    pid = armed.model("user.m1")["pid"]
    events = len(list(armed.router.events))
    resp = armed.post(SIMULATE, body)
    check_rejected(armed, resp, pid, events)
    if body:
        assert resp.json()["error"]["param"] == "pct"
        assert "pct" in resp.json()["error"]["message"]


@pytest.mark.parametrize("raw", BAD_RAW)
def test_bad_body_is_a_400_and_changes_nothing(armed, raw):
    pid = armed.model("user.m1")["pid"]
    events = len(list(armed.router.events))
    resp = armed.post(SIMULATE, content=raw, headers={"Content-Type": "application/json"})
    check_rejected(armed, resp, pid, events)


def test_without_a_token_it_is_refused(armed):
    pid = armed.model("user.m1")["pid"]
    resp = httpx.post(armed.base + SIMULATE, json={"pct": -1})
    assert resp.status_code == 403
    assert resp.json()["error"]["type"] == "permission_error"
    assert armed.model("user.m1")["pid"] == pid
    for path in ("api/v1/events", "metrics"):
        assert httpx.get(armed.base + path).status_code == 403


def test_a_valid_call_acts(tmp_path, llama_server_path, default_model_file):
    """A server armed as the table's is acts on a valid call: so the table's unchanged model
    proves each rejected call evaluated nothing. (Its own server: the table's must not change.)"""
    with armed_server(tmp_path / "data", llama_server_path, default_model_file) as armed:
        assert armed.post(SIMULATE, {"pct": 0}).json()["actions"] == [
            {"model": "user.m1", "action": "downsize", "reason": "idle"}
        ]
        assert armed.model("user.m1")["status"] == "downsized"
