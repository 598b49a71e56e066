"""What a remote model may point at and which key variables it may name, through a real
Jupyter server with the extension and a loopback upstream (``tests/fakes/fake_openai_upstream``).

The attacks these rules stop, replayed: a ``base_url`` with an empty ``?`` or ``#`` that made
the router's route a query string, a ``base_url`` pointing back at the Jupyter server with its
own token as the key, and a key variable of the server (``HF_TOKEN``...) lent to an upstream
that echoes it. Each refusal is a 400 that registers nothing and sends nothing; the admin's
settings (``remote_allowed_hosts``, ``remote_denied_hosts``, ``remote_key_envs``) work both ways.
"""

from __future__ import annotations

import ipaddress
import json
import socket

import pytest
from aiohttp.abc import AbstractResolver

from lemonade_jupyter.core.remote_rules import HostRules
from lemonade_jupyter.server import remote_hosts
from tests.fakes.fake_openai_upstream import FakeUpstream
from tests.helpers.http import API

NAME = "user.rules"
LENT = "LEMONADE_REMOTE_KEY_RULES"
SECRET = "sk-server-secret-must-stay-home"


@pytest.fixture
def fake(jp_asyncio_loop):
    """A loopback upstream that takes any key and records every request's Authorization."""
    server = jp_asyncio_loop.run_until_complete(FakeUpstream().start())
    yield server
    jp_asyncio_loop.run_until_complete(server.stop())


def body(base_url: str, **extra) -> dict:
    return {"model_name": NAME, "recipe": "remote", "base_url": base_url,
            "upstream_model": "echo-key", **extra}


async def assert_refused(api, lemonade_data_dir, payload: dict, param: str,
                         message: str = "") -> dict:
    """``payload`` is a 400 on ``param`` and nothing is registered; the error object."""
    before = _state_file(lemonade_data_dir)
    answer = await api.post(f"{API}/pull", payload)
    assert answer.code == 400, answer.body
    error = answer.error
    assert error["param"] == param, error
    assert message in error["message"], error
    assert SECRET not in answer.body.decode()
    assert (await api.health())["remote_models"] == []
    assert _state_file(lemonade_data_dir) == before
    return error


def _state_file(data_dir) -> str | None:
    path = data_dir / "remote_models.json"
    return path.read_text() if path.exists() else None


# ----------------------------------------------------------------------------- the URL
@pytest.mark.parametrize("suffix", ["?", "#", "/?", "?x=1", "#frag", "/v1?#"])
async def test_a_query_or_fragment_of_any_length_is_refused(api, lemonade_data_dir, fake,
                                                            suffix):
    """The replay: an empty ``?`` turned ``{base_url}/chat/completions`` into a query, so the
    caller picked the whole path on the target."""
    await assert_refused(api, lemonade_data_dir, body(fake.base_url + suffix), "base_url",
                         "must not have a query or fragment")
    assert fake.seen == []


async def test_the_router_uses_the_rebuilt_url(api, fake):
    answer = await api.post(f"{API}/pull", body(
        f"HTTP://127.0.0.1:{fake.port}/v1//", upstream_model="ok"))
    assert answer.code == 200, answer.body
    replica = answer.json["registered"][0]["replicas"][0]
    assert replica["base_url"] == f"http://127.0.0.1:{fake.port}/v1"
    chat = await api.post(f"{API}/chat/completions", {
        "model": NAME, "messages": [{"role": "user", "content": "hi"}]})
    assert chat.code == 200, chat.body
    assert ("/v1/chat/completions", None) in fake.seen


# ----------------------------------------------------------------------------- this server
def _own_urls(port: int) -> list[str]:
    return [f"http://127.0.0.1:{port}/api", f"http://localhost:{port}/api",
            f"http://127.0.0.2:{port}/api", f"http://[::1]:{port}/api",
            f"http://0.0.0.0:{port}/api", f"http://[::ffff:127.0.0.1]:{port}/api",
            f"http://{socket.gethostname()}:{port}/api", f"http://LocalHost.:{port}/api"]


async def test_this_jupyter_server_is_refused_as_an_upstream(api, lemonade_data_dir,
                                                             jp_http_port, fake):
    for url in _own_urls(jp_http_port):
        if url.startswith("http://LocalHost."):  # a final dot is no plain host name
            await assert_refused(api, lemonade_data_dir, body(url), "base_url", "host")
            continue
        await assert_refused(api, lemonade_data_dir, body(url), "base_url",
                             "this Jupyter server itself")
    # The same loopback host on another port (a vLLM beside the notebook) stays allowed.
    answer = await api.post(f"{API}/pull", body(fake.base_url, upstream_model="ok"))
    assert answer.code == 200, answer.body


async def test_the_jupyter_token_replay_starts_no_kernel(api, lemonade_data_dir, jp_http_port,
                                                         jp_base_url, token, monkeypatch):
    """The replay: the server's own API as the upstream, its own token as the key, then a
    chat request that the router would have posted to ``{base_url}/api/kernels``."""
    monkeypatch.setenv("JUPYTER_TOKEN", token)
    own = f"http://127.0.0.1:{jp_http_port}{jp_base_url}api/kernels?"
    for url in (own, own.rstrip("?"), f"http://127.0.0.1:{jp_http_port}/api/kernels"):
        await assert_refused(api, lemonade_data_dir, body(url, api_key_env="JUPYTER_TOKEN"),
                             "base_url" if "%" in url or "?" in url else "api_key_env")
    await assert_refused(api, lemonade_data_dir,
                         body(f"http://127.0.0.1:{jp_http_port}/api/kernels"), "base_url",
                         "this Jupyter server itself")
    chat = await api.post(f"{API}/chat/completions", {
        "model": NAME, "messages": [{"role": "user", "content": "hi"}]})
    assert chat.code == 404, chat.body
    kernels = await api.get("api/kernels")
    assert kernels.code == 200 and kernels.json == []


# ----------------------------------------------------------------------------- key variables
CREDENTIALS = ["JUPYTER_TOKEN", "JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "HF_TOKEN",
               "LEMONADE_JUPYTER_TOKEN", "MY_OWN_SECRET"]


@pytest.mark.parametrize("variable", CREDENTIALS)
async def test_a_server_variable_never_reaches_an_echoing_upstream(api, lemonade_data_dir, fake,
                                                                   monkeypatch, variable):
    monkeypatch.setenv(variable, SECRET)
    for payload in (body(fake.base_url, api_key_env=variable),
                    {**body(fake.base_url, api_key_env=variable), "upstream_model": None}):
        await assert_refused(api, lemonade_data_dir, payload, "api_key_env",
                             "lends to remote models")
    assert fake.seen == []  # no probe, no model list, no chat: the key went nowhere


@pytest.mark.parametrize("lemonade_traits", [
    {"remote_key_envs": ["HF_TOKEN", "JUPYTER_TOKEN", "JPY_*", "LEMONADE_REMOTE_KEY_*"]},
], indirect=True)
async def test_an_admin_cannot_lend_the_servers_own_credentials(api, lemonade_data_dir, fake,
                                                                monkeypatch):
    for variable in ("HF_TOKEN", "JUPYTER_TOKEN", "JPY_API_TOKEN"):
        monkeypatch.setenv(variable, SECRET)
        await assert_refused(api, lemonade_data_dir, body(fake.base_url, api_key_env=variable),
                             "api_key_env", "lends to remote models")
    assert fake.seen == []


async def test_a_variable_not_lent_gets_the_same_answer_set_or_not(api, lemonade_data_dir,
                                                                   fake, monkeypatch):
    """No existence oracle: the answer is byte for byte the same."""
    monkeypatch.setenv("SOME_SERVER_VARIABLE", SECRET)
    monkeypatch.delenv("NO_SUCH_SERVER_VARIABLE", raising=False)
    answers = []
    for variable in ("SOME_SERVER_VARIABLE", "NO_SUCH_SERVER_VARIABLE", "HF_TOKEN"):
        await assert_refused(api, lemonade_data_dir, body(fake.base_url, api_key_env=variable),
                             "api_key_env")
        answers.append((await api.post(f"{API}/pull",
                                       body(fake.base_url, api_key_env=variable))).body)
    assert answers[0] == answers[1] == answers[2]
    assert b"SOME_SERVER_VARIABLE" not in answers[0]


async def test_a_lent_variable_unset_at_request_time_names_only_itself(api, fake, monkeypatch):
    monkeypatch.setenv(LENT, "sk-lent")
    monkeypatch.setenv("LEMONADE_REMOTE_KEY_OTHER", "sk-other")
    answer = await api.post(f"{API}/pull", body(fake.base_url, upstream_model="ok",
                                                api_key_env=LENT))
    assert answer.code == 200, answer.body
    monkeypatch.delenv(LENT)
    chat = await api.post(f"{API}/chat/completions", {
        "model": NAME, "messages": [{"role": "user", "content": "hi"}]})
    assert chat.code == 502, chat.body
    message = chat.error["message"]
    assert f"'{LENT}'" in message and "is not set" in message
    assert "LEMONADE_REMOTE_KEY_OTHER" not in message and "sk-" not in message


# ----------------------------------------------------------------------------- admin settings
@pytest.mark.parametrize("lemonade_traits", [{"remote_key_envs": ["VLLM_KEY"]}], indirect=True)
async def test_remote_key_envs_lends_exactly_what_it_lists(api, lemonade_data_dir, fake,
                                                           monkeypatch):
    monkeypatch.setenv("VLLM_KEY", "sk-vllm")
    monkeypatch.setenv(LENT, "sk-lent")  # the default prefix is no longer lent
    await assert_refused(api, lemonade_data_dir, body(fake.base_url, api_key_env=LENT),
                         "api_key_env", "lends to remote models")
    answer = await api.post(f"{API}/pull", body(fake.base_url, upstream_model="ok",
                                                api_key_env="VLLM_KEY"))
    assert answer.code == 200, answer.body
    assert ("/v1/models", "Bearer sk-vllm") in fake.seen
    assert not any(auth == "Bearer sk-lent" for _path, auth in fake.seen)


@pytest.mark.parametrize("lemonade_traits", [{"remote_allowed_hosts": ["127.0.0.1"]}],
                         indirect=True)
async def test_remote_allowed_hosts_is_the_whole_list_and_lifts_the_own_refusal(
        api, lemonade_data_dir, jp_http_port, fake):
    await assert_refused(api, lemonade_data_dir, body(f"http://127.0.0.2:{fake.port}/v1"),
                         "base_url", "not in the server's remote_allowed_hosts")
    answer = await api.post(f"{API}/pull", body(f"http://127.0.0.1:{jp_http_port}/v1"))
    assert answer.code == 200, answer.body  # an admin's choice: allowed by name
    answer = await api.post(f"{API}/pull", body(fake.base_url, model_name="user.other"))
    assert answer.code == 200, answer.body


@pytest.mark.parametrize("lemonade_traits", [{"remote_denied_hosts": ["127.0.0.0/8"]}],
                         indirect=True)
async def test_remote_denied_hosts_refuses_by_address_and_by_name(api, lemonade_data_dir, fake):
    for url in (fake.base_url, f"http://localhost:{fake.port}/v1"):
        await assert_refused(api, lemonade_data_dir, body(url), "base_url",
                             "remote_denied_hosts")
    assert fake.seen == []


@pytest.mark.parametrize("lemonade_traits", [{"remote_denied_hosts": ["127.0.0.0/8", "::1"]}],
                         indirect=True)
async def test_a_name_that_resolves_to_a_refused_address_when_connecting_is_refused(
        api, fake, monkeypatch):
    """DNS rebinding: the name resolved to a public address when the model was registered,
    and resolves to a refused one when the router connects. The request fails as an
    unreachable replica, naming the rule, and does not reach the upstream."""
    real = remote_hosts.resolve

    async def public_then(host: str) -> list:
        return [ipaddress.ip_address("93.184.216.34")] if host == "localhost" else await real(host)

    monkeypatch.setattr(remote_hosts, "resolve", public_then)
    answer = await api.post(f"{API}/pull", body(f"http://localhost:{fake.port}/v1",
                                                upstream_model="ok"))
    assert answer.code == 200, answer.body  # registered: "localhost" looked public then
    probed = list(fake.seen)  # the registration's probe (GET /models) is not this check's
    chat = await api.post(f"{API}/chat/completions", {
        "model": NAME, "messages": [{"role": "user", "content": "hi"}]})
    assert chat.code == 502, chat.body
    assert "refused when connecting" in chat.error["message"]
    assert "remote_denied_hosts" in chat.error["message"]
    assert fake.seen == probed  # the chat never reached it


# ----------------------------------------------------------------------------- names
@pytest.mark.parametrize("change, param, message", [
    ({"model_name": NAME + "\n"}, "model_name", "must look like 'user.NAME'"),
    ({"model_name": NAME + "\r"}, "model_name", "must look like 'user.NAME'"),
    ({"upstream_model": "ok\n"}, "upstream_model", "the upstream's model name"),
    ({"labels": ["llm\n"]}, "labels", "list of short strings"),
    ({"labels": ["llm\r"]}, "labels", "list of short strings"),
    ({"api_key_env": LENT + "\n"}, "api_key_env", "must name an environment variable"),
    ({"api_key_env": LENT + "\r"}, "api_key_env", "must name an environment variable"),
    ({"base_url": "http://127.0.0.1:9/v1\n"}, "base_url", "printable ASCII"),
], ids=["name-lf", "name-cr", "upstream-lf", "label-lf", "label-cr", "env-lf", "env-cr",
        "url-lf"])
async def test_a_trailing_newline_is_no_name(api, lemonade_data_dir, fake, monkeypatch,
                                             change, param, message):
    monkeypatch.setenv(LENT, "sk-lent")
    await assert_refused(api, lemonade_data_dir,
                         {**body(fake.base_url, upstream_model="ok", api_key_env=LENT),
                          **change}, param, message)
    assert fake.seen == []


# ----------------------------------------------------------------------------- state file
@pytest.fixture
def stale_state(lemonade_data_dir, jp_http_port):
    """A state file from before the rules: a key variable not lent, this server's own port,
    one of the server's own tokens, and one model that still passes."""
    def entry(name: str, base_url: str, env: str | None) -> dict:
        return {"model_name": name, "recipe": "remote", "upstream_model": "m",
                "replicas": [{"base_url": base_url, "api_key_env": env}], "labels": ["llm"]}

    (lemonade_data_dir / "remote_models.json").write_text(json.dumps([
        entry("user.old-key", "http://127.0.0.1:9/v1", "OLD_KEY_VARIABLE"),
        entry("user.old-self", f"http://127.0.0.1:{jp_http_port}/v1", None),
        entry("user.old-token", "http://127.0.0.1:9/v1", "JPY_API_TOKEN"),
        entry("user.fine", "http://127.0.0.1:9/v1", LENT),
    ]))


@pytest.mark.parametrize("lemonade_traits", [
    {"remote_key_envs": ["LEMONADE_REMOTE_KEY_*", "JPY_*"]},  # listing JPY_* lends none of them
], indirect=True)
async def test_models_kept_from_looser_rules_are_dropped_at_start(stale_state, api,
                                                                  lemonade_data_dir):
    health = await api.health()
    assert [m["model_name"] for m in health["remote_models"]] == ["user.fine"]
    notes = " ".join(health["notes"])
    for name in ("user.old-key", "user.old-self", "user.old-token"):
        assert f"'{name}' was dropped" in notes
    kept = json.loads((lemonade_data_dir / "remote_models.json").read_text())
    assert [e["model_name"] for e in kept] == ["user.fine"]


# ----------------------------------------------------------------------------- embedded router
def test_the_embedded_router_refuses_its_own_port(tmp_path):
    """The embedded router (no Jupyter server) knows its own port as well."""
    import httpx

    from lemonade_jupyter.server.embedded import EmbeddedServer

    server = EmbeddedServer(data_dir=tmp_path / "embedded")
    server.start()
    try:
        port = int(server.url.rstrip("/").rsplit(":", 1)[1])
        with httpx.Client(base_url=server.url, timeout=30,
                          headers={"Authorization": f"token {server.token}"}) as client:
            answer = client.post(f"{API}/pull",
                                 json=body(f"http://localhost:{port}/{API}"))
            health = client.get(f"{API}/health").json()
    finally:
        server.stop()
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "base_url"
    assert "this Jupyter server itself" in answer.json()["error"]["message"]
    assert health["remote_models"] == []


class _Answers(AbstractResolver):
    """A resolver that answers every name with ``addresses``."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [{"hostname": host, "host": a, "port": port, "family": family, "proto": 0,
                 "flags": 0} for a in self.addresses]

    async def close(self) -> None:
        pass


async def test_the_connect_time_check_applies_the_rules_to_every_address():
    node = HostRules(node=True)
    public = remote_hosts.CheckedResolver(lambda: node, _Answers("93.184.216.34"))
    assert [r["host"] for r in await public.resolve("replica.example", 443)] == ["93.184.216.34"]
    for answers in (_Answers("127.0.0.1"), _Answers("93.184.216.34", "::1")):
        with pytest.raises(remote_hosts.HostRefusedAtConnect, match="on this node"):
            await remote_hosts.CheckedResolver(lambda: node, answers).resolve(
                "replica.example", 443)
    allowed = HostRules(node=True, allowed=("replica.example",))  # the admin's choice
    assert await remote_hosts.CheckedResolver(lambda: allowed, _Answers("127.0.0.1")).resolve(
        "replica.example", 443)
