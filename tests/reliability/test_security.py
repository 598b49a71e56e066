"""Security: nobody reaches a model without the Jupyter server's auth.

Walks every route the extension registers (``ROUTES``) without credentials and with a wrong
token; browser-style cookie POSTs without the XSRF token; each backend's own API without its key;
secrets never shown by ``/health``, ``/metrics``, the event stream or any log; backends listening
on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import psutil
from tornado import web

from lemonade_jupyter.core.catalog import DEFAULT_MODEL
from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.server.embedded import EmbeddedServer
from lemonade_jupyter.server.routes import ROUTES

from tests.helpers.artifacts import write_artifact
from tests.helpers.envelope import (
    OLLAMA_PREFIX, assert_envelope, assert_error_answer, assert_ollama_error,
)
from tests.helpers.http import API, chat_body, loaded, sse_events
from tests.helpers.polling import wait_for
from tests.helpers.processes import backend_children

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
#: A body that would do something if it got through.
BODIES = {
    "api/v1/load": {"model_name": DEFAULT_MODEL, "pinned": True},
    "api/v1/unload": {},
    "api/v1/pull": {"model_name": "user.evil", "checkpoint": "/etc/passwd"},
    "api/v1/delete": {"model_name": DEFAULT_MODEL},
    "internal/pin": {"model_name": DEFAULT_MODEL, "pinned": False},
    "internal/set": {"max_loaded_models": 1},
    "internal/simulate-vram-pressure": {"pct": 1},
}


def implemented(handler: type) -> set[str]:
    return {m for m in METHODS
            if getattr(handler, m.lower()) is not getattr(web.RequestHandler, m.lower())}


def _body(path: str) -> dict[str, Any]:
    return BODIES.get(path, chat_body(DEFAULT_MODEL))


def walk_without_credentials(base_url: str, headers: dict[str, str]) -> int:
    """Every method of every route: refused (401/403), or 405 for a method the route lacks."""
    refused = 0
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as c:
        for path, handler, _kw in ROUTES:
            own = implemented(handler)
            assert own, path
            for method in METHODS:
                resp = c.request(method, f"lemonade/{path}",
                                 json=_body(path) if method != "GET" else None)
                if method in own:
                    assert resp.status_code in (401, 403), (method, path, resp.status_code,
                                                            resp.text[:200])
                    assert_error_answer(path, resp)
                    refused += 1
                else:
                    assert resp.status_code in (401, 403, 405), (method, path, resp.status_code)
    return refused


def backend_key(pid: int) -> str:
    """The API key a backend was started with (from its environment)."""
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    [key] = [e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"LLAMA_API_KEY=")]
    assert len(key) >= 24
    return key


def backend_logs(data_dir: Path) -> dict[str, str]:
    """Every backend log file of the server over ``data_dir``, by file name."""
    return {p.name: p.read_text(errors="replace")
            for p in sorted((data_dir / "backend-logs").glob("*/*.log"))}


def test_every_route_refuses_requests_without_credentials(jupyter_factory):
    server = jupyter_factory()
    refused = walk_without_credentials(server.url, {})
    refused += walk_without_credentials(server.url, {"Authorization": "token not-the-token"})
    with server.client() as c:
        # Nothing happened: no model, no user model, settings untouched, no backend spawned.
        assert server.health(c)["all_models_loaded"] == []
        assert [m["id"] for m in c.get(f"{API}/models").json()["data"]] == [DEFAULT_MODEL]
        assert c.get("lemonade/internal/config").json()["max_loaded_models"] == 1
    assert not backend_children(server.pid)
    write_artifact("security_routes.json", {"routes": len(ROUTES), "refused_requests": refused})


def test_embedded_server_routes_refuse_requests_without_its_token(tmp_path,
                                                                 fake_llama_server_path):
    server = EmbeddedServer(data_dir=tmp_path / "data", settings=RouterSettings(),
                            llama_server_path=fake_llama_server_path)
    server.start()
    try:
        walk_without_credentials(server.url, {})
        walk_without_credentials(server.url, {"Authorization": "token wrong"})
        assert server.router is not None and server.router.live_models() == []
        # 127.0.0.1 only
        host = httpx.URL(server.url).host
        assert host == "127.0.0.1"
    finally:
        server.stop()


def test_cookie_posts_without_xsrf_token_are_refused(jupyter_factory):
    server = jupyter_factory()
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        browser.get("login")
        xsrf = browser.cookies.get("_xsrf")
        assert xsrf
        login = browser.post("login", data={"password": server.token, "_xsrf": xsrf})
        assert login.status_code == 302, login.text
        assert any(k.startswith("username-") for k in browser.cookies.keys())
        # Logged in by cookie: reads work...
        assert browser.get(f"{API}/health").status_code == 200
        # ...but every state-changing route refuses a POST without the XSRF token.
        posts = [(p, m) for p, h, _kw in ROUTES for m in ("POST", "DELETE")
                 if m in implemented(h)]
        for path, method in posts:
            resp = browser.request(method, f"lemonade/{path}", json=_body(path))
            assert resp.status_code == 403, (path, resp.status_code, resp.text[:200])
            message = (assert_ollama_error(resp) if path.startswith(OLLAMA_PREFIX)
                       else assert_envelope(resp)["message"])
            assert "xsrf" in message.lower()
        assert not backend_children(server.pid)
        # With the token in the header (what JupyterLab sends) the same cookie session passes.
        ok = browser.post("lemonade/internal/pin", json={}, headers={"X-XSRFToken": xsrf})
        assert ok.status_code == 400 and assert_envelope(ok)["param"] == "model_name"
    write_artifact("security_xsrf.json", {"post_routes_refused": len(posts)})


def test_backends_need_their_key_bind_loopback_and_secrets_never_show(jupyter_factory,
                                                                      model_files):
    server = jupyter_factory(max_loaded_models=2, watchdog_interval_s=0.3,
                             watchdog_probe_timeout_s=0.5, watchdog_probe_failures=2)
    with server.client() as c:
        assert c.post(f"{API}/pull", json={"model_name": "user.two",
                                           "checkpoint": model_files("two")}).status_code == 200
        assert c.post(f"{API}/load", json={"model_name": DEFAULT_MODEL, "pinned": True}).status_code == 200
        assert c.post(f"{API}/load", json={"model_name": "user.two"}).status_code == 200
        # Traffic that logs: a chat, a stream, errors, a crash and its reload.
        assert c.post(f"{API}/chat/completions", json=chat_body(DEFAULT_MODEL)).status_code == 200
        with c.stream("POST", f"{API}/chat/completions",
                      json=chat_body("user.two", stream=True)) as resp:
            resp.read()
        c.post(f"{API}/load", json={"model_name": "nope"})
        c.post(f"{API}/chat/completions", json={"model": DEFAULT_MODEL, "messages": 5})
        health = loaded(server.health(c))
        secrets = {server.token}
        pids = [m["pid"] for m in health.values()]
        for name, entry in health.items():
            pid, url = entry["pid"], entry["backend_url"]
            key = backend_key(pid)
            secrets.add(key)
            # The key travels in the environment, never on the command line (``ps``).
            assert key not in " ".join(psutil.Process(pid).cmdline())
            # Loopback only: every listening socket of the backend is on 127.0.0.1.
            listening = [s for s in psutil.Process(pid).net_connections(kind="inet")
                         if s.status == psutil.CONN_LISTEN]
            assert listening and all(s.laddr.ip == "127.0.0.1" for s in listening), listening
            assert httpx.URL(url).host == "127.0.0.1"
            # Without the key (or with another backend's), the backend's API answers 401.
            for method, path in [("POST", "/v1/chat/completions"), ("POST", "/completion"),
                                 ("POST", "/v1/completions"), ("POST", "/tokenize"),
                                 ("GET", "/props"), ("POST", "/props"), ("GET", "/slots"),
                                 ("GET", "/v1/models"), ("GET", "/metrics")]:
                for headers in ({}, {"Authorization": "Bearer wrong"},
                                {"Authorization": f"Bearer {server.token}"}):
                    r = httpx.request(method, url + path, json=chat_body(name), headers=headers,
                                      timeout=30)
                    assert r.status_code == 401, (name, method, path, r.status_code)
            # The right key works: the 401s above are the key check, nothing else.
            r = httpx.post(url + "/v1/chat/completions", json=chat_body(name), timeout=60,
                           headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
        logs = backend_logs(server.data_dir)
        assert len(logs) >= len(pids)
        os.kill(pids[0], signal.SIGKILL)  # a crash: warnings, a crash event, a reload
        wait_for(lambda: (e := loaded(server.health(c)).get(DEFAULT_MODEL)) and e["pid"]
                 and e["pid"] != pids[0] and e["status"] == "ready", 60, "the pinned reload")
        secrets.add(backend_key(loaded(server.health(c))[DEFAULT_MODEL]["pid"]))

        shown = {
            "health": c.get(f"{API}/health").text,
            "metrics": c.get("lemonade/metrics").text,
            "models": c.get(f"{API}/models").text,
            "config": c.get("lemonade/internal/config").text,
        }
        with c.stream("GET", f"{API}/events", params={"last_event_id": 0}) as resp:
            text = ""
            for event in sse_events(resp):
                text += str(event)
                if event["event"] == "reload":  # the history ends with the crash reload
                    break
            shown["events"] = text
        c.post(f"{API}/unload", json={})
    server.stop()
    shown["jupyter log"] = server.log_text()
    shown.update({f"backend log {name}": log for name, log in logs.items()})
    for where, text in shown.items():
        for secret in secrets:
            assert secret not in text, f"a secret shows in the {where}"
    assert "reload" in shown["events"]
    write_artifact("security_secrets.json", {"secrets_checked": len(secrets),
                                             "places_checked": sorted(shown)})
