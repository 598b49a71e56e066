"""Remote models (recipe "remote") through a real Jupyter server: two real ``llama-server``
processes started by the test outside the router stand in for the replicas of a serving engine,
each with its own API key in an environment variable of the server.

Chat and streaming with the official ``openai`` client, names rewritten both ways; failover
when a replica is killed mid-run (every non-streaming request answered, the replica marked down,
then up again once restarted); both down → 502 ``upstream_unreachable``; registration of the
upstream's model list; what ``/pull`` refuses; and that no key shows anywhere we answer."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.helpers.http import API
from tests.helpers.polling import wait_until
from tests.helpers.replicas import ALIAS, ReplicaServer, start_replicas

KEY_ENVS = ("LEMONADE_REMOTE_KEY_A", "LEMONADE_REMOTE_KEY_B")
NAME = "user.remote"


@pytest.fixture
def replicas(llama_server_path, default_model_file, tmp_path, monkeypatch):
    """Two replicas; their keys in the server's environment (the fixture server runs in the
    test process)."""
    servers = start_replicas(llama_server_path, default_model_file, tmp_path)
    for env, server in zip(KEY_ENVS, servers):
        monkeypatch.setenv(env, server.api_key)
    yield servers
    for server in servers:
        server.kill()


def pull_body(replicas: list[ReplicaServer], **extra) -> dict:
    return {"model_name": NAME, "recipe": "remote", "upstream_model": ALIAS,
            "base_urls": [r.base_url for r in replicas], "api_key_env": list(KEY_ENVS),
            **extra}


async def register(api, replicas) -> dict:
    answer = await api.post(f"{API}/pull", pull_body(replicas))
    assert answer.code == 200, answer.body
    return answer.json


async def remote_entry(api, name: str = NAME) -> dict:
    health = await api.health()
    return {m["model_name"]: m for m in health["remote_models"]}[name]


async def replica_states(api) -> dict[str, str]:
    return {r["base_url"]: r["state"] for r in (await remote_entry(api))["replicas"]}


async def restart(replica: ReplicaServer) -> None:
    """Start a killed replica again on its port; wait (without blocking the loop) for it."""
    replica.spawn()

    async def ready() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as c:
                return (await c.get(f"http://127.0.0.1:{replica.port}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_until(ready, timeout=120, what="the restarted replica")


async def events_text(server_url: str, token: str) -> str:
    """The event stream's recent history (what a new subscriber gets at once), as text."""
    text = b""
    async with httpx.AsyncClient(timeout=30) as c, c.stream(
            "GET", f"{server_url}{API}/events", headers={"Authorization": f"token {token}"},
    ) as resp:
        assert resp.status_code == 200
        chunks = resp.aiter_raw()
        while True:
            try:
                text += await asyncio.wait_for(chunks.__anext__(), 1.0)
            except (asyncio.TimeoutError, StopAsyncIteration):
                return text.decode()


def assert_no_key(text: str, replicas: list[ReplicaServer]) -> None:
    for r in replicas:
        assert r.api_key not in text


async def test_chat_and_stream_through_the_router_with_names_rewritten(api, client, replicas):
    registered = await register(api, replicas)
    assert [m["model_name"] for m in registered["registered"]] == [NAME]
    assert registered["registered"][0]["status"] == "ready"

    reply = await client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8)
    assert reply.model == NAME  # the upstream answered as ALIAS
    assert reply.choices[0].message.content

    stream = await client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "Count to twenty."}], max_tokens=16,
        stream=True, extra_body={"ignore_eos": True})
    chunks = [chunk async for chunk in stream]
    assert len(chunks) >= 3
    assert {c.model for c in chunks} == {NAME}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()

    completion = await client.completions.create(model=NAME, prompt="Once upon", max_tokens=4)
    assert completion.model == NAME and completion.choices[0].text

    # The other OpenAI-style routes go to the upstream's /v1 too; llama.cpp's own are refused.
    response = await client.responses.create(model=NAME, input="Say hi.", max_output_tokens=8)
    assert response.model == NAME and response.output_text
    tokenize = await api.post(f"{API}/tokenize", {"model": NAME, "content": "hi"})
    assert tokenize.code == 400 and "only the OpenAI-style routes" in tokenize.error["message"]

    # Both replicas served: among equally busy replicas the least used one goes first, so
    # sequential requests alternate; every request is counted per replica.
    metrics = (await api.get("lemonade/metrics")).body.decode()
    for r in replicas:
        assert (f'lemonade_remote_requests_total{{model="user.remote",outcome="ok",'
                f'replica="{r.base_url}"}}') in metrics
        assert f'lemonade_remote_up{{model="user.remote",replica="{r.base_url}"}} 1.0' in metrics


async def test_remote_models_take_no_slot_and_cannot_be_pinned(api, replicas, default_model_name):
    await register(api, replicas)
    models = {m["id"]: m for m in (await api.get(f"{API}/models")).json["data"]}
    assert models[NAME]["recipe"] == "remote" and models[NAME]["status"] == "ready"
    assert models[NAME]["replicas"] == [r.base_url for r in replicas]

    pin = await api.post("lemonade/internal/pin", {"model_name": NAME, "pinned": True})
    assert pin.code == 400 and "remote model" in pin.error["message"]
    assert "not loaded here" in pin.error["message"]
    load_pinned = await api.post(f"{API}/load", {"model_name": NAME, "pinned": True})
    assert load_pinned.code == 400 and "remote model" in load_pinned.error["message"]
    unload = await api.post(f"{API}/unload", {"model_name": NAME})
    assert unload.code == 400

    load = await api.load(NAME)  # probes, takes no slot
    assert load["recipe"] == "remote" and load["remote"]["status"] == "ready"
    health = await api.health()
    assert health["all_models_loaded"] == []
    assert health["loaded_models"]["llm"] == 0

    # A local model still gets its slot beside it.
    await api.load(default_model_name)
    assert [m["model_name"] for m in (await api.health())["all_models_loaded"]] == [
        default_model_name]

    deleted = await api.post(f"{API}/delete", {"model_name": NAME})
    assert deleted.code == 200 and deleted.json["deleted"] == [NAME]
    assert (await api.health())["remote_models"] == []
    gone = await api.post(f"{API}/chat/completions",
                          {"model": NAME, "messages": [{"role": "user", "content": "hi"}]})
    assert gone.code == 404


async def test_kill_one_replica_mid_run_every_request_is_answered(api, client, replicas,
                                                                  server_url, token):
    await register(api, replicas)
    messages = [{"role": "user", "content": "Say one word."}]

    async def ask() -> str:
        reply = await client.chat.completions.create(model=NAME, messages=messages,
                                                     max_tokens=2)
        return reply.model

    first = asyncio.gather(*(ask() for _ in range(4)))
    await asyncio.sleep(0)  # the requests are on their way when the replica dies
    replicas[0].kill()
    answers = [*await first]
    for _ in range(6):  # and after: each goes to the live replica, or fails over to it
        answers.append(await ask())
    assert answers == [NAME] * 10
    states = await wait_until(
        lambda: _states_if(api, {replicas[0].base_url: "down", replicas[1].base_url: "up"}),
        what="the killed replica marked down")
    assert states
    events = await events_text(server_url, token)
    assert "event: unreachable" in events and replicas[0].base_url in events

    await restart(replicas[0])
    await wait_until(
        lambda: _states_if(api, {replicas[0].base_url: "up", replicas[1].base_url: "up"}),
        what="the restarted replica marked up again", timeout=90)
    events = await events_text(server_url, token)
    assert "event: reachable" in events


async def _states_if(api, expected: dict[str, str]) -> bool:
    return await replica_states(api) == expected


async def test_both_replicas_down_is_a_502_that_says_so(api, client, replicas):
    await register(api, replicas)
    for r in replicas:
        r.kill()
    answer = await api.post(f"{API}/chat/completions",
                            {"model": NAME, "messages": [{"role": "user", "content": "hi"}]})
    assert answer.code == 502
    error = answer.error
    assert error["code"] == "upstream_unreachable"
    assert "No replica of remote model 'user.remote' could be reached" in error["message"]
    for r in replicas:
        assert r.base_url in error["message"]
    streamed = await api.post(f"{API}/chat/completions",
                              {"model": NAME, "stream": True,
                               "messages": [{"role": "user", "content": "hi"}]})
    assert stream_error(streamed)["code"] == "upstream_unreachable"
    await wait_until(lambda: _entry_status(api, "unreachable"), what="model unreachable")
    load = await api.post(f"{API}/load", {"model_name": NAME})
    assert load.code == 502 and load.error["code"] == "upstream_unreachable"
    assert_no_key(answer.body.decode() + streamed.body.decode() + load.body.decode(), replicas)


def stream_error(answer) -> dict:
    """The error of a stream that failed: the envelope with its status before any byte, or the
    SSE error event after ``: ping`` comments (the test server pings every 0.05 s, which a
    loaded machine may reach while the replicas are tried)."""
    if answer.code != 200:
        assert answer.code == 502, answer.body
        return answer.error
    events = [e for e in answer.body.decode().split("\n\n") if e.startswith("data: ")]
    return json.loads(events[-1][6:])["error"]


async def _entry_status(api, status: str) -> bool:
    return (await remote_entry(api))["status"] == status


async def test_register_every_model_the_upstream_lists(api, client, replicas):
    answer = await api.post(f"{API}/pull", {
        "model_name": "user.cluster", "recipe": "remote", "base_url": replicas[0].base_url,
        "api_key_env": KEY_ENVS[0], "labels": ["llm", "remote"]})
    assert answer.code == 200, answer.body
    name = f"user.cluster/{ALIAS}"
    assert [m["model_name"] for m in answer.json["registered"]] == [name]
    reply = await client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert reply.model == name
    models = {m["id"] for m in (await api.get(f"{API}/models")).json["data"]}
    assert name in models
    # Deleting the list's name removes every model registered under it.
    deleted = await api.post(f"{API}/delete", {"model_name": "user.cluster"})
    assert deleted.code == 200 and deleted.json["deleted"] == [name]


async def test_the_key_never_shows_in_answers_events_or_metrics(api, client, replicas,
                                                                lemonade_data_dir, server_url,
                                                                token):
    await register(api, replicas)
    await client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    replicas[1].kill()
    for _ in range(2):
        await client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    texts = [
        (await api.get(f"{API}/health")).body.decode(),
        (await api.get(f"{API}/models")).body.decode(),
        await events_text(server_url, token),
        (await api.get("lemonade/metrics")).body.decode(),
        (lemonade_data_dir / "remote_models.json").read_text(),
    ]
    assert KEY_ENVS[1] in texts[0]  # the variable's name is shown, its value never
    for text in texts:
        assert_no_key(text, replicas)
    assert json.loads(texts[4])[0]["replicas"][1] == {"base_url": replicas[1].base_url,
                                                      "api_key_env": KEY_ENVS[1]}


@pytest.mark.parametrize("change, param, message", [
    ({"base_url": "127.0.0.1:8000/v1"}, "base_url", "http:// or https://"),
    ({"base_url": "file:///etc/passwd"}, "base_url", "http:// or https://"),
    ({"base_url": "https://user:secret@vllm.example/v1"}, "base_url", "credentials"),
    ({"api_key_env": "LEMONADE_REMOTE_KEY_NOT_SET"}, "api_key_env",
     "is not set on the Jupyter server"),
    ({"base_urls": ["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"],
      "api_key_env": [KEY_ENVS[0]]}, "api_key_env", "one name (or null) per entry"),
    ({"model_name": "remote"}, "model_name", "user.NAME"),
    ({"upstream_model": ""}, "upstream_model", "upstream's model name"),
    ({"checkpoint": "/x.gguf"}, "checkpoint", "Unknown parameter"),
    ({"base_urls": []}, "base_urls", "list of 1 to"),
], ids=["no-scheme", "file-url", "credentials", "missing-env", "env-count", "bad-name",
        "empty-upstream", "unknown-key", "no-replica"])
async def test_bad_pull_bodies_are_400s_that_register_nothing(api, monkeypatch, lemonade_data_dir,
                                                              change, param, message):
    monkeypatch.setenv(KEY_ENVS[0], "sk-some-key")
    body = {"model_name": NAME, "recipe": "remote", "upstream_model": "m",
            "base_url": "http://127.0.0.1:9/v1", "api_key_env": KEY_ENVS[0], **change}
    if "base_urls" in change:
        body.pop("base_url")
    answer = await api.post(f"{API}/pull", body)
    assert answer.code == 400, answer.body
    assert answer.error["param"] == param and message in answer.error["message"]
    assert "sk-some-key" not in answer.body.decode()
    assert (await api.health())["remote_models"] == []
    assert NAME not in {m["id"] for m in (await api.get(f"{API}/models")).json["data"]}
    assert not (lemonade_data_dir / "remote_models.json").exists()


def test_the_key_never_reaches_the_jupyter_log(llama_server_path, default_model_file, tmp_path):
    """A Jupyter server of its own (``--debug``: every request and decision logged) serves a
    remote model through a pull, chat, a stream, a replica's death and failed requests; its
    log then holds the replicas' URLs and failures, and neither key."""
    from tests.helpers.jupyter import JupyterProcess

    servers = start_replicas(llama_server_path, default_model_file, tmp_path)
    jupyter = JupyterProcess(tmp_path / "jupyter", extra_args=("--debug",),
                             lemonade={"remote_probe_backoff_max_s": 1.0},
                             env={env: s.api_key for env, s in zip(KEY_ENVS, servers)})
    try:
        jupyter.start()
        with jupyter.client(timeout=60) as c:
            assert c.post(f"{API}/pull", json=pull_body(servers)).status_code == 200
            chat = {"model": NAME, "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 2}
            assert c.post(f"{API}/chat/completions", json=chat).status_code == 200
            streamed = c.post(f"{API}/chat/completions", json={**chat, "stream": True})
            assert streamed.status_code == 200 and "data: " in streamed.text
            servers[0].kill()
            for _ in range(3):
                assert c.post(f"{API}/chat/completions", json=chat).status_code == 200
            servers[1].kill()
            failed = c.post(f"{API}/chat/completions", json=chat)
            assert failed.status_code == 502
            assert c.post(f"{API}/load", json={"model_name": NAME}).status_code == 502
    finally:
        jupyter.stop()
        for s in servers:
            s.kill()
    log = jupyter.log_text()
    assert servers[0].base_url in log and "is down" in log  # the log saw it all
    assert_no_key(log, servers)
