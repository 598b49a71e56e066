"""The requests of a pull against the fake hub, without a Jupyter server: hang-up, bounds, the
listing's checks, resume, and the cache layout the files land in."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from lemonade_jupyter.core import hub_transfer
from lemonade_jupyter.core.hub_transfer import (
    Hangup, HubAnswerError, HubCancelled, HubSession, HubStatusError, ListedFile, _listing,
)

from .conftest import CRAWL, SMOL, STALL_AT


def test_hangup_shuts_down_the_sockets_it_watches_even_those_that_come_later():
    hangup = Hangup()
    left, right = socket.socketpair()
    late_left, late_right = socket.socketpair()
    for sock in (right, late_right):
        sock.settimeout(2)  # a peer that is not shut down fails the test, never hangs it
    try:
        hangup.watch(left)
        reader = threading.Thread(target=left.recv, args=(1,))
        reader.start()  # blocked: nothing is ever written to ``right``
        hangup.set()
        reader.join(2)
        assert not reader.is_alive()  # the blocked recv() returned
        assert right.recv(1) == b""  # the peer saw the connection end
        hangup.watch(late_left)  # connected after the hang-up: shut down at once
        assert late_right.recv(1) == b""
        with pytest.raises(HubCancelled):
            hangup.check()
        assert hangup.wait(10)  # returns at once once hung up
    finally:
        for sock in (left, right, late_left, late_right):
            sock.close()


@pytest.mark.parametrize("body", [b"<html>", b"{}", b'[{"path": 3}]', b"[1]"])
def test_a_listing_that_is_not_a_file_list_is_refused(body):
    with pytest.raises(HubAnswerError):
        list(_listing(body))


def test_a_listing_keeps_files_and_their_sizes():
    body = (b'[{"type": "directory", "path": "d"}, {"type": "file", "path": "d/a.gguf", '
            b'"size": 5}, {"type": "file", "path": "b", "size": -1}]')
    assert list(_listing(body)) == [ListedFile("d/a.gguf", 5), ListedFile("b", None)]
    sha = "ab" * 32
    lfs = b'[{"type": "file", "path": "m.gguf", "size": 7, "lfs": {"oid": "%s", "size": 7}}]'
    assert list(_listing(lfs % sha.encode())) == [ListedFile("m.gguf", 7, sha)]


def test_a_stalled_download_is_hung_up_from_another_thread(fake_hub, tmp_path):
    hangup = Hangup()
    with HubSession(fake_hub.url, None, hangup) as session:
        meta = session.file_meta(CRAWL, "main", "SmolLM2-135M-Instruct-Q4_1.gguf")
        got: list[int] = []
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                session.download(session.file_url(CRAWL, meta.commit,
                                                  "SmolLM2-135M-Instruct-Q4_1.gguf"),
                                 tmp_path, meta.size, got.append)
            except BaseException as exc:  # noqa: BLE001 - inspected below
                outcome.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 30
        while not (got and got[-1] >= STALL_AT) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got and got[-1] >= STALL_AT  # every byte before the hub's silence came
        hung_up = time.monotonic()
        hangup.set()
        worker.join(5)
        assert not worker.is_alive() and time.monotonic() - hung_up < 1.0
    assert isinstance(outcome[0], HubCancelled)
    assert not list(tmp_path.iterdir())  # the partial file is gone


def test_statuses_and_the_files_layout(fake_hub, tmp_path):
    with HubSession(fake_hub.url, None, Hangup()) as session:
        with pytest.raises(HubStatusError) as info:
            session.list_files("test/no-such-GGUF")
        assert info.value.status == 404 and info.value.error_code == "RepoNotFound"
        with pytest.raises(HubStatusError) as info:
            session.file_meta(SMOL, "main", "nope.gguf")
        assert info.value.error_code == "EntryNotFound"
        name = "SmolLM2-135M-Instruct-Q8_0.gguf"
        meta = session.file_meta(SMOL, "main", name)
        fetched = session.download(session.file_url(SMOL, meta.commit, name),
                                   tmp_path / "blobs", meta.size, lambda n: None)
        assert fetched.sha256 == meta.etag  # the fake's ETag is the sha256, as the hub's
    blob = tmp_path / "blobs" / meta.etag
    os.replace(fetched.path, blob)
    link = hub_transfer.link_snapshot(tmp_path, meta.commit, f"sub/{name}", blob)
    assert link == tmp_path / "snapshots" / meta.commit / "sub" / name
    assert os.readlink(link) == f"../../../blobs/{meta.etag}" and link.resolve() == blob


def test_the_host_name_lookup_is_bounded(monkeypatch, tmp_path):
    release = threading.Event()

    def slow_lookup(*_args: object, **_kwargs: object) -> None:
        release.wait(10)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(hub_transfer.socket, "getaddrinfo", slow_lookup)
    monkeypatch.setattr(hub_transfer, "CONNECT_TIMEOUT_S", 0.3)
    began = time.monotonic()
    try:
        with HubSession("http://hub.invalid", None, Hangup()) as session, \
                pytest.raises(Exception) as info:
            session.list_files("o/r")
    finally:
        release.set()
    assert time.monotonic() - began < 2
    assert "did not resolve within 0.3 s" in str(info.value)


def test_a_cancelled_pull_sends_no_request(fake_hub):
    hangup = Hangup()
    hangup.set()
    with HubSession(fake_hub.url, None, hangup) as session, pytest.raises(HubCancelled):
        session.list_files(SMOL)
    assert not fake_hub.requests()


@pytest.fixture(autouse=True)
def _quiet_hub(fake_hub) -> None:
    fake_hub.reset()
