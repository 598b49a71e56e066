"""A synchronous HTTP client of the lemonade router, as the kernel sees it.

``RouterClient`` speaks the HTTP API of ``docs/api.md`` under ``{base_url}lemonade/`` with
Jupyter token auth. It and :mod:`.wire` are the only places the kernel touches httpx: every
httpx exception becomes a :class:`~lemonade_jupyter.errors.ClientError` in
:func:`~.wire.map_http_errors`, and every error answer becomes one carrying the server's status
and envelope, so callers handle exactly one error type.

The embedded router's client (one per process, started on first use) is in
:mod:`.embedded_client`.

The client is sync on purpose: magics run inside ipykernel's loop, where
``asyncio.run`` is not allowed, and the dashboard polls from a plain thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from ..api_paths import ROUTE_PREFIX
from ..errors import ClientError
from .wire import HTTPX_ERRORS, error_from_response, iter_sse, local_error, map_http_errors

__all__ = ["HTTPX_ERRORS", "RouterClient", "ctx_size", "iter_sse", "map_http_errors"]


def ctx_size(text: str) -> int | str:
    """A ``--ctx-size`` argument (the magic's and the command line's): ``auto`` (the trained
    context capped by what fits) or a number of tokens, as the load route takes it. Named for
    argparse, whose error then reads "invalid ctx_size value"."""
    if text == "auto":
        return text
    return int(text)


class RouterClient:
    """Blocking client of one lemonade router, reached over HTTP.

    ``kind`` names how it was found (``env``, ``config``, ``hub``, ``parent``, ``running``,
    ``embedded``, ``explicit``) and ``source`` says it in words for ``%lemonade status``. Every
    method returns the decoded JSON answer (a fresh snapshot) or raises ``ClientError``.
    """

    kind: str = "explicit"

    def __init__(
        self,
        base_url: str,
        token: str = "",
        *,
        kind: str | None = None,
        source: str = "",
        timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
        uds: str | None = None,
    ) -> None:
        if not base_url.endswith("/"):
            base_url += "/"
        self.base_url = base_url
        self.api_url = base_url + ROUTE_PREFIX
        self.token = token
        if kind is not None:
            self.kind = kind
        self.source = source or f"lemonade router at {base_url}"
        #: The unix socket the server listens on (then ``base_url`` is ``http://localhost/...``).
        self.uds = uds
        if transport is None and uds:
            transport = httpx.HTTPTransport(uds=uds)
        #: The transport given for tests (``httpx.MockTransport``), reused by the OpenAI helper.
        self.transport = transport
        self.timeout = timeout
        headers = {"Authorization": f"token {token}"} if token else {}
        self._timeout = httpx.Timeout(timeout, connect=10.0)
        self._http = httpx.Client(
            base_url=self.api_url, headers=headers, timeout=self._timeout, transport=transport
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.kind} {self.base_url}>"

    # -- plumbing ---------------------------------------------------------------------------
    def request(
        self, method: str, path: str, *, json_body: Any = None, timeout: float | None = None
    ) -> Any:
        """Send one request to ``lemonade/PATH``; return the decoded JSON answer."""
        kwargs: dict[str, Any] = {}
        if json_body is not None:
            kwargs["json"] = json_body
        if timeout is not None:
            kwargs["timeout"] = timeout
        with map_http_errors(self.base_url):
            response = self._http.request(method, path, **kwargs)
            if response.status_code >= 400:
                raise error_from_response(response)
            if not response.content:
                return {}
            try:
                return response.json()
            except ValueError as exc:
                raise local_error(
                    502,
                    "invalid_response",
                    f"{path} answered with non-JSON: {response.text[:120]!r}",
                ) from exc

    def close(self) -> None:
        """Close the connection pool (idempotent)."""
        self._http.close()

    # -- the routes of docs/api.md ------------------------------------------------------------
    def health(self, timeout: float | None = None) -> dict[str, Any]:
        """``GET api/v1/health``: loaded models, slots, pins and memory (a snapshot)."""
        return dict(self.request("GET", "api/v1/health", timeout=timeout))

    def stats(self) -> dict[str, Any]:
        """``GET api/v1/stats``: the last generation request's figures, as the engine measured
        them (every figure None before the first one)."""
        return dict(self.request("GET", "api/v1/stats"))

    def memory_history(self, since: float | None = None) -> dict[str, Any]:
        """``GET api/v1/memory/history``: the server's recent memory samples (oldest first)."""
        path = "api/v1/memory/history" + (f"?since={since!r}" if since is not None else "")
        return dict(self.request("GET", path))

    def load(self, model_name: str, **options: Any) -> dict[str, Any]:
        """``POST api/v1/load``; blocks until the backend serves. ``None`` options are omitted."""
        body = {"model_name": model_name}
        body.update({k: v for k, v in options.items() if v is not None})
        return dict(self.request("POST", "api/v1/load", json_body=body))

    def unload(self, model_name: str | None = None) -> dict[str, Any]:
        """``POST api/v1/unload``: one model, or every model when ``model_name`` is None."""
        body = {"model_name": model_name} if model_name else {}
        return dict(self.request("POST", "api/v1/unload", json_body=body))

    def pin(self, model_name: str, pinned: bool) -> dict[str, Any]:
        """``POST internal/pin``: set a loaded model's pin."""
        return dict(
            self.request(
                "POST", "internal/pin", json_body={"model_name": model_name, "pinned": bool(pinned)}
            )
        )

    def config(self) -> dict[str, Any]:
        """``GET internal/config``."""
        return dict(self.request("GET", "internal/config"))

    def set_config(self, updates: Mapping[str, Any]) -> dict[str, Any]:
        """``POST internal/set``; all-or-nothing on the server. Returns the new config."""
        return dict(self.request("POST", "internal/set", json_body=dict(updates)))

    def models(self) -> list[dict[str, Any]]:
        """``GET api/v1/models``: the catalog with ``type``, ``loaded`` and ``pinned``."""
        answer = self.request("GET", "api/v1/models")
        data = answer.get("data", []) if isinstance(answer, dict) else answer
        return [m for m in data if isinstance(m, dict)]

    def add_remote(
        self,
        model_name: str,
        base_urls: Sequence[str],
        upstream_model: str | None = None,
        api_key_env: str | Sequence[str | None] | None = None,
        labels: Sequence[str] = (),
    ) -> dict[str, Any]:
        """``POST api/v1/pull`` with ``recipe: "remote"``: register a model served by an
        OpenAI-compatible engine elsewhere (vLLM, KServe, another lemonade), one URL per
        replica. ``api_key_env`` names the server's environment variable(s) with the key: the
        key itself never leaves the server. Without ``upstream_model``, every model the
        upstream lists is registered as ``model_name/ID``."""
        body: dict[str, Any] = {"model_name": model_name, "recipe": "remote",
                                "base_urls": list(base_urls)}
        if upstream_model is not None:
            body["upstream_model"] = upstream_model
        if api_key_env is not None:
            body["api_key_env"] = (api_key_env if isinstance(api_key_env, str)
                                   else list(api_key_env))
        if labels:
            body["labels"] = list(labels)
        return dict(self.request("POST", "api/v1/pull", json_body=body))

    def pull(
        self,
        model_name: str,
        checkpoint: str | None = None,
        recipe: str | None = None,
        labels: Sequence[str] = (),
        *,
        mmproj: str | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """``POST api/v1/pull``: register a local GGUF file or download a hub checkpoint as
        ``model_name``; without ``checkpoint``, download the catalog model ``model_name``.

        With ``progress``, the pull streams and ``progress(event)`` gets each progress event
        (``bytes_downloaded``, ``bytes_total``, ``percent``, ``files``); the answer is the
        ``complete`` event, and an ``error`` event raises ``ClientError`` with its status.
        """
        body: dict[str, Any] = {"model_name": model_name}
        if checkpoint is not None:
            # No recipe: the server's default for the checkpoint (llamacpp for a GGUF,
            # whispercpp for a model of whisper.cpp's repository).
            body.update(checkpoint=checkpoint, labels=list(labels))
            if recipe is not None:
                body["recipe"] = recipe
        elif labels:
            body["labels"] = list(labels)
        if mmproj is not None:
            body["mmproj"] = mmproj
        if progress is None:
            return dict(self.request("POST", "api/v1/pull", json_body=body))
        body["stream"] = True
        with (
            map_http_errors(self.base_url),
            self._http.stream("POST", "api/v1/pull", json=body) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise error_from_response(response)
            for event in iter_sse(response.iter_lines()):
                try:
                    data = json.loads(event.get("data") or "null")
                except ValueError:
                    continue
                if not isinstance(data, dict):
                    continue
                kind = event.get("event")
                if kind == "progress":
                    progress(data)
                elif kind == "complete":
                    return data
                elif kind == "error":
                    err = data.get("error") if isinstance(data.get("error"), dict) else {}
                    status = data.get("status")
                    raise ClientError(status if isinstance(status, int) else 502,
                                      {"error": err}, str(err.get("message") or data))
        raise local_error(502, "invalid_response", "The pull stream ended without a result")

    def cancel_pull(self, model_name: str) -> dict[str, Any]:
        """``POST api/v1/pull/cancel``: stop the pull of ``model_name`` for every client."""
        return dict(self.request("POST", "api/v1/pull/cancel",
                                 json_body={"model_name": model_name}))

    def delete(self, model_name: str) -> dict[str, Any]:
        """``POST api/v1/delete``: remove a user model (unloading it first)."""
        return dict(self.request("POST", "api/v1/delete", json_body={"model_name": model_name}))

    def aliases(self) -> dict[str, str]:
        """``GET api/v1/alias``: every alias and the model it names."""
        return dict(self.request("GET", "api/v1/alias").get("aliases") or {})

    def add_alias(self, model_name: str, alias: str) -> dict[str, Any]:
        """``POST api/v1/alias``: make ``alias`` another name of ``model_name``."""
        return dict(self.request("POST", "api/v1/alias",
                                 json_body={"model_name": model_name, "alias": alias}))

    def remove_alias(self, alias: str) -> dict[str, Any]:
        """``POST api/v1/alias/remove``: forget ``alias``."""
        return dict(self.request("POST", "api/v1/alias/remove", json_body={"alias": alias}))

    def log_tail(self, model_name: str, lines: int = 20) -> list[str]:
        """The last ``lines`` lines of a model's backend log, redacted by the server
        (``GET api/v1/logs/MODEL?tail=N&follow=false``: the stream ends after them)."""
        path = f"api/v1/logs/{quote(model_name, safe='')}?tail={int(lines)}&follow=false"
        with (
            map_http_errors(self.base_url),
            self._http.stream("GET", path, headers={"Accept": "text/event-stream"}) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise error_from_response(response)
            return [event["data"] for event in iter_sse(response.iter_lines())
                    if event.get("event") == "log"]

    def chat(self, model: str, messages: Sequence[Mapping[str, Any]], **params: Any) -> str:
        """Non-streaming ``chat/completions``; returns the assistant's text."""
        body = {"model": model, "messages": list(messages), **params, "stream": False}
        answer = self.request("POST", "api/v1/chat/completions", json_body=body)
        try:
            return str(answer["choices"][0]["message"].get("content") or "")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise local_error(
                502, "invalid_response", f"Unexpected completion: {answer!r:.200}"
            ) from exc

    def stream_chat(
        self, model: str, messages: Sequence[Mapping[str, Any]], **params: Any
    ) -> Iterator[str]:
        """Streaming ``chat/completions``: yield text pieces as the model generates them.

        An error envelope before the first byte raises ``ClientError`` with the server's message;
        an SSE error event mid-stream raises it at that point.
        """
        body = {"model": model, "messages": list(messages), **params, "stream": True}
        with (
            map_http_errors(self.base_url),
            self._http.stream("POST", "api/v1/chat/completions", json=body) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise error_from_response(response)
            for event in iter_sse(response.iter_lines()):
                data = event.get("data", "")
                if data.strip() == "[DONE]":
                    return
                if not data:
                    continue
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if isinstance(chunk, dict) and "error" in chunk:
                    err = chunk["error"]
                    message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
                    raise ClientError(
                        502, {"error": err} if isinstance(err, dict) else None, message
                    )
                for choice in chunk.get("choices", ()) if isinstance(chunk, dict) else ():
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield str(piece)

    def transcribe(
        self,
        model: str,
        path: str,
        *,
        language: str | None = None,
        response_format: str = "text",
        prompt: str | None = None,
        temperature: float | None = None,
        translate: bool = False,
    ) -> str | dict[str, Any]:
        """``POST api/v1/audio/transcriptions`` (``translations`` with ``translate``): the
        audio file at ``path`` as a multipart upload to a transcription model.

        The file is streamed from disk, not read into memory (the server bounds its size:
        413). ``text``, ``srt`` and ``vtt`` answer a string; ``json`` and ``verbose_json`` a
        dict (``{"text": ...}``, plus ``language``, ``duration`` and ``segments``). An error
        answer raises ``ClientError`` with the server's status and message.
        """
        route = "api/v1/audio/" + ("translations" if translate else "transcriptions")
        form: dict[str, str] = {"model": model, "response_format": response_format}
        if language is not None:
            form["language"] = language
        if prompt is not None:
            form["prompt"] = prompt
        if temperature is not None:
            form["temperature"] = repr(float(temperature))
        with open(path, "rb") as audio, map_http_errors(self.base_url):
            response = self._http.post(
                route, data=form,
                files={"file": (os.path.basename(path), audio, "application/octet-stream")})
            if response.status_code >= 400:
                raise error_from_response(response)
            if response_format in ("json", "verbose_json"):
                try:
                    return dict(response.json())
                except (ValueError, TypeError) as exc:
                    raise local_error(502, "invalid_response",
                                      f"{route} answered with non-JSON: "
                                      f"{response.text[:120]!r}") from exc
            return response.text

    def events(
        self, last_event_id: int | None = None, read_timeout: float = 5.0,
        on_open: Callable[[Callable[[], None]], None] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Follow ``GET api/v1/events`` (SSE); yield each router event as a dict.

        Resumes after ``last_event_id`` when given. Returns when the server ends the stream;
        raises ``ClientError`` (504 ``timeout`` when nothing, not even a keep-alive, arrived within
        ``read_timeout``; 404 when the server has no event stream). ``on_open`` gets, once the
        stream is open, a function that hangs it up from another thread: the reading thread's
        blocked read then ends at once instead of at its read timeout.
        """
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = str(last_event_id)
        timeout = httpx.Timeout(read_timeout, connect=5.0)
        with (
            map_http_errors(self.base_url),
            self._http.stream("GET", "api/v1/events", headers=headers, timeout=timeout) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise error_from_response(response)
            if on_open is not None:
                on_open(_hangup(response))
            for event in iter_sse(response.iter_lines()):
                try:
                    item = json.loads(event.get("data") or "null")
                except ValueError:
                    continue
                if isinstance(item, dict):
                    if "id" not in item and event.get("id", "").isdigit():
                        item["id"] = int(event["id"])
                    yield item


def _hangup(response: httpx.Response) -> Callable[[], None]:
    """A function that shuts down ``response``'s socket. ``shutdown`` (not ``close``) is what
    wakes a ``recv`` blocked in another thread on Linux; without a socket (another transport)
    it does nothing and the reader ends at its read timeout as before."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None

    def hangup() -> None:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    return hangup
