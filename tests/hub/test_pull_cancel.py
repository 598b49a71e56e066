"""Cancelling a hub pull, in a real Jupyter server against the fake hub: the transfer stops.

A cancel (``/pull/cancel``, or the router's stop) hangs up the download's connection: the fake
hub sees it closed within a second of the answer, every client waiting on the pull (plain and
streamed) gets ``pull_cancelled``, no partial file stays in the cache, and the next pull of the
same checkpoint starts afresh and succeeds. The download crawls, then the hub goes silent (as
a stuck network does) until the client hangs up: a cancel that only set a flag for the
download loop to read would wait for the next bytes, which do not come.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from lemonade_jupyter.core.hub import HubRef, PullPlan, RepoFile
from lemonade_jupyter.core.hub_fetch import FileProgress
from lemonade_jupyter.core.pulls import PullJob
from lemonade_jupyter.errors import PullCancelledError
from tests.helpers.http import API, auth_headers
from tests.helpers.polling import wait_until

from .conftest import CRAWL, STALL_AT, cached_files

#: How long after the cancel's answer the hub may still be sending.
HANG_UP_S = 1.0


def pull_events(app, model: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.reason, e.detail) for e in app.router.events.recent()
            if e.kind == "pull" and e.model == model]


def stalled(app) -> bool:
    """The pull's download got every byte before the hub's silence."""
    jobs = app.router.catalog.pulls.jobs()
    progress = jobs[0].progress() if jobs else None
    return progress is not None and progress["bytes_downloaded"] >= STALL_AT


def ended_crawls(fake_hub) -> list[dict[str, Any]]:
    return [r for r in fake_hub.downloads("crawl") if "ended" in r]


def pull_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("lemonade-pull")]


def leftovers(cache: Path) -> list[Path]:
    """Files of the cache that are model bytes (blobs, partial downloads), not the ref."""
    return [p for p in cached_files(cache) if "refs" not in p.parts]


async def streamed_pull(url: str, token: str, body: dict[str, Any], seen: asyncio.Event
                        ) -> list[tuple[str, dict[str, Any]]]:
    """A streaming pull's events; ``seen`` is set at its first progress event."""
    events: list[tuple[str, dict[str, Any]]] = []
    async with httpx.AsyncClient(timeout=60) as client, client.stream(
            "POST", f"{url}{API}/pull", json={**body, "stream": True},
            headers=auth_headers(token)) as resp:
        assert resp.status_code == 200
        kind = ""
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                seen.set()
    return events


async def test_cancel_hangs_up_the_download_and_answers_every_waiter(
        api, lemonade, hub_cache, fake_hub, server_url, token):
    plain = asyncio.ensure_future(api.post(f"{API}/pull", {"model_name": "user.c",
                                                           "checkpoint": f"{CRAWL}:Q4_1"}))
    await wait_until(lambda: stalled(lemonade), timeout=30,
                     what="the pull to reach the hub's silence")
    seen = asyncio.Event()
    streamed = asyncio.ensure_future(streamed_pull(
        server_url, token, {"model_name": "user.d", "checkpoint": f"{CRAWL}:q4_1"}, seen))
    await asyncio.wait_for(seen.wait(), 30)  # the second client joined and saw progress

    cancel = await api.post(f"{API}/pull/cancel", {"checkpoint": f"{CRAWL}:Q4_1"})
    answered = time.time()
    assert cancel.code == 200 and cancel.json["cancelled"] == [f"{CRAWL}:Q4_1"]

    await wait_until(lambda: ended_crawls(fake_hub), timeout=10,
                     what="the fake hub to see the download end")
    (transfer,) = ended_crawls(fake_hub)
    assert not transfer["complete"]
    assert transfer["ended"] - answered < HANG_UP_S, transfer["ended"] - answered

    answer = await asyncio.wait_for(plain, 10)
    assert answer.code == 409 and answer.error["code"] == "pull_cancelled", answer.body
    events = await asyncio.wait_for(streamed, 10)
    kind, data = events[-1]
    assert kind == "error" and data["status"] == 409
    assert data["error"]["code"] == "pull_cancelled"
    await wait_until(lambda: not leftovers(hub_cache) and not pull_threads(), timeout=10,
                     what="the partial file to go and the download thread to end")
    assert len(fake_hub.downloads("crawl")) == 1  # nothing fetched after the hang-up
    listed = (await api.get(f"{API}/models")).json["data"]
    assert not {"user.c", "user.d"} & {m["id"] for m in listed}

    fake_hub.configure(CRAWL, rate=0, stall_s=0)  # the next pull: fresh and complete
    again = await api.post(f"{API}/pull", {"model_name": "user.c", "checkpoint": f"{CRAWL}:Q4_1"})
    assert again.code == 200, again.body
    downloads = fake_hub.downloads("crawl")
    assert len(downloads) == 2 and downloads[1]["range"] is None and downloads[1]["complete"]
    assert [r for r, _ in pull_events(lemonade, "user.c")][-1] == "complete"


async def test_router_stop_hangs_up_a_pull_in_flight(api, lemonade, hub_cache, fake_hub):
    """A download must not outlive its router (a server stop, an embedded router closed)."""
    pull = asyncio.ensure_future(api.post(f"{API}/pull", {"model_name": "user.s",
                                                          "checkpoint": f"{CRAWL}:Q4_1"}))
    await wait_until(lambda: stalled(lemonade), timeout=30,
                     what="the pull to reach the hub's silence")
    await lemonade.router.stop()
    stopped = time.time()
    answer = await asyncio.wait_for(pull, 10)
    assert answer.code == 409 and answer.error["code"] == "pull_cancelled", answer.body
    await wait_until(lambda: ended_crawls(fake_hub), timeout=10,
                     what="the fake hub to see the download end")
    (transfer,) = ended_crawls(fake_hub)
    assert not transfer["complete"] and transfer["ended"] - stopped < HANG_UP_S
    await wait_until(lambda: not leftovers(hub_cache) and not pull_threads(), timeout=10,
                     what="the partial file to go and the download thread to end")


async def test_a_cancelled_job_answers_at_once_and_reports_nothing_more():
    """What the download thread posts while it winds down (a last chunk's progress) must not
    follow the ``cancelled`` event nor reach a streamed client."""
    events: list[str] = []
    job = PullJob(HubRef("o/r", variant="Q4_0"), None, "user.x",
                  lambda kind, name, reason, **detail: events.append(reason),
                  asyncio.get_running_loop())
    seen: list[dict[str, Any]] = []
    job.subscribe(seen.append)
    job.cancel()
    assert job.cancelled.is_set() and job.done  # answered without waiting for the thread
    job._planned(PullPlan(job.ref, (RepoFile("m-Q4_0.gguf", 10),)))
    job._progress(FileProgress(0, "m-Q4_0.gguf", 5, 10))
    assert events == ["cancelled"] and seen == [] and job.progress() is None
    with pytest.raises(PullCancelledError):
        await job.wait()
