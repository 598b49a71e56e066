"""``POST lemonade/api/v1/pull`` from a (fake) Hugging Face Hub, in a real Jupyter server.

Pull by variant, split GGUFs, a download resumed after a cut, progress over SSE and on the
event stream, the hub's errors as API errors, one download for two pulls, cancel, disk full,
offline, the curated catalog (listed, pulled by a load, deleted), ``delete_files``, and the
reranking pool and route. Models that are loaded run on the real llama-server.
"""

from __future__ import annotations

import asyncio
import filecmp
import json
import os
from pathlib import Path
from typing import Any

import httpx
import psutil

from lemonade_jupyter.core import hub_fetch, hub_transfer
from tests.helpers.http import API, auth_headers, chat_body
from tests.helpers.polling import wait_until

from .conftest import (
    CURATED, CUT_AT, FLAKY, PRIVATE, SLOW, SMOL, SPLIT, TOKEN, cached_files, curated_files,
)


async def models(api, show_all: bool = False) -> dict[str, dict[str, Any]]:
    answer = await api.get(f"{API}/models", params={"show_all": "true"} if show_all else {})
    assert answer.code == 200, answer.body
    return {m["id"]: m for m in answer.json["data"]}


async def stream_pull(url: str, token: str, body: dict[str, Any]
                      ) -> tuple[int, list[tuple[str, dict[str, Any]]]]:
    """POST a streaming pull; return the status and its SSE events (kind, data)."""
    events: list[tuple[str, dict[str, Any]]] = []
    async with httpx.AsyncClient(timeout=120) as client, client.stream(
            "POST", f"{url}{API}/pull", json={**body, "stream": True},
            headers=auth_headers(token)) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return resp.status_code, [("body", resp.json())]
        assert resp.headers["content-type"].startswith("text/event-stream")
        kind = ""
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    return 200, events


def pull_events(app, model: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.reason, e.detail) for e in app.router.events.recent()
            if e.kind == "pull" and e.model == model]


def blobs(cache: Path) -> list[Path]:
    return [p for p in cached_files(cache) if "blobs" in p.parts]


# ---------------------------------------------------------------------------- pulling
async def test_pull_by_variant_downloads_into_the_hub_cache(
        api, hub_cache, fake_hub, default_model_file, lemonade_data_dir):
    body = {"model_name": "user.smol", "checkpoint": f"{SMOL}:q8_0"}  # any case
    answer = await api.post(f"{API}/pull", body)
    assert answer.code == 200, answer.body
    result = answer.json
    assert result["checkpoint"] == f"{SMOL}:q8_0" and result["type"] == "llm"
    path = Path(result["path"])
    assert path.name == "SmolLM2-135M-Instruct-Q8_0.gguf"
    assert path.is_relative_to(hub_cache / "models--test--SmolLM2-GGUF" / "snapshots")
    assert filecmp.cmp(path, default_model_file, shallow=False)
    listed = (await models(api))["user.smol"]
    assert listed["downloaded"] is True and listed["checkpoint"] == f"{SMOL}:q8_0"
    saved = json.loads((lemonade_data_dir / "user_models.json").read_text())
    assert saved[0]["source"] == f"{SMOL}:q8_0" and saved[0]["checkpoint"] == str(path)
    assert len(fake_hub.downloads("Q8_0")) == 1
    # Pulled again: the cache has it, nothing is downloaded twice.
    assert (await api.post(f"{API}/pull", body)).code == 200
    assert len(fake_hub.downloads("Q8_0")) == 1


async def test_streamed_pull_reports_monotonic_progress_to_100_percent(
        api, lemonade, hub_cache, server_url, token):
    status, events = await stream_pull(server_url, token, {
        "model_name": "user.vision", "checkpoint": f"{SMOL}:Q4_1",
        "mmproj": "mmproj-SmolLM2-f16.gguf", "labels": ["llm", "vision"]})
    assert status == 200, events
    kinds = [k for k, _ in events]
    assert kinds[-1] == "complete" and set(kinds[:-1]) == {"progress"}
    progress = [d for k, d in events if k == "progress"]
    assert len(progress) >= 4
    done = [p["bytes_downloaded"] for p in progress]
    assert done == sorted(done) and [p["percent"] for p in progress] == sorted(
        p["percent"] for p in progress)
    last = progress[-1]
    size = os.path.getsize(events[-1][1]["path"])
    assert last["percent"] == 100.0 and last["bytes_total"] == last["bytes_downloaded"] == 2 * size
    assert [f["file"] for f in last["files"]] == ["SmolLM2-135M-Instruct-Q4_1.gguf",
                                                  "mmproj-SmolLM2-f16.gguf"]
    assert all(f["bytes_downloaded"] == f["bytes_total"] == size for f in last["files"])
    complete = events[-1][1]
    assert complete["percent"] == 100.0 and len(complete["files"]) == 2
    assert complete["mmproj"] == complete["files"][1]
    assert (await models(api))["user.vision"]["mmproj"] == "mmproj-SmolLM2-f16.gguf"
    # The same pull on the router's event stream (what the dashboard shows).
    reasons = [r for r, _ in pull_events(lemonade, "user.vision")]
    assert reasons[0] == "start" and reasons[-1] == "complete" and "progress" in reasons


async def test_split_gguf_is_pulled_whole_and_loads_and_chats(api, hub_cache, fake_hub,
                                                              split_parts):
    answer = await api.post(f"{API}/pull", {"model_name": "user.split",
                                            "checkpoint": f"{SPLIT}:Q4_1"})
    assert answer.code == 200, answer.body
    files = [Path(p) for p in answer.json["files"]]
    assert [f.name for f in files] == ["SmolLM2-135M-Instruct-Q4_1-00001-of-00002.gguf",
                                       "SmolLM2-135M-Instruct-Q4_1-00002-of-00002.gguf"]
    assert files[0].parent == files[1].parent  # llama-server finds part 2 beside part 1
    assert answer.json["path"] == str(files[0])
    assert len(fake_hub.downloads("00002-of-00002")) == 1
    await api.load("user.split")
    chat = await api.post(f"{API}/chat/completions", chat_body("user.split"))
    assert chat.code == 200, chat.body
    assert chat.json["choices"][0]["message"]["content"]


async def test_a_cut_download_resumes_where_it_stopped(api, hub_cache, fake_hub,
                                                       default_model_file):
    answer = await api.post(f"{API}/pull", {"model_name": "user.flaky",
                                            "checkpoint": f"{FLAKY}:Q4_1"})
    assert answer.code == 200, answer.body
    first, second = fake_hub.downloads("flaky")
    assert first["range"] is None and first["sent"] == CUT_AT
    assert second["range"] == f"bytes={CUT_AT}-" and second["status"] == 206
    size = os.path.getsize(default_model_file)
    assert first["sent"] + second["sent"] == size  # no byte fetched twice
    assert filecmp.cmp(answer.json["path"], default_model_file, shallow=False)


async def test_two_pulls_of_one_checkpoint_share_one_download(api, lemonade, hub_cache,
                                                              fake_hub):
    first = asyncio.ensure_future(api.post(f"{API}/pull", {"model_name": "user.a",
                                                           "checkpoint": f"{SLOW}:Q4_1"}))
    await wait_until(lambda: lemonade.router.catalog.pulls.jobs(), timeout=30,
                     what="the first pull to start")
    second = await api.post(f"{API}/pull", {"model_name": "user.b",
                                            "checkpoint": f"{SLOW}:q4_1"})
    assert second.code == 200, second.body
    assert (await first).code == 200
    assert len(fake_hub.downloads("slow")) == 1
    starts = [e for e in lemonade.router.events.recent() if e.kind == "pull"
              and e.reason == "start" and "slow" in e.detail["checkpoint"]]
    assert len(starts) == 1  # the second pull joined the first one's download
    listed = await models(api)
    assert listed["user.a"]["downloaded"] and listed["user.b"]["downloaded"]
    assert (await first).json["path"] == second.json["path"]


async def test_cancel_midway_registers_nothing_and_leaves_no_partial_file(
        api, lemonade, hub_cache, fake_hub, default_model_file):
    pull = asyncio.ensure_future(api.post(f"{API}/pull", {"model_name": "user.c",
                                                          "checkpoint": f"{SLOW}:Q4_1"}))

    def downloading() -> bool:
        return any(r == "progress" and d["bytes_downloaded"] > 0
                   for r, d in pull_events(lemonade, "user.c"))

    await wait_until(downloading, timeout=30, what="the pull to download bytes")
    cancel = await api.post(f"{API}/pull/cancel", {"model_name": "user.c"})
    assert cancel.code == 200 and cancel.json["cancelled"] == [f"{SLOW}:Q4_1"]
    answer = await pull
    assert answer.code == 409 and answer.error["code"] == "pull_cancelled"
    assert "user.c" not in await models(api)
    await wait_until(lambda: not blobs(hub_cache), timeout=30, what="the partial file to go")
    assert [r for r, _ in pull_events(lemonade, "user.c")][-1] == "cancelled"
    assert fake_hub.downloads("slow")[0]["sent"] < os.path.getsize(default_model_file)
    again = await api.post(f"{API}/pull/cancel", {"model_name": "user.c"})
    assert again.code == 404


# ---------------------------------------------------------------------------- errors
async def test_private_repository_needs_hf_token(api, hub_cache, monkeypatch):
    body = {"model_name": "user.private", "checkpoint": f"{PRIVATE}:Q4_1"}
    answer = await api.post(f"{API}/pull", body)
    assert answer.code == 401, answer.body
    assert answer.error["type"] == "authentication_error"
    assert answer.error["code"] == "hub_unauthorized" and "HF_TOKEN" in answer.error["message"]
    monkeypatch.setenv("HF_TOKEN", "not-the-token")
    answer = await api.post(f"{API}/pull", body)
    assert answer.code == 401 and "HF_TOKEN" in answer.error["message"]
    assert "user.private" not in await models(api)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert (await api.post(f"{API}/pull", body)).code == 200


async def test_unknown_repository_or_file_is_404(api, hub_cache, fake_hub):
    answer = await api.post(f"{API}/pull", {"model_name": "user.x",
                                            "checkpoint": "test/no-such-GGUF:Q4_0"})
    assert answer.code == 404 and answer.error["code"] == "checkpoint_not_found"
    assert "test/no-such-GGUF" in answer.error["message"]
    answer = await api.post(f"{API}/pull", {"model_name": "user.x",
                                            "checkpoint": f"{SMOL}/nope-Q4_0.gguf"})
    assert answer.code == 404 and "nope-Q4_0.gguf" in answer.error["message"]
    assert "user.x" not in await models(api)
    assert not fake_hub.downloads("")


async def test_ambiguous_or_unknown_variant_is_400_listing_the_variants(api, hub_cache,
                                                                        fake_hub):
    answer = await api.post(f"{API}/pull", {"model_name": "user.x",
                                            "checkpoint": f"{SMOL}:Q4_K"})
    assert answer.code == 400 and answer.error["param"] == "checkpoint"
    assert answer.error["variants"] == ["Q4_K_M", "Q4_K_S"]
    assert "ambiguous" in answer.error["message"]
    answer = await api.post(f"{API}/pull", {"model_name": "user.x",
                                            "checkpoint": f"{SMOL}:Q5_0"})
    assert answer.code == 400
    assert answer.error["variants"] == ["Q4_1", "Q4_K_M", "Q4_K_S", "Q8_0"]  # no mmproj
    assert not fake_hub.downloads("") and "user.x" not in await models(api)


async def test_offline_mode_uses_only_the_cache(api, hub_cache, fake_hub, monkeypatch):
    body = {"model_name": "user.off", "checkpoint": f"{SMOL}:Q4_K_S"}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    answer = await api.post(f"{API}/pull", body)
    assert answer.code == 503 and answer.error["code"] == "hub_unavailable"
    assert "HF_HUB_OFFLINE" in answer.error["message"]
    assert not fake_hub.requests()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    online = await api.post(f"{API}/pull", body)
    assert online.code == 200
    fake_hub.reset()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = await api.post(f"{API}/pull", {**body, "model_name": "user.off2"})
    assert offline.code == 200 and offline.json["path"] == online.json["path"]
    assert not fake_hub.requests()


async def test_disk_full_is_507_and_removes_the_partial_file(api, hub_cache, monkeypatch):
    body = {"model_name": "user.full", "checkpoint": f"{SMOL}:Q4_1"}
    with monkeypatch.context() as patch:
        patch.setattr(hub_fetch, "free_bytes", lambda root: 1_000_000)  # checked before downloading
        answer = await api.post(f"{API}/pull", body)
    assert answer.code == 507 and answer.error["code"] == "insufficient_storage"
    assert "disk space" in answer.error["message"]

    def disk_fills_up(fh, chunk: bytes) -> None:  # the write of a chunk fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hub_transfer, "write_chunk", disk_fills_up)
    answer = await api.post(f"{API}/pull", body)
    assert answer.code == 507 and "full" in answer.error["message"]
    assert not blobs(hub_cache)  # the partial download was removed
    assert "user.full" not in await models(api)


async def test_bad_pull_requests_change_nothing(api, hub_cache, fake_hub, default_model_file):
    before = await models(api, show_all=True)
    for body, status, param in [
        ({"model_name": "user.x", "checkpoint": f"{SMOL}:Q4_1", "stream": "yes"}, 400, "stream"),
        ({"model_name": "user.x", "checkpoint": f"{SMOL}:Q4_1", "revision": "x"}, 400,
         "revision"),
        ({"model_name": "user.x", "checkpoint": default_model_file, "mmproj": "m.gguf"}, 400,
         "mmproj"),
        ({"model_name": "user.x", "checkpoint": f"{SMOL}:Q4_1", "mmproj": 3}, 400, "mmproj"),
        ({"model_name": CURATED, "labels": ["llm"]}, 400, "labels"),
        ({"model_name": "No-Such-Model"}, 404, "model_name"),
        ({"model_name": "user.x", "checkpoint": f"{SMOL}:Q4_1", "mmproj": "none.gguf"}, 404,
         "mmproj"),
    ]:
        answer = await api.post(f"{API}/pull", body)
        assert answer.code == status, (body, answer.body)
        assert answer.error["param"] == param, body
    for body, status in [({}, 400), ({"model_name": 5}, 400), ({"checkpoint": "/x"}, 400),
                         ({"model_name": "user.x", "x": 1}, 400), ({"model_name": "user.x"}, 404)]:
        assert (await api.post(f"{API}/pull/cancel", body)).code == status, body
    assert await models(api, show_all=True) == before
    assert not fake_hub.downloads("")


# ---------------------------------------------------------------------------- the catalog
async def test_curated_model_is_listed_and_a_load_pulls_it_first(api, lemonade, hub_cache):
    default = await models(api)
    assert CURATED not in default
    everything = await models(api, show_all=True)
    entry = everything[CURATED]
    assert entry["downloaded"] is False and entry["size"] > 0 and entry["type"] == "llm"
    assert {m["type"] for m in everything.values()} >= {"llm", "embedding", "reranking"}
    assert (await api.get(f"{API}/models", params={"show_all": "maybe"})).code == 400

    await api.load(CURATED)  # not downloaded: pulled first, then loaded
    kinds = [(e.kind, e.reason) for e in lemonade.router.events.recent()
             if e.model == CURATED and e.kind in ("pull", "load")]
    assert kinds[0] == ("pull", "start") and ("pull", "complete") in kinds
    assert kinds[-1] == ("load", "load")
    chat = await api.post(f"{API}/chat/completions", chat_body(CURATED))
    assert chat.code == 200 and chat.json["choices"][0]["message"]["content"]
    listed = (await models(api))[CURATED]
    assert listed["downloaded"] is True and listed["loaded"] is True
    path = lemonade.router.catalog.get(CURATED).checkpoint
    assert Path(path).is_relative_to(hub_cache)

    answer = await api.post(f"{API}/delete", {"model_name": CURATED})
    assert answer.code == 200 and answer.json["deleted_files"] == [path]
    assert not os.path.exists(path) and not blobs(hub_cache)
    assert (await models(api, show_all=True))[CURATED]["downloaded"] is False
    assert (await api.post(f"{API}/delete", {"model_name": CURATED})).code == 404


async def test_pull_of_a_curated_model_by_name(api, hub_cache, fake_hub):
    answer = await api.post(f"{API}/pull", {"model_name": CURATED})
    assert answer.code == 200, answer.body
    repo, files = curated_files(CURATED, "")
    assert answer.json["checkpoint"].startswith(repo)
    assert Path(answer.json["path"]).name == next(iter(files))
    assert (await models(api))[CURATED]["downloaded"] is True


async def test_delete_files_keeps_what_another_model_uses(api, hub_cache, default_model_file):
    for name in ("user.one", "user.two"):
        answer = await api.post(f"{API}/pull", {"model_name": name,
                                                "checkpoint": f"{SMOL}:Q4_K_M"})
        assert answer.code == 200
    path = answer.json["path"]
    answer = await api.post(f"{API}/delete", {"model_name": "user.one", "delete_files": "yes"})
    assert answer.code == 400 and answer.error["param"] == "delete_files"
    answer = await api.post(f"{API}/delete", {"model_name": "user.one", "delete_files": True})
    assert answer.code == 200 and answer.json["deleted_files"] == []
    assert os.path.isfile(path)  # user.two still uses it
    answer = await api.post(f"{API}/delete", {"model_name": "user.two", "delete_files": True})
    assert answer.json["deleted_files"] == [path] and not os.path.exists(path)
    assert not blobs(hub_cache)
    # A GGUF registered from a local path belongs to the user: never deleted.
    await api.pull("user.local", default_model_file)
    answer = await api.post(f"{API}/delete", {"model_name": "user.local", "delete_files": True})
    assert answer.code == 200 and answer.json["deleted_files"] == []
    assert os.path.isfile(default_model_file)


# ---------------------------------------------------------------------------- reranking
async def test_reranking_model_has_its_own_pool_and_route(api, default_model_file,
                                                          default_model_name):
    await api.pull("user.rerank", default_model_file, labels=["reranking"])
    await api.load(default_model_name, pinned=True)
    await api.load("user.rerank")  # its own pool: the pinned llm stays
    health = await api.health()
    loaded = {m["model_name"]: m for m in health["all_models_loaded"]}
    assert set(loaded) == {default_model_name, "user.rerank"}
    assert health["loaded_models"] == {"llm": 1, "reranking": 1}
    assert "--reranking" in psutil.Process(loaded["user.rerank"]["pid"]).cmdline()
    body = {"model": "user.rerank", "query": "What is a cat?",
            "documents": ["A cat is a small furry animal.", "Stocks fell on Monday."]}
    answer = await api.post(f"{API}/reranking", body)
    assert answer.code == 200, answer.body
    results = answer.json["results"]
    assert sorted(r["index"] for r in results) == [0, 1]
    assert all(isinstance(r["relevance_score"], float) for r in results)
    assert answer.json["model"] == "user.rerank"
    for bad, param in [({**body, "model": default_model_name}, "model"),
                       ({**body, "documents": []}, "documents"),
                       ({**body, "query": ""}, "query"), ({**body, "stream": True}, "stream"),
                       ({**body, "top_n": 0}, "top_n")]:
        answer = await api.post(f"{API}/reranking", bad)
        assert answer.code == 400 and answer.error["param"] == param, bad
    chat = await api.post(f"{API}/chat/completions", chat_body("user.rerank"))
    assert chat.code == 400 and f"{API}/reranking" in chat.error["message"]
    assert (await api.health())["loaded_models"] == {"llm": 1, "reranking": 1}
