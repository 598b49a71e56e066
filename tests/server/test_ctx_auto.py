"""``ctx_size: auto`` by default, and load options carried by auto-loading inference requests,
through a real Jupyter server and the real default model (SmolLM2-135M, trained with 8192).

What the backend really runs with is read from llama-server itself (``/props``:
``default_generation_settings.n_ctx``) and from its command line, not only from ``/health``.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import psutil

from lemonade_jupyter.core.catalog import DEFAULT_MODEL
from lemonade_jupyter.core.gguf_facts import read_facts

from tests.helpers.http import API, chat_body

HEADER = "X-Lemonade-Load-Options"
DEADLINE_S = 30.0


async def served_n_ctx(lemonade) -> int:
    """``n_ctx`` as the backend reports it (its key from the router: only the router has it)."""
    backend = lemonade.router.get_live(DEFAULT_MODEL).backend
    async with httpx.AsyncClient(timeout=10) as http:
        props = await http.get(f"{backend.url}/props", headers=backend.auth_headers())
    assert props.status_code == 200, props.text
    return int(props.json()["default_generation_settings"]["n_ctx"])


def argv_ctx(pid: int) -> str:
    argv = psutil.Process(pid).cmdline()
    return argv[argv.index("--ctx-size") + 1]


async def entry(api) -> dict:
    [found] = (await api.health())["all_models_loaded"]
    return found


async def load_events(server_url: str, token: str, model: str, count: int) -> list[dict]:
    """The first ``count`` load/reload events of ``model`` on the event stream (its history
    arrives at once on connect); fails after a deadline."""
    found: list[dict] = []
    deadline = time.monotonic() + DEADLINE_S
    async with httpx.AsyncClient(timeout=DEADLINE_S) as c, c.stream(
            "GET", f"{server_url}{API}/events", headers={"Authorization": f"token {token}"},
    ) as resp:
        assert resp.status_code == 200
        lines = resp.aiter_lines()
        while len(found) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"only {found} of {count} load events for {model}"
            line = await asyncio.wait_for(lines.__anext__(), left)
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if event.get("model") == model and event.get("kind") in ("load", "reload"):
                found.append(event)
    return found


async def test_ctx_size_auto_is_the_default_and_a_number_is_that_number(
    api, lemonade, server_url, token, default_model_file
):
    trained = read_facts(default_model_file).context_length
    assert trained == 8192  # the default model's header: what auto gives when it fits

    answer = await api.load(DEFAULT_MODEL)  # no ctx_size
    assert (answer["ctx_size"], answer["ctx_size_requested"]) == (trained, "auto")
    shown = await entry(api)
    assert (shown["ctx_size"], shown["ctx_size_requested"]) == (trained, "auto")
    assert "ctx_size" not in shown["recipe_options"]  # nothing stored: every load resolves it
    assert await served_n_ctx(lemonade) == trained
    assert argv_ctx(shown["pid"]) == str(trained)

    answer = await api.load(DEFAULT_MODEL, ctx_size=1024)  # a reload with exactly 1024
    assert (answer["ctx_size"], answer["ctx_size_requested"]) == (1024, 1024)
    shown = await entry(api)
    assert (shown["ctx_size"], shown["ctx_size_requested"]) == (1024, 1024)
    assert await served_n_ctx(lemonade) == 1024

    answer = await api.load(DEFAULT_MODEL, ctx_size="auto")  # back to the trained context
    assert (answer["ctx_size"], answer["ctx_size_requested"]) == (trained, "auto")
    assert await served_n_ctx(lemonade) == trained

    first, second, third = await load_events(server_url, token, DEFAULT_MODEL, 3)
    assert first["kind"] == "load"
    assert [(e["detail"]["ctx_size"], e["detail"]["ctx_size_requested"])
            for e in (first, second, third)] == [(trained, "auto"), (1024, 1024),
                                                 (trained, "auto")]


async def test_an_auto_loading_chat_request_applies_its_ctx_size_and_never_reloads(
    api, lemonade
):
    body = {**chat_body(DEFAULT_MODEL, max_tokens=2), "ctx_size": 1024}
    answer = await api.post(f"{API}/chat/completions", body)
    assert answer.code == 200, answer.body
    assert json.loads(answer.headers[HEADER]) == {"ctx_size": 1024}
    shown = await entry(api)
    assert (shown["ctx_size"], shown["ctx_size_requested"]) == (1024, 1024)
    assert await served_n_ctx(lemonade) == 1024
    pid = shown["pid"]
    assert argv_ctx(pid) == "1024"

    # Loaded already: another ctx_size does not reload it; the answer says what it runs with.
    for stream in (False, True):
        other = {**chat_body(DEFAULT_MODEL, max_tokens=2, stream=stream), "ctx_size": 4096,
                 "llamacpp_args": ""}
        answer = await api.post(f"{API}/chat/completions", other)
        assert answer.code == 200, answer.body
        assert json.loads(answer.headers[HEADER]) == {"ctx_size": 1024, "llamacpp_args": ""}
    shown = await entry(api)
    assert shown["pid"] == pid and shown["ctx_size"] == 1024
    assert await served_n_ctx(lemonade) == 1024
    assert not [e for e in lemonade.router.events.recent() if e.kind == "reload"]

    # A request without load options has no such header.
    answer = await api.post(f"{API}/chat/completions", chat_body(DEFAULT_MODEL, max_tokens=2))
    assert answer.code == 200 and HEADER not in answer.headers


async def test_bad_load_options_on_an_inference_request_are_a_400_that_loads_nothing(api):
    for extra, param in (({"ctx_size": "big"}, "ctx_size"), ({"ctx_size": 8}, "ctx_size"),
                         ({"ctx_size": True}, "ctx_size"),
                         ({"llamacpp_args": "--port 1"}, "llamacpp_args"),
                         ({"llamacpp_args": 7}, "llamacpp_args")):
        answer = await api.post(f"{API}/chat/completions",
                                {**chat_body(DEFAULT_MODEL, max_tokens=2), **extra})
        assert answer.code == 400, (extra, answer.body)
        assert answer.error["param"] == param
    assert (await api.health())["all_models_loaded"] == []


def test_load_options_leave_the_body_and_only_the_allowlisted_ones():
    from lemonade_jupyter.core.engine_flags import STRICT
    from lemonade_jupyter.server.request_load_options import take_load_options

    body = {**chat_body(DEFAULT_MODEL), "ctx_size": "auto", "llamacpp_args": "--flash-attn on",
            "gpu_layers": 0, "temperature": 0}
    carried, rest = take_load_options(body, STRICT)
    assert carried.given == {"ctx_size", "llamacpp_args"}
    assert carried.options.ctx_size is None and carried.options.llamacpp_args == "--flash-attn on"
    # What the engine gets: the body without them; anything else is left as it was sent.
    assert rest == {**chat_body(DEFAULT_MODEL), "gpu_layers": 0, "temperature": 0}
    carried, rest = take_load_options(chat_body(DEFAULT_MODEL), STRICT)
    assert not carried.given and rest == chat_body(DEFAULT_MODEL)
