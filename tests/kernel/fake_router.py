"""An in-memory stand-in for the router's HTTP API, served through ``httpx.MockTransport``.

Enough of the HTTP API (docs/api.md) for fast magics/client tests: a catalog, slots per type
(max 1), pins and the 409 rule, config/set, pull, chat (streaming SSE and plain). It records
every request so tests can assert what the kernel sent. Real-server behaviour is covered by the
end-to-end tests.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from lemonade_jupyter.kernel.client import RouterClient

DEFAULT = "SmolLM2-135M-Instruct-GGUF"


class FakeRouter:
    def __init__(self, max_models: int = 1, token: str = "tok") -> None:
        self.token = token
        self.catalog: dict[str, dict[str, Any]] = {
            DEFAULT: {
                "id": DEFAULT,
                "type": "llm",
                "labels": ["llm"],
                "recipe": "llamacpp",
                "checkpoint": "/models/smol.gguf",
            },
            "embedder": {
                "id": "embedder",
                "type": "embedding",
                "labels": ["embeddings"],
                "recipe": "llamacpp",
                "checkpoint": "/models/emb.gguf",
            },
        }
        self.loaded: dict[str, dict[str, Any]] = {}
        self.config = {
            "max_loaded_models": max_models,
            "auto_evict": False,
            "settable_keys": ["max_loaded_models", "auto_evict"],
        }
        self.requests: list[tuple[str, str, Any]] = []
        self.chat_pieces = ["Hel", "lo", " there"]
        self.events: list[dict[str, Any]] = []
        #: ``api/v1/memory/history`` samples (``{"time", "pressure"}``); None: no such route.
        self.memory_samples: list[dict[str, float]] | None = None
        #: Backend log lines per model for ``api/v1/logs/MODEL`` (a model not here: 404).
        self.logs: dict[str, list[str]] = {}
        self.aliases: dict[str, str] = {}
        #: ``remote_models`` of ``/health`` (remote models and their replicas).
        self.remote: list[dict[str, Any]] = []

    def client(self, **kwargs: Any) -> RouterClient:
        kwargs.setdefault("source", "fake router")
        return RouterClient(
            "http://fake.test/",
            self.token,
            kind="explicit",
            transport=httpx.MockTransport(self.handle),
            **kwargs,
        )

    # -- helpers --------------------------------------------------------------------------
    @staticmethod
    def _error(
        status: int, message: str, error_type: str, code: str | None = None
    ) -> httpx.Response:
        err: dict[str, Any] = {"message": message, "type": error_type}
        if code:
            err["code"] = code
        return httpx.Response(status, json={"error": err})

    def health(self) -> dict[str, Any]:
        types = sorted({m["type"] for m in self.catalog.values()})
        models = list(self.loaded.values())
        return {
            "status": "ok",
            "all_models_loaded": models,
            "max_models": {t: self.config["max_loaded_models"] for t in types},
            "pinned_models": {
                t: sum(1 for m in models if m["type"] == t and m["pinned"]) for t in types
            },
            "memory": {
                "source": "system",
                "devices": [{"name": "system", "total": 1000, "used": 250}],
            },
            "remote_models": self.remote,
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != f"token {self.token}":
            return httpx.Response(403, text="<html>Forbidden</html>")
        path = request.url.path.removeprefix("/lemonade/")
        body = json.loads(request.content) if request.content else None
        self.requests.append((request.method, path, body))
        if path.startswith("api/v1/logs/"):
            self.last_request = request
            return self._logs(path.removeprefix("api/v1/logs/"), request)
        handler = getattr(self, "_" + path.replace("/", "_").replace("api_v1_", ""), None)
        if handler is None:
            return httpx.Response(404, json={"message": "Not Found"})
        self.last_request = request
        return handler(body or {})

    def _logs(self, model: str, request: httpx.Request) -> httpx.Response:
        if model not in self.logs:
            return self._error(404, f"Model '{model}' is not in the catalog",
                               "invalid_request_error", "model_not_found")
        tail = int(request.url.params.get("tail", "100"))
        lines = self.logs[model][-tail:] if tail else []
        text = ": log\n\nevent: start\ndata: {\"generation\": 1}\n\n" + "".join(
            f"event: log\ndata: {line}\n\n" for line in lines)
        return httpx.Response(200, text=text, headers={"Content-Type": "text/event-stream"})

    def _alias(self, body: dict[str, Any]) -> httpx.Response:
        if not body:
            return httpx.Response(200, json={"aliases": dict(self.aliases)})
        name, alias = body.get("model_name"), body.get("alias")
        if name not in self.catalog:
            return self._error(404, f"Model '{name}' is not in the catalog",
                               "invalid_request_error", "model_not_found")
        if alias in self.catalog or self.aliases.get(alias, name) != name:
            return self._error(400, f"'{alias}' clashes", "invalid_request_error")
        self.aliases[alias] = name
        return httpx.Response(200, json={"status": "success", "alias": alias, "model_name": name})

    def _alias_remove(self, body: dict[str, Any]) -> httpx.Response:
        alias = body.get("alias")
        if alias not in self.aliases:
            return self._error(404, f"'{alias}' is not an alias", "invalid_request_error")
        return httpx.Response(200, json={"status": "success", "alias": alias,
                                         "model_name": self.aliases.pop(alias)})

    def _health(self, body: Any) -> httpx.Response:
        return httpx.Response(200, json=self.health())

    def _models(self, body: Any) -> httpx.Response:
        data = [
            {
                **m,
                "object": "model",
                "loaded": m["id"] in self.loaded,
                "pinned": bool(self.loaded.get(m["id"], {}).get("pinned")),
            }
            for m in self.catalog.values()
        ]
        return httpx.Response(200, json={"object": "list", "data": data})

    def _load(self, body: dict[str, Any]) -> httpx.Response:
        name = body.get("model_name")
        if name not in self.catalog:
            return self._error(
                404, f"Model '{name}' not found", "invalid_request_error", "model_not_found"
            )
        spec = self.catalog[name]
        live = self.loaded.get(name)
        if live is None:
            pool = [m for m in self.loaded.values() if m["type"] == spec["type"]]
            if len(pool) >= self.config["max_loaded_models"]:
                victims = [m for m in pool if not m["pinned"]]
                if not victims:
                    return httpx.Response(
                        409,
                        json={
                            "error": {
                                "message": f"All loaded models of type {spec['type']} are "
                                "pinned. Unload a model first.",
                                "type": "slots_pinned_error",
                                "code": "slots_pinned_error",
                                "param": "model",
                                "requested_model": name,
                            }
                        },
                    )
                victim = min(victims, key=lambda m: m["last_use"])
                del self.loaded[victim["model_name"]]
            live = self.loaded[name] = {
                "model_name": name,
                "checkpoint": spec["checkpoint"],
                "type": spec["type"],
                "recipe": "llamacpp",
                "recipe_options": {},
                "pinned": False,
                "status": "ready",
                "pid": 4242,
                "backend_url": "http://127.0.0.1:1/",
                "last_use": time.time() * 1000,
                "idle_s": 0.0,
                "load_duration_ms": 400.0,
                "memory_bytes": 100 * 1024 * 1024,
                "is_busy": False,
                "device": "cpu",
            }
        if isinstance(body.get("pinned"), bool):
            live["pinned"] = body["pinned"]
        live["last_use"] = time.time() * 1000
        return httpx.Response(
            200,
            json={
                "status": "success",
                "model_name": name,
                "checkpoint": live["checkpoint"],
                "recipe": "llamacpp",
                "pinned": live["pinned"],
            },
        )

    def _unload(self, body: dict[str, Any]) -> httpx.Response:
        name = body.get("model_name")
        if name is None:
            self.loaded.clear()
        elif self.loaded.pop(name, None) is None:
            return self._error(
                404, f"Model '{name}' is not loaded", "invalid_request_error", "model_not_found"
            )
        return httpx.Response(200, json={"status": "success"})

    def _internal_pin(self, body: dict[str, Any]) -> httpx.Response:
        name = body.get("model_name")
        if not isinstance(body.get("pinned"), bool):
            return self._error(
                400, "Parameter 'pinned' is required and must be a boolean", "invalid_request_error"
            )
        if name not in self.loaded:
            return self._error(
                404, f"Model '{name}' is not loaded", "invalid_request_error", "model_not_found"
            )
        self.loaded[name]["pinned"] = body["pinned"]
        return httpx.Response(
            200, json={"status": "success", "model_name": name, "pinned": body["pinned"]}
        )

    def _internal_config(self, body: Any) -> httpx.Response:
        return httpx.Response(200, json=self.config)

    def _internal_set(self, body: dict[str, Any]) -> httpx.Response:
        for key, value in body.items():
            if key not in self.config["settable_keys"]:
                return self._error(400, f"Unknown config key '{key}'", "invalid_request_error")
            if key == "max_loaded_models" and (not isinstance(value, int) or value == 0):
                return self._error(
                    400,
                    "max_loaded_models must be a positive integer or -1 (unlimited)",
                    "invalid_request_error",
                )
        self.config.update(body)
        return httpx.Response(200, json=self.config)

    def _pull(self, body: dict[str, Any]) -> httpx.Response:
        if body.get("recipe") == "remote":  # the server's answer: the registered models
            name = body["model_name"]
            registered = [{"model_name": name if body.get("upstream_model") else f"{name}/{i}",
                           "recipe": "remote", "replicas": body["base_urls"]}
                          for i in ([body["upstream_model"]] if body.get("upstream_model")
                                    else ["a", "b"])]
            return httpx.Response(200, json={"status": "success", "registered": registered})
        labels = body.get("labels") or ["llm"]
        kind = "embedding" if "embeddings" in labels else "llm"
        self.catalog[body["model_name"]] = {
            "id": body["model_name"],
            "type": kind,
            "labels": labels,
            "recipe": body.get("recipe"),
            "checkpoint": body["checkpoint"],
        }
        return httpx.Response(
            200, json={"status": "success", "model_name": body["model_name"], "type": kind}
        )

    def _delete(self, body: dict[str, Any]) -> httpx.Response:
        self.loaded.pop(body["model_name"], None)
        self.catalog.pop(body["model_name"], None)
        return httpx.Response(200, json={"status": "success", "model_name": body["model_name"]})

    def _chat_completions(self, body: dict[str, Any]) -> httpx.Response:
        if body.get("model") not in self.catalog:
            return self._error(
                404,
                f"Model '{body.get('model')}' not found",
                "invalid_request_error",
                "model_not_found",
            )
        if not body.get("stream"):
            return httpx.Response(
                200,
                json={
                    "choices": [
                        {"message": {"role": "assistant", "content": "".join(self.chat_pieces)}}
                    ]
                },
            )
        lines = [
            f"data: {json.dumps({'choices': [{'delta': {'content': p}}]})}\n\n"
            for p in self.chat_pieces
        ]
        lines.append("data: [DONE]\n\n")
        return httpx.Response(
            200, content="".join(lines).encode(), headers={"Content-Type": "text/event-stream"}
        )

    def _memory_history(self, body: Any) -> httpx.Response:
        if self.memory_samples is None:
            return httpx.Response(404, json={"message": "Not Found"})
        since = float(self.last_request.url.params.get("since") or 0)
        samples = [x for x in self.memory_samples if x["time"] > since]
        return httpx.Response(200, json={"source": "system", "devices": [], "samples": samples})

    def _events(self, body: Any) -> httpx.Response:
        after = int(self.last_request.headers.get("Last-Event-ID") or 0)
        text = "".join(
            f"id: {e['id']}\nevent: {e['kind']}\ndata: {json.dumps(e)}\n\n"
            for e in self.events
            if e["id"] > after
        )
        return httpx.Response(
            200,
            content=(": hello\n\n" + text).encode(),
            headers={"Content-Type": "text/event-stream"},
        )
