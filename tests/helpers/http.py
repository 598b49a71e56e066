"""HTTP helpers: the API prefix, auth headers, request bodies, and readers of SSE answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

#: The OpenAI-style API prefix, relative to the server's base_url.
API = "lemonade/api/v1"


def auth_headers(token: str, scheme: str = "token") -> dict[str, str]:
    """``Authorization`` for a Jupyter server token (``token T``; ``Bearer T`` works too)."""
    return {"Authorization": f"{scheme} {token}"}


def api_client(url: str, token: str, **kwargs: Any) -> httpx.Client:
    """A blocking client for the server at ``url`` (its base_url, ending with a slash)."""
    kwargs.setdefault("timeout", httpx.Timeout(120.0, connect=10.0))
    headers = {**auth_headers(token), **kwargs.pop("headers", {})}
    return httpx.Client(base_url=url, headers=headers, **kwargs)


def chat_body(model: str, *, stream: bool = False, max_tokens: int = 8,
              prompt: str = "Say hi") -> dict[str, Any]:
    return {"model": model, "stream": stream, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}]}


def loaded(health: Any) -> dict[str, dict[str, Any]]:
    """``all_models_loaded`` by model name, of a ``/health`` answer or of a client's
    ``health()`` (a ``RouterClient``)."""
    if not isinstance(health, dict):
        health = health.health()
    return {m["model_name"]: m for m in health["all_models_loaded"]}


@dataclass
class StreamResult:
    """How one streaming request ended, as a client sees it."""

    status: int
    done: bool = False  # saw ``data: [DONE]``
    error: dict[str, Any] | None = None  # an SSE error event, or the JSON error body
    chunks: int = 0
    raw_tail: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.done and self.error is None


def read_stream(resp: httpx.Response) -> StreamResult:
    """Consume a streamed completion of the proxy and classify its end."""
    result = StreamResult(resp.status_code)
    if resp.status_code != 200:
        body = resp.read()
        try:
            result.error = json.loads(body).get("error")
        except (ValueError, AttributeError):
            result.error = None
        result.raw_tail = body[-300:]
        return result
    buf = b""
    for chunk in resp.iter_raw():
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            result.raw_tail = (result.raw_tail + event + b"\n\n")[-300:]
            for line in event.split(b"\n"):
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:]
                if payload == b"[DONE]":
                    result.done = True
                    continue
                try:
                    data = json.loads(payload)
                except ValueError:
                    continue
                if isinstance(data, dict) and "error" in data:
                    result.error = data["error"]
                else:
                    result.chunks += 1
    result.raw_tail += buf[-300:]
    return result


def sse_events(resp: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parse ``lemonade/api/v1/events`` into ``{"id", "event", "data"}`` dicts (comments such
    as ``: ping`` skipped; ``data`` parsed as JSON)."""
    buf = b""
    for chunk in resp.iter_raw():
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            event: dict[str, Any] = {}
            for line in block.split(b"\n"):
                name, _, value = line.partition(b":")
                value = value[1:] if value.startswith(b" ") else value
                if name == b"id":
                    event["id"] = int(value)
                elif name == b"event":
                    event["event"] = value.decode()
                elif name == b"data":
                    event["data"] = json.loads(value)
            if event:
                yield event
