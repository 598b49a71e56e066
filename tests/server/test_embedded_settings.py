"""The embedded router (no Jupyter server) is built by the same composition root as the
extension, so it honours every setting the same way: a CA bundle for an https remote model, the
loading state told to a cold stream, the engine path and ``backend_threads``, whose default comes from ``$LEMONADE_BACKEND_THREADS``. Left to itself,
it reads the ``c.LemonadeApp`` settings of the Jupyter server's config files."""

from __future__ import annotations

import json
import ssl

import httpx
import psutil
import pytest
from traitlets import TraitError

from lemonade_jupyter.core.settings import RouterSettings, ServerOptions
from lemonade_jupyter.server.embedded import EmbeddedServer
from tests.fakes.fake_openai_upstream import FakeUpstream
from tests.helpers.http import API

KEY = "sk-fake-upstream-0123456789abcdef"
KEY_ENV = "LEMONADE_REMOTE_KEY_FAKE"


@pytest.fixture
def embedded(tmp_path, llama_server_path):
    """Starts an embedded router with the given settings and options; stops it at the end."""
    started: list[EmbeddedServer] = []

    def start(settings: RouterSettings | None = None, **options: object) -> EmbeddedServer:
        server = EmbeddedServer(
            data_dir=tmp_path / f"embedded-{len(started)}",
            settings=settings or RouterSettings(restore_on_start=False),
            options=ServerOptions(llama_server_path=llama_server_path, **options),
        )
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


def _http(server: EmbeddedServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, timeout=120,
                             headers={"Authorization": f"token {server.token}"})


@pytest.mark.parametrize("with_bundle", [True, False])
async def test_a_ca_bundle_lets_a_private_ca_through(embedded, certificate, monkeypatch,
                                                     with_bundle):
    monkeypatch.setenv(KEY_ENV, KEY)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")
    fake = await FakeUpstream(key=KEY, tls=tls).start()
    bundle = str(certificate / "cert.pem") if with_bundle else ""
    server = embedded(remote_ca_bundle=bundle)
    try:
        async with _http(server) as http:
            answer = await http.post(f"{API}/pull", json={
                "model_name": "user.tls", "recipe": "remote", "base_url": fake.base_url,
                "upstream_model": "ok", "api_key_env": KEY_ENV})
            assert answer.status_code == 200, answer.text
            status = answer.json()["registered"][0]["status"]
            chat = await http.post(f"{API}/chat/completions", json={
                "model": "user.tls", "messages": [{"role": "user", "content": "hi"}]})
    finally:
        await fake.stop()
    if with_bundle:
        assert status == "ready"
        assert chat.status_code == 200, chat.text
        assert chat.json()["model"] == "user.tls"
    else:  # the system's store does not know the private CA: verification fails
        assert status != "ready"
        assert chat.status_code >= 500 and chat.json()["error"]["message"]


async def test_a_cold_stream_tells_its_load(embedded, openai_client, default_model_name):
    server = embedded(stream_loading_state=True)
    client = openai_client(f"{server.url}{API}", server.token)
    stream = await client.chat.completions.create(
        model=default_model_name, messages=[{"role": "user", "content": "Say hi"}],
        max_tokens=4, stream=True)
    chunks = [chunk async for chunk in stream]
    told = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or ""
                   for c in chunks if c.choices)
    assert told.startswith(f"Loading model {default_model_name}")
    assert f"Model {default_model_name} is loaded in" in told


async def test_backend_threads_default_comes_from_the_variable(embedded, monkeypatch,
                                                              default_model_name):
    monkeypatch.setenv("LEMONADE_BACKEND_THREADS", "2")
    server = embedded(settings=RouterSettings(restore_on_start=False))
    async with _http(server) as http:
        answer = await http.post(f"{API}/load", json={"model_name": default_model_name})
        assert answer.status_code == 200, answer.text
        health = (await http.get(f"{API}/health")).json()
    pid = next(m["pid"] for m in health["all_models_loaded"]
               if m["model_name"] == default_model_name)
    argv = psutil.Process(pid).cmdline()
    assert argv[argv.index("--threads") + 1] == "2"



# ------------------------------------------------------------ the server's config files
def test_the_config_files_give_the_settings_the_first_folder_winning(tmp_path):
    from lemonade_jupyter.server.jupyter_config import configured_settings

    user, system = tmp_path / "user", tmp_path / "system"
    (system / "jupyter_server_config.d").mkdir(parents=True)
    user.mkdir()
    (system / "jupyter_server_config.d" / "lemonade.json").write_text(json.dumps(
        {"LemonadeApp": {"max_queue": 3, "stream_loading_state": True}}))
    (system / "jupyter_server_config.json").write_text(json.dumps(
        {"LemonadeApp": {"sse_ping_interval_s": 0.5}, "ServerApp": {"port": 1}}))
    (user / "jupyter_server_config.py").write_text(
        "c = get_config()  # noqa\nc.LemonadeApp.max_queue = 5\n"
        "c.LemonadeApp.remote_ca_bundle = '/ca.pem'\n")
    settings, options = configured_settings([str(user), str(system)])
    assert settings.max_queue == 5 and settings.max_loaded_models == 1
    assert options.stream_loading_state is True and options.sse_ping_interval_s == 0.5
    assert options.remote_ca_bundle == "/ca.pem"
    assert configured_settings([str(tmp_path / "none")]) == (RouterSettings(), ServerOptions())


def test_the_embedded_router_runs_with_the_servers_config(tmp_path, monkeypatch):
    config = tmp_path / "config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(json.dumps({"LemonadeApp": {
        "max_queue": 4, "restore_on_start": False,
        "data_dir": str(tmp_path / "the-servers-folder")}}))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(config))
    server = EmbeddedServer(data_dir=tmp_path / "embedded")
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30,
                          headers={"Authorization": f"token {server.token}"}) as http:
            settings = http.get("lemonade/internal/config").json()
    finally:
        server.stop()
    assert settings["max_queue"] == 4 and settings["restore_on_start"] is False
    assert not (tmp_path / "the-servers-folder").exists()  # its own folder, never the server's


def test_a_bad_value_in_the_config_files_is_refused_naming_it(tmp_path, monkeypatch):
    (tmp_path / "jupyter_server_config.json").write_text(json.dumps(
        {"LemonadeApp": {"max_queue": -7}}))
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path))
    with pytest.raises(TraitError, match="^c.LemonadeApp.max_queue: "):
        EmbeddedServer(data_dir=tmp_path / "embedded")
