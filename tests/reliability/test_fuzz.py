"""Bad input: property-based fuzzing of every route's body, query and method.

Against a real ``jupyter server`` with a loaded model: no input yields a 5xx, every error is
the JSON error envelope, and a rejected request changes nothing (``/health`` with last-use times,
``/internal/config``, ``/models`` and the state files compared before and after). Oversized
bodies are refused, and ``pull`` takes only an existing regular file with the GGUF magic.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lemonade_jupyter.core.catalog import DEFAULT_MODEL
from lemonade_jupyter.core.settings import RUNTIME_KEYS
from lemonade_jupyter.server.base import MAX_BODY_BYTES
from lemonade_jupyter.server.routes import ROUTES

from tests.helpers.artifacts import write_artifact
from tests.helpers.envelope import OLLAMA_PREFIX, assert_envelope, assert_ollama_error
from tests.helpers.http import API
from tests.helpers.jupyter import JupyterProcess

#: Fields of a /health entry that move by themselves: idle time and every memory figure (the
#: sampler updates them).
VOLATILE = {"idle_s", "memory_bytes", "memory_freed_bytes", "device", "memory_by_device",
            "memory_source"}
EXAMPLES = int(os.environ.get("LEMONADE_FUZZ_EXAMPLES", "80"))

# ---------------------------------------------------------------------------- strategies
scalars = (st.none() | st.booleans() | st.integers()
           | st.sampled_from([10**400, -(10**400), 2**63, 2**31, -1, 0])  # overflow float()
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=6,
)
# Keys no engine knows: extra fields must be harmless to whoever reads them.
extra = st.dictionaries(st.from_regex(r"x_[a-z]{1,5}", fullmatch=True), json_values, max_size=2)


def junk(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly junk of any JSON type, sometimes a valid value."""
    return st.one_of(valid, json_values)


NAMES = [DEFAULT_MODEL, "user.fz", "user.nofile", "no-such-model", "", "user.", "x" * 300]
names = junk(st.sampled_from(NAMES))
not_bool = json_values.filter(lambda v: not isinstance(v, bool))
not_number = json_values.filter(lambda v: isinstance(v, bool) or not isinstance(v, (int, float)))
bad_ctx = st.one_of(st.integers(max_value=63), st.integers(min_value=(1 << 20) + 1), not_number,
                    st.floats(allow_nan=False).filter(lambda f: f != int(f) if abs(f) < 1e300 else True))
bad_args = st.one_of(
    st.sampled_from(["--port 1", "-m /x.gguf", "--api-key=k", "'open", "--host 0.0.0.0",
                     "--model=x", "-c 5", "x" * 5000]),
    json_values.filter(lambda v: not isinstance(v, str)),
)
timeouts = junk(st.floats(min_value=0, max_value=1e6))


def body_strategies(paths: dict[str, str]) -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    """A body strategy per route path (``paths``: named files for pull)."""
    load = st.fixed_dictionaries({}, optional={
        "model_name": names, "model": names, "pinned": junk(st.booleans()),
        "ctx_size": bad_ctx, "llamacpp_args": bad_args,
        "auto_evict": st.one_of(st.just(False), not_bool), "downsize_idle_timeout": timeouts,
        "evict_idle_timeout": timeouts, "evict_weight_factor": junk(st.floats(0.01, 100)),
    })
    checkpoint = junk(st.sampled_from(list(paths.values()) + ["relative/model.gguf", "/"]))
    setting_value = st.one_of(json_values, st.integers(-3, 4), st.floats(-1, 2))
    set_body = st.dictionaries(
        st.sampled_from(RUNTIME_KEYS) | st.text(max_size=8), setting_value, max_size=3,
    ).filter(lambda b: b.get("auto_evict") is not True)  # background evictions would race us
    message = st.fixed_dictionaries({"role": st.just("user"), "content": st.just("Hi")})
    number_fields = st.fixed_dictionaries({}, optional={
        "max_tokens": junk(st.just(1)), "temperature": junk(st.just(0)), "n": not_number,
        "top_p": not_number, "seed": not_number,
    })
    proxy_common = st.fixed_dictionaries({"model": names}, optional={"stream": junk(st.booleans())})

    def proxied(field: str, valid: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
        return st.builds(
            lambda common, value, numbers, more: {**common, **numbers, **more,
                                                  **({} if value is _MISSING else {field: value})},
            proxy_common, st.one_of(st.just(_MISSING), junk(valid)), number_fields, extra,
        )

    return {
        "api/v1/load": load,
        "api/v1/unload": st.fixed_dictionaries({}, optional={"model_name": names, "model": names})
        | st.dictionaries(st.text(max_size=6), json_values, max_size=2),
        "api/v1/pull": st.fixed_dictionaries({}, optional={
            "model_name": junk(st.sampled_from(["user.p1", "user.p2", "user.fz", "bad name"])),
            "checkpoint": checkpoint, "recipe": junk(st.sampled_from(["llamacpp", "remote"])),
            "labels": junk(st.lists(st.sampled_from(["llm", "custom", "x y", ""]), max_size=3)),
            "base_url": junk(st.sampled_from(REMOTE_URLS)),
            "base_urls": junk(st.lists(st.sampled_from(REMOTE_URLS), max_size=3)),
            "upstream_model": junk(st.just("m")),
            "api_key_env": junk(st.sampled_from(["HOME", "LEMONADE_FUZZ_NO_SUCH_VAR", ""])),
        }),
        "api/v1/alias": st.fixed_dictionaries({}, optional={
            "model_name": names, "alias": junk(st.sampled_from(ALIASES))}),
        "api/v1/alias/remove": st.fixed_dictionaries({}, optional={
            "alias": junk(st.sampled_from(ALIASES))}),
        "api/v1/rerank": proxied("documents", st.lists(st.just("Hi"), min_size=1, max_size=2)),
        "api/v1/responses": proxied("input", st.just("Hi")),
        "api/v1/messages": proxied("messages", st.lists(message, min_size=1, max_size=2)),
        "api/v1/messages/count_tokens": proxied("messages", st.lists(message, min_size=1,
                                                                     max_size=2)),
        "api/v1/infill": proxied("input_suffix", st.just("}")),
        "api/v1/completion": proxied("prompt", st.just("Hi")),
        "api/v1/tokenize": proxied("content", st.just("Hi")),
        "api/v1/detokenize": proxied("tokens", st.lists(st.integers(0, 100), max_size=3)),
        "api/v1/apply-template": proxied("messages", st.lists(message, min_size=1, max_size=2)),
        "api/v1/delete": st.fixed_dictionaries({}, optional={"model_name": names}),
        "internal/pin": st.fixed_dictionaries({}, optional={
            "model_name": names, "model": names, "pinned": junk(st.booleans())}),
        "internal/set": set_body,
        "internal/simulate-vram-pressure": st.fixed_dictionaries({}, optional={
            "pct": junk(st.sampled_from([-1, 0, 0.5, 1, 1.5, -2]))}),
        "api/v1/chat/completions": proxied("messages", st.lists(message, min_size=1, max_size=2)),
        "api/v1/completions": proxied("prompt", st.just("Hi")),
        "api/v1/embeddings": proxied("input", st.just("Hi")),
        "api/v1/reranking": proxied("documents", st.lists(st.just("Hi"), min_size=1,
                                                          max_size=2)),
        "api/v1/pull/cancel": st.fixed_dictionaries({}, optional={
            "model_name": names, "checkpoint": checkpoint}),
        # Multipart routes: a JSON body (as every case here sends) is refused with a 400.
        "api/v1/audio/transcriptions": proxied("file", st.just("x")),
        "api/v1/audio/translations": proxied("file", st.just("x")),
        **ollama_strategies(message),
    }


def ollama_strategies(message: st.SearchStrategy[Any]) -> dict[str, st.SearchStrategy[Any]]:
    """Bodies of the Ollama API's routes. A generating body that is accepted carries
    ``num_predict: 1`` (Ollama's default is no limit); everything else is junk around it."""
    short = st.just({"num_predict": 1})
    options = st.one_of(short, st.builds(lambda extra_keys: {"num_predict": 1, **extra_keys},
                                         st.dictionaries(st.sampled_from(
                                             ["num_ctx", "num_thread", "temperature", "stop",
                                              "seed", "mirostat", "top_k"]),
                                             json_values, min_size=1, max_size=2)),
                        json_values.filter(lambda v: not isinstance(v, dict)))
    common = st.fixed_dictionaries({"model": names, "options": options}, optional={
        "stream": junk(st.booleans()), "keep_alive": junk(st.sampled_from([-1, "5m", "1h", 30])),
        "format": junk(st.sampled_from(["json", ""])), "think": junk(st.booleans())})
    ollama_names = junk(st.sampled_from([DEFAULT_MODEL, f"{DEFAULT_MODEL}:latest", "user.fz",
                                         "no-such-model", "hf.co/x", ""]))

    def with_(field: str, valid: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
        return st.builds(lambda c, v, more: {**c, **more, **({} if v is _MISSING else {field: v})},
                         common, st.one_of(st.just(_MISSING), junk(valid)), extra)

    return {
        "ollama/api/chat": with_("messages", st.lists(message, min_size=1, max_size=2)),
        "ollama/api/generate": with_("prompt", st.just("Hi")),
        "ollama/api/embed": with_("input", st.just("Hi")),
        "ollama/api/embeddings": with_("prompt", st.just("Hi")),
        "ollama/api/show": st.fixed_dictionaries({}, optional={"model": ollama_names,
                                                               "verbose": json_values}),
        "ollama/api/pull": st.fixed_dictionaries({}, optional={
            "model": ollama_names, "stream": junk(st.booleans()), "insecure": json_values}),
        "ollama/api/delete": st.fixed_dictionaries({}, optional={"model": ollama_names}),
    }


_MISSING = object()
#: Upstreams of a remote pull: nothing listens on port 9, the rest is refused as a URL.
REMOTE_URLS = ["http://127.0.0.1:9/v1", "file:///etc/passwd", "ftp://x/v1", "no-scheme",
               "http://user:pw@127.0.0.1:9/v1", ""]
ALIASES = ["smol", "", "user.x", DEFAULT_MODEL, "x" * 300, "bad name", "a/b"]
#: Routes with a model in their path: fuzzed with these in its place.
PATH_MODEL = "(?P<model>[^/]+)"
PATH_MODELS = [DEFAULT_MODEL, "user.fz", "no-such-model", "%2e%2e", "x" * 300]
RAW_BODIES = [b"", b"{", b"[]", b"null", b"NaN", b"1e999", b'{"a": Infinity}', b"[" * 5000,
              b'{"model": "' + DEFAULT_MODEL.encode() + b'", "messages": [], "max_tokens": 1'
              + b"0" * 400 + b"}",
              b'{"model_name": "' + DEFAULT_MODEL.encode() + b'", "ctx_size": 1' + b"0" * 400 + b"}",
              b'{"max_loaded_models": 1' + b"0" * 400 + b', "eviction_grace_s": 1e999}',
              b'{"pct": 1' + b"0" * 5000 + b"}",
              b"{" * 3000, b'{"model_name": "\\ud800"}', b"\xff\xfe\x00", b'"' + b"a" * 1000,
              b'{"model": "' + DEFAULT_MODEL.encode() + b'", "messages": [' * 50]
queries = st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=12), max_size=3)
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]
#: Routes whose own method is neither GET nor POST.
OWN_METHOD = {"ollama/api/delete": "DELETE"}


# ---------------------------------------------------------------------------- helpers
def snapshot(c: httpx.Client, server: JupyterProcess) -> dict[str, Any]:
    """Everything a request could change, minus what moves by itself."""
    health = c.get(f"{API}/health").json()
    models = {m["model_name"]: {k: v for k, v in m.items() if k not in VOLATILE}
              for m in health["all_models_loaded"]}
    files = {}
    for name in ("user_models.json", "router_state.json", "model_aliases.json",
                 "remote_models.json"):
        path = server.data_dir / name
        files[name] = path.read_text() if path.exists() else None
    return {
        "loaded": models, "max_models": health["max_models"],
        "pinned": health["pinned_models"], "config": c.get("lemonade/internal/config").json(),
        "catalog": c.get(f"{API}/models").json(), "files": files,
    }


def settled_snapshot(c: httpx.Client, server: JupyterProcess) -> dict[str, Any]:
    """A snapshot once background work (state-file writes, loads) has settled."""
    previous = snapshot(c, server)
    deadline = time.monotonic() + 60
    while True:
        time.sleep(0.15)
        current = snapshot(c, server)
        busy = any(m["status"] not in ("ready", "downsized") for m in current["loaded"].values())
        if current == previous and not busy:
            return current
        if time.monotonic() > deadline:
            raise AssertionError("the router never settled")
        previous = current


#: The one 5xx a fuzz case may get: a hub checkpoint while the hub is unreachable (offline).
OFFLINE_PULL = ("api/v1/pull", 503, "hub_unavailable")


def check_answer(route: str, resp: httpx.Response) -> None:
    if route.startswith(OLLAMA_PREFIX):  # Ollama's error shape, and the same rules
        if resp.status_code >= 500:
            # The one 5xx: a pull of a hub checkpoint while the hub is unreachable.
            assert (route, resp.status_code) == ("ollama/api/pull", 503), \
                (route, resp.status_code, resp.text[:500])
        if resp.status_code >= 400:
            assert_ollama_error(resp)
            assert resp.headers.get("Content-Type", "").startswith("application/json")
        return
    if resp.status_code >= 500:
        err = assert_envelope(resp)
        assert (route, resp.status_code, err.get("code")) == OFFLINE_PULL, \
            (route, resp.status_code, resp.text[:500])
    if resp.status_code >= 400:
        assert_envelope(resp)
        assert resp.headers.get("Content-Type", "").startswith("application/json"), resp.headers


def refused_by_the_engine(resp: httpx.Response) -> bool:
    """A 400 ``not_supported`` is the engine's own refusal (``/infill`` on a model without
    fill-in-the-middle tokens): only the loaded engine can tell, so the model was auto-loaded
    to ask it, as for any request it serves. Nothing else may change on a refusal."""
    try:
        code = resp.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return False
    return resp.status_code == 400 and code == "not_supported"


def send(c: httpx.Client, method: str, path: str, *, params: dict[str, str],
         content: bytes | None) -> httpx.Response:
    """One request; a 200 event stream is read up to its first bytes, then closed."""
    with c.stream(method, path, params=params, content=content,
                  headers={"Content-Type": "application/json"}) as resp:
        if resp.status_code == 200 and resp.headers.get("Content-Type", "").startswith(
                "text/event-stream") and ("/events" in path or "/logs/" in path):
            next(resp.iter_raw(), b"")
            return resp
        resp.read()
        return resp


# ---------------------------------------------------------------------------- the fuzz run
@pytest.fixture
def fuzz_server(jupyter_factory, tmp_path, model_files):
    # No hub here: a junk checkpoint shaped like ORG/REPO is answered offline at once (a 503
    # naming HF_HUB_OFFLINE) instead of after the hub client's connection retries.
    server = jupyter_factory(max_loaded_models=2, sse_ping_interval_s=0.2,
                             env={"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"})
    not_gguf = tmp_path / "plain.txt"
    not_gguf.write_text("hello")
    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    directory = tmp_path / "dir.gguf"
    directory.mkdir()
    paths = {"good": model_files("pulled"), "text": str(not_gguf), "fifo": str(fifo),
             "dir": str(directory), "missing": str(tmp_path / "missing.gguf"),
             "devnull": "/dev/null"}
    gone = model_files("nofile")
    with server.client() as c:
        for name, ckpt in (("user.fz", model_files("fz")), ("user.nofile", gone)):
            assert c.post(f"{API}/pull", json={"model_name": name, "checkpoint": ckpt}).status_code == 200
        os.unlink(gone)  # registered, but its weights are gone: loads are a 404
        assert c.post(f"{API}/load", json={"model_name": DEFAULT_MODEL, "pinned": True}).status_code == 200
    yield server, paths
    with server.client() as c:
        c.post(f"{API}/unload", json={})


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fuzz_every_route_body_query_and_method(fuzz_server):
    server, paths = fuzz_server
    bodies = body_strategies(paths)
    registered = {path for path, _h, _kw in ROUTES}
    get_routes = {"api/v1/health", "api/v1/models", "internal/config", "api/v1/events", "metrics",
                  "api/v1/memory/history", "api/v1/stats", f"api/v1/logs/{PATH_MODEL}",
                  f"api/v1/models/{PATH_MODEL}", "ollama/api/tags", "ollama/api/ps",
                  "ollama/api/version", "page"}
    assert registered == set(bodies) | get_routes, "a route has no fuzz strategy"
    counts: Counter[str] = Counter()
    statuses: Counter[str] = Counter()

    with server.client(timeout=httpx.Timeout(180, connect=10)) as c:
        state = {"settled": settled_snapshot(c, server)}

        for path, handler, _kw in ROUTES:
            own = OWN_METHOD.get(path, "GET" if path in get_routes else "POST")
            body_st = bodies.get(path, st.just({}))
            case = st.fixed_dictionaries({
                "path": st.sampled_from(PATH_MODELS) if PATH_MODEL in path else st.just(""),
                "method": st.sampled_from([own] * 15 + METHODS),
                "params": queries,
                "content": st.one_of(
                    body_st.map(lambda b: json.dumps(b).encode()),
                    st.sampled_from(RAW_BODIES), st.binary(max_size=40),
                ),
            })

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=case)
            def run(case: dict[str, Any]) -> None:
                method = case["method"]
                content = case["content"] if method != "GET" else None
                if path == "api/v1/events" and method == "GET" and "last_event_id" not in case["params"]:
                    case["params"]["last_event_id"] = "0"
                before = state.pop("settled", None) or snapshot(c, server)
                url = f"lemonade/{path.replace(PATH_MODEL, case['path'])}"
                resp = send(c, method, url, params=case["params"], content=content)
                counts[path] += 1
                statuses[f"{resp.status_code}"] += 1
                check_answer(path, resp)
                if resp.status_code >= 400 and not refused_by_the_engine(resp):
                    after = snapshot(c, server)
                    assert after == before, (path, case, resp.status_code, resp.text[:300])
                else:
                    # An accepted request may change things, some in the background: wait.
                    state["settled"] = settled_snapshot(c, server)

            run()
        # The server is still healthy after all of it.
        assert c.get(f"{API}/health").status_code == 200
    log = server.log_text()
    assert "Traceback" not in log, log[log.find("Traceback") - 500:][:3000]
    write_artifact("fuzz.json", {"cases": sum(counts.values()), "per_route": dict(counts),
                                 "statuses": dict(statuses)})


# ---------------------------------------------------------------------------- oversized bodies
def test_oversized_bodies_are_refused(jupyter_factory):
    # The audio routes take uploads up to max_audio_upload_mib: 1 MiB here, below the body.
    server = jupyter_factory(max_audio_upload_mib=1)
    big = b'{"model_name": "' + b"a" * (MAX_BODY_BYTES + 16) + b'"}'
    with server.client() as c:
        before = snapshot(c, server)
        for path, _handler, _kw in ROUTES:
            resp = c.post(f"lemonade/{path}", content=big,
                          headers={"Content-Type": "application/json"})
            assert resp.status_code == 413, (path, resp.status_code, resp.text[:200])
            if path.startswith(OLLAMA_PREFIX):
                assert_ollama_error(resp)
            else:
                assert assert_envelope(resp)["type"] == "invalid_request_error"
        assert snapshot(c, server) == before


# ---------------------------------------------------------------------------- pull
def test_pull_accepts_only_existing_regular_gguf_files(jupyter_factory, tmp_path, model_files):
    server = jupyter_factory()
    d = tmp_path / "pull"
    d.mkdir()
    (d / "text.gguf").write_text("not a model")
    (d / "short.gguf").write_bytes(b"GGU")
    (d / "empty.gguf").write_bytes(b"")
    (d / "dir.gguf").mkdir()
    os.mkfifo(d / "fifo.gguf")  # opening it would block: must be refused without reading
    (d / "link-to-dir.gguf").symlink_to(d / "dir.gguf")
    (d / "dangling.gguf").symlink_to(d / "nothing.gguf")
    (d / "magic-late.gguf").write_bytes(b"xxxxGGUF")
    refused = [str(d / n) for n in ("text.gguf", "short.gguf", "empty.gguf", "dir.gguf",
                                     "fifo.gguf", "link-to-dir.gguf", "dangling.gguf",
                                     "magic-late.gguf", "missing.gguf")]
    refused += ["/dev/null", "/dev/zero", "/proc/self/environ", "/", "relative/x.gguf",
                str(d / "text.gguf") + "\x00.gguf"]
    with server.client() as c:
        before = snapshot(c, server)
        for i, path in enumerate(refused):
            resp = c.post(f"{API}/pull", json={"model_name": f"user.r{i}", "checkpoint": path})
            assert resp.status_code == 400, (path, resp.text)
            assert assert_envelope(resp)["param"] == "checkpoint", resp.text
        assert snapshot(c, server) == before
        ok = c.post(f"{API}/pull", json={"model_name": "user.ok", "checkpoint": model_files("ok")})
        assert ok.status_code == 200, ok.text
        link = d / "link.gguf"
        link.symlink_to(model_files("ok"))  # a symlink to a regular GGUF file is that file
        assert c.post(f"{API}/pull", json={"model_name": "user.link",
                                           "checkpoint": str(link)}).status_code == 200


@settings(max_examples=200, deadline=None, database=None, derandomize=True)
@given(content=st.binary(max_size=12))
def test_pull_gguf_check_is_the_magic_bytes(tmp_path_factory, content):
    """Any file content: accepted exactly when it starts with ``GGUF`` (no server needed:
    the same catalog call the route makes)."""
    from lemonade_jupyter.core.catalog import Catalog
    from lemonade_jupyter.errors import InvalidRequestError

    d = tmp_path_factory.mktemp("magic")
    f = d / "m.gguf"
    f.write_bytes(content)
    catalog = Catalog(None)
    try:
        catalog.add_user_model("user.m", str(f))
        accepted = True
    except InvalidRequestError:
        accepted = False
    assert accepted == content.startswith(b"GGUF")
