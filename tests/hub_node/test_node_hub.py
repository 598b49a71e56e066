"""The node router through a real JupyterHub and its proxy, with the users' own Hub tokens:
owners, scopes, shared eviction, the locked-down surface, and a restart by the Hub."""

from __future__ import annotations

import json
import signal
from typing import Any

import httpx
import psutil
import pytest

from lemonade_jupyter.core.catalog import DEFAULT_MODEL

from tests.helpers.http import API, loaded
from tests.helpers.polling import wait_for
from tests.helpers.processes import gone
from tests.hub_node.hub import PASSWORD, RESTART_DEADLINE_S, HubNode

A = DEFAULT_MODEL
USE, PIN, ADMIN = "custom:lemonade:use", "custom:lemonade:pin", "custom:lemonade:admin"


def _health(node: HubNode, user: str = "admin") -> dict[str, Any]:
    with node.client(user) as http:
        resp = http.get(f"{API}/health")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _post(node: HubNode, user: str, path: str, body: dict[str, Any],
          token: str | None = None) -> httpx.Response:
    with node.client(user, token) as http:
        return http.post(path, json=body)


def _refused(resp: httpx.Response, code: str) -> dict[str, Any]:
    assert resp.status_code == 403, resp.text
    error = resp.json()["error"]
    assert error["type"] == "permission_error" and error["code"] == code, error
    return error  # type: ignore[no-any-return]


def _events(node: HubNode, user: str, until: Any, timeout: float = 30) -> list[dict[str, Any]]:
    """Read the event stream (its recent history first) until ``until(event)`` holds."""
    seen: list[dict[str, Any]] = []
    with node.client(user, timeout=httpx.Timeout(timeout, connect=10)) as http:
        with http.stream("GET", f"{API}/events") as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if until(seen[-1]):
                        return seen
    raise AssertionError(f"no such event among {seen}")


def test_node_owner_shown_to_others_and_only_owner_or_admin_unpins(node):
    pinned = _post(node, "alice", f"{API}/load", {"model_name": A, "pinned": True})
    assert pinned.status_code == 200, pinned.text

    seen = _health(node, "bob")
    assert loaded(seen)[A]["owner"] == "alice" and loaded(seen)[A]["pinned"] is True
    assert seen["pins"] == [{"model_name": A, "type": "llm", "owner": "alice"}]

    error = _refused(_post(node, "bob", "lemonade/internal/pin",
                           {"model_name": A, "pinned": False}), "missing_scope")
    assert error["scope"] == ADMIN and "alice" in error["message"]
    _refused(_post(node, "bob", f"{API}/unload", {"model_name": A}), "missing_scope")
    _refused(_post(node, "bob", f"{API}/unload", {}), "missing_scope")
    # Ollama's keep_alive would unload or rekeep alice's model: an admin's act too.
    for extra in ({"keep_alive": 0}, {"options": {"num_ctx": 512}}):
        resp = _post(node, "bob", "lemonade/ollama/api/generate",
                     {"model": A, "prompt": "hi", "stream": False, **extra})
        assert resp.status_code == 403, resp.text  # in Ollama's error shape
        assert ADMIN in resp.json()["error"] and "alice" in resp.json()["error"]
    assert loaded(_health(node))[A]["pinned"] is True  # nothing changed

    resp = _post(node, "admin", "lemonade/internal/pin", {"model_name": A, "pinned": False})
    assert resp.status_code == 200 and resp.json()["pinned"] is False
    after = loaded(_health(node, "alice"))[A]
    assert after["pinned"] is False and after["owner"] == "alice"


def test_node_a_load_evicts_only_unpinned_models_and_the_event_names_both_users(node):
    pinned = _post(node, "alice", f"{API}/load", {"model_name": A, "pinned": True})
    assert pinned.status_code == 200, pinned.text
    assert _post(node, "alice", f"{API}/load", {"model_name": "user.b"}).status_code == 200

    assert _post(node, "bob", f"{API}/load", {"model_name": "user.c"}).status_code == 200

    models = loaded(_health(node))
    assert set(models) == {A, "user.c"}  # alice's pinned model stayed, her unpinned one went
    assert models["user.c"]["owner"] == "bob" and models[A]["owner"] == "alice"
    events = _events(node, "bob", lambda e: e["kind"] == "load" and e["model"] == "user.c")
    assert events[-1]["user"] == "bob"
    (evicted,) = [e for e in events if e["kind"] == "evict" and e["model"] == "user.b"
                  and e["id"] > _last_load_id(events, "user.b")]
    assert evicted["reason"] == "lru"
    assert evicted["user"] == "bob" and evicted["detail"]["owner"] == "alice"


def _last_load_id(events: list[dict[str, Any]], model: str) -> int:
    return max(e["id"] for e in events if e["kind"] == "load" and e["model"] == model)


def test_node_each_route_wants_its_scope(node):
    use_only = node.make_token("bob", scopes=[USE])
    resp = _post(node, "bob", f"{API}/load", {"model_name": A}, token=use_only)
    assert resp.status_code == 200, resp.text
    error = _refused(_post(node, "bob", "lemonade/internal/pin",
                           {"model_name": A, "pinned": True}, token=use_only), "missing_scope")
    assert error["scope"] == PIN
    error = _refused(_post(node, "bob", f"{API}/load", {"model_name": A, "pinned": True},
                           token=use_only), "missing_scope")
    assert error["scope"] == PIN
    assert loaded(_health(node))[A]["pinned"] is False

    error = _refused(_post(node, "bob", "lemonade/internal/set", {"max_loaded_models": 5}),
                     "missing_scope")
    assert error["scope"] == ADMIN
    assert _health(node)["max_models"]["llm"] == 2

    error = _refused(_post(node, "bob", f"{API}/pull", {"model_name": "user.x",
                                                        "checkpoint": "org/repo:Q4_0"}),
                     "missing_scope")
    assert error["scope"] == ADMIN

    with node.client("bob") as http:
        assert http.get(f"{API}/alias").status_code == 200  # reading is use
    error = _refused(_post(node, "bob", f"{API}/alias", {"alias": "x", "model_name": A}),
                     "missing_scope")
    assert error["scope"] == ADMIN

    # A Hub token without any lemonade scope gets nowhere, not even /health.
    nothing = node.make_token("bob", scopes=["read:users:name!user"])
    with node.client("bob", nothing) as http:
        assert http.get(f"{API}/health").status_code == 403
    # Nor do the Jupyter server's own routes, whatever the scopes.
    with node.client("admin") as http:
        assert http.get("api/contents").status_code == 403
        assert http.post("api/kernels", json={}).status_code == 403


def test_node_locked_down_rules_answer_403_and_register_nothing(node, tmp_path):
    before = {m["id"] for m in _models(node)}

    error = _refused(_post(node, "admin", f"{API}/load",
                           {"model_name": A, "llamacpp_args": "--lora /tmp/x.gguf"}),
                     "locked_down")
    assert error["rule"] == "llamacpp_args" and "--lora" in error["message"]
    assert A not in loaded(_health(node))

    outside = tmp_path / "elsewhere.gguf"
    outside.write_bytes(b"GGUF" + bytes(60))
    error = _refused(_post(node, "bob", f"{API}/pull", {
        "model_name": "user.outside", "checkpoint": str(outside), "recipe": "llamacpp",
        "labels": ["llm"]}), "locked_down")
    assert error["rule"] == "node_model_folders"

    error = _refused(_post(node, "admin", f"{API}/pull", {
        "model_name": "user.far", "recipe": "remote", "base_url": "http://127.0.0.1:9/v1",
        "upstream_model": "m", "api_key_env": "MY_SECRET"}), "locked_down")
    assert error["rule"] == "remote_key_envs" and "MY_SECRET" in error["message"]
    # The Hub's own API on this machine: another port than the node's, but a loopback
    # service of the node.
    error = _refused(_post(node, "admin", f"{API}/pull", {
        "model_name": "user.hubapi", "recipe": "remote",
        "base_url": f"http://127.0.0.1:{node.hub_port}/hub/api",
        "upstream_model": "m"}), "locked_down")
    assert error["rule"] == "remote_base_url" and "127.0.0.1" in error["message"]
    assert {m["id"] for m in _models(node)} == before

    assert _post(node, "alice", f"{API}/load", {"model_name": "user.b"}).status_code == 200
    with node.client("bob") as http:
        error = _refused(http.get(f"{API}/logs/user.b", params={"follow": "false"}),
                         "locked_down")
    assert error["rule"] == "log_owner"
    for user in ("alice", "admin"):
        with node.client(user) as http:
            assert http.get(f"{API}/logs/user.b",
                            params={"follow": "false"}).status_code == 200


def _models(node: HubNode) -> list[dict[str, Any]]:
    with node.client("admin") as http:
        resp = http.get(f"{API}/models")
    assert resp.status_code == 200
    return resp.json()["data"]  # type: ignore[no-any-return]


def test_node_the_hub_restarts_a_killed_service_with_pins_owners_and_options(node):
    resp = _post(node, "alice", f"{API}/load", {"model_name": A, "pinned": True,
                                                "ctx_size": 1024})
    assert resp.status_code == 200, resp.text
    first = loaded(_health(node))[A]
    service = node.service_process()
    backend = first["pid"]

    service.send_signal(signal.SIGKILL)
    wait_for(lambda: gone(backend), 30, what="the killed service's backend to go")
    wait_for(lambda: _restarted(node, service), RESTART_DEADLINE_S,
             what=f"the Hub to restart the service\n{node.log_tail()}", interval=0.5)

    back = wait_for(lambda: loaded(_health(node)).get(A), 60, what="the pinned model back")
    assert back["pinned"] is True and back["owner"] == "alice"
    assert back["recipe_options"]["ctx_size"] == 1024
    assert back["pid"] != backend


def _restarted(node: HubNode, old: psutil.Process) -> bool:
    try:
        with node.client("admin") as http:
            answered = http.get(f"{API}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
    return answered and node.service_process().pid != old.pid


def test_node_a_browser_logs_in_through_the_hubs_oauth(node):
    with httpx.Client(base_url=node.url, timeout=60, follow_redirects=True) as browser:
        browser.get("/hub/login")
        xsrf = browser.cookies.get("_xsrf", path="/hub/")
        login = browser.post("/hub/login", follow_redirects=False, data={
            "username": "bob", "password": PASSWORD, "_xsrf": xsrf})
        assert login.status_code == 302
        assert browser.get(f"/services/lemonade/{API}/health").status_code == 403  # no cookie

        # /login goes through the Hub's OAuth and back to ?next= with the node's cookie.
        models = browser.get("/services/lemonade/login",
                             params={"next": f"/services/lemonade/{API}/models"})
        assert models.status_code == 200, models.text[:300]
        assert any("/hub/api/oauth2/authorize" in str(r.url) for r in models.history)
        assert A in {m["id"] for m in models.json()["data"]}

        # A cookie POST wants the node's XSRF token, as in any Jupyter server.
        body = {"model_name": A}
        assert browser.post(f"/services/lemonade/{API}/load", json=body).status_code == 403
        token = [c.value for c in browser.cookies.jar
                 if c.name == "_xsrf" and c.path.startswith("/services/lemonade")][-1]
        loaded_ = browser.post(f"/services/lemonade/{API}/load", json=body,
                               headers={"X-XSRFToken": token})
        assert loaded_.status_code == 200, loaded_.text
        assert loaded(_health(node))[A]["owner"] == "bob"

        # ?next= elsewhere is not followed: the node's /health instead.
        away = browser.get("/services/lemonade/login", params={"next": "https://example.org/"})
        assert str(away.url).endswith(f"/services/lemonade/{API}/health")


def test_node_pins_owners_and_options_survive_a_restart_of_the_hub(node):
    resp = _post(node, "alice", f"{API}/load", {"model_name": "user.b", "pinned": True,
                                                "ctx_size": 512})
    assert resp.status_code == 200, resp.text

    node.stop()  # the Hub stops its service (and the service its backends)
    node.start()  # the same database: the users' tokens still hold

    back = wait_for(lambda: loaded(_health(node)).get("user.b"), 60,
                    what="the pinned model back")
    assert back["pinned"] is True and back["owner"] == "alice"
    assert back["recipe_options"]["ctx_size"] == 512


def test_node_with_allow_any_llamacpp_args_does_not_start(tmp_path, fake_llama_server_path):
    hub = HubNode(tmp_path / "hub", lemonade={"llama_server_path": fake_llama_server_path,
                                              "allow_any_llamacpp_args": True})
    try:
        with pytest.raises(AssertionError, match="the Hub exited"):
            hub.start()  # the service stops at start, and the Hub with it
    finally:
        hub.stop()
    assert "allow_any_llamacpp_args cannot be on in node mode" in hub.log_tail(100_000)
