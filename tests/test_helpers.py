"""The shared helpers of the suites (``tests/helpers``) catch what they are meant to catch."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.envelope import assert_envelope
from tests.helpers.http import sse_events
from tests.helpers.polling import wait_for
from tests.helpers.processes import assert_no_leftovers, backend_pids, zombies_below


def _zombie() -> subprocess.Popen[bytes]:
    """A child that has exited and that nobody has reaped yet."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: proc.pid in zombies_below(), 10, "the child to become a zombie")
    return proc


def test_a_zombie_child_fails_the_leftover_check_when_its_deadline_passes():
    proc = _zombie()
    try:
        started = time.monotonic()
        with pytest.raises(AssertionError, match=rf"zombie children .* 0.5 s: \[{proc.pid}\]"):
            assert_no_leftovers(set(), timeout=0.5)
        assert time.monotonic() - started >= 0.5  # it waited for the reaper first
    finally:
        proc.wait()
    assert_no_leftovers(set(), timeout=0.5)


def test_a_zombie_reaped_before_the_deadline_passes_the_leftover_check():
    proc = _zombie()
    reaper = threading.Timer(0.3, proc.wait)
    reaper.start()
    try:
        assert_no_leftovers(set(), timeout=10)
    finally:
        reaper.join()
    assert proc.returncode == 0


def test_a_backend_left_running_fails_the_leftover_check():
    """A process that counts as a backend (its command line names llama-server) and surely
    keeps running: the check is about the leftover rule, not about a backend's start (a fake
    server that died early on a taken port made this test pass the check once)."""
    before = backend_pids()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                             "llama-server-stand-in"])
    try:
        wait_for(lambda: proc.pid in backend_pids(), 10, "the stand-in backend to start")
        with pytest.raises(AssertionError, match=rf"backend processes .* 0.5 s: \[{proc.pid}\]"):
            assert_no_leftovers(before, timeout=0.5)
        assert proc.poll() is None
        # One that ran before the test began is not the test's leftover.
        assert_no_leftovers(before | {proc.pid}, timeout=0.5)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("body", [
    b"<html>500</html>",
    b'{"detail": "no"}',
    b'{"error": "just a string"}',
    b'{"error": {"message": "", "type": "server_error"}}',
    b'{"error": {"message": "m", "type": "t", "code": 500}}',
    b'{"error": {"message": "Traceback (most recent call last):", "type": "t"}}',
])
def test_assert_envelope_rejects_what_is_not_the_envelope(body):
    with pytest.raises(AssertionError):
        assert_envelope(httpx.Response(500, content=body))


def test_assert_envelope_returns_the_error_object():
    body = b'{"error": {"message": "m", "type": "t", "code": "c", "param": null}}'
    assert assert_envelope(httpx.Response(400, content=body)) == {
        "message": "m", "type": "t", "code": "c", "param": None}


def test_sse_events_parses_blocks_across_chunks_and_skips_comments():
    raw = [b": lemonade events\n\nid: 1\nevent: lo", b'ad\ndata: {"kind": "load"}\n\n: ping\n\n',
           b'id: 2\nevent: pin\ndata: {"kind": "pin"}\n\n']
    resp = httpx.Response(200, stream=_Chunks(raw))
    assert list(sse_events(resp)) == [
        {"id": 1, "event": "load", "data": {"kind": "load"}},
        {"id": 2, "event": "pin", "data": {"kind": "pin"}},
    ]


class _Chunks(httpx.SyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self):
        yield from self._chunks


def test_the_repository_root_is_where_the_package_is():
    from tests.helpers import REPO

    assert (REPO / "lemonade_jupyter" / "__init__.py").is_file()
    assert Path(__file__).resolve().parent.parent == REPO
