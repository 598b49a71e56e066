"""The Ollama API's inference routes: ``/api/chat``, ``/api/generate``, ``/api/embed`` and
``/api/embeddings``, under ``lemonade/ollama/``.

Each request is checked whole (its body translated by :mod:`.ollama_translate`, its options
by :mod:`.ollama_options`) before anything changes, then goes through the router's call path
(:class:`.ollama_base.OllamaHandler`). Answers stream as NDJSON unless ``stream: false``, as in
Ollama. A chat without messages, or a generate without a prompt, only loads the model (or, with
``keep_alive: 0``, unloads it), which is how Ollama's clients preload and free models.
"""

from __future__ import annotations

import time
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..errors import InvalidRequestError
from .ollama_base import OllamaHandler
from .ollama_options import OllamaOptions, parse_options
from .ollama_translate import (
    CHAT_KEYS, AnswerBuilder, chat_request, check_keys, embed_inputs, generate_request, now_iso,
)

CHAT_PATH = "/v1/chat/completions"
EMBED_PATH = "/v1/embeddings"


def _stream_flag(body: dict[str, Any]) -> bool:
    stream = body.get("stream", True)  # Ollama streams unless told not to
    if not isinstance(stream, bool):
        raise InvalidRequestError("Parameter 'stream' must be a boolean", param="stream")
    return stream


class _GeneratingHandler(OllamaHandler):
    """What ``/api/chat`` and ``/api/generate`` share: load-only calls and the answer."""

    chat = True

    async def load_only(self, asked: str, name: str, opts: OllamaOptions) -> None:
        if opts.unload_after:
            await self.after_answer(name, opts)
            reason = "unload"
        else:
            await self.router.load(name, options=opts.load, given=opts.given)
            reason = "load"
        line: dict[str, Any] = {"model": asked, "created_at": now_iso()}
        if self.chat:
            line["message"] = {"role": "assistant", "content": ""}
        else:
            line["response"] = ""
        self.write_json({**line, "done": True, "done_reason": reason})

    async def answer(self, asked: str, name: str, path: str, request: dict[str, Any],
                     opts: OllamaOptions, stream: bool) -> None:
        request["model"] = name
        self.check(name, path, request)
        started = time.monotonic()
        load_s = await self.prepare_model(name, opts)
        builder = AnswerBuilder(asked, chat=self.chat, from_chat=path == CHAT_PATH,
                                started=started, load_s=load_s)
        if not stream:
            answer = await self.post_engine(name, path, request, stats=True)
            await self.after_answer(name, opts)
            self.write_json(builder.whole(answer))
            return

        async def relay(event: dict[str, Any]) -> None:
            line = builder.chunk(event)
            if line is not None:
                await self.write_line(line)

        async def work() -> None:
            await self.stream_engine(name, path, request, relay)
            await self.write_line(builder.done())
            await self.after_answer(name, opts)

        await self.run_stream(work())


class ChatHandler(_GeneratingHandler):
    """``POST lemonade/ollama/api/chat``."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        check_keys(body, CHAT_KEYS)
        asked = str(body.get("model", body.get("name", "")))
        name = self.local_model(self.model_param(body))
        stream = _stream_flag(body)
        opts = parse_options(body.get("options"), body.get("keep_alive"))
        messages = body.get("messages")
        if messages is not None and not isinstance(messages, list):
            raise InvalidRequestError("Parameter 'messages' must be a list", param="messages")
        request = chat_request({**body, "messages": messages or []}, opts, stream)
        if not messages:
            await self.load_only(asked, name, opts)
            return
        await self.answer(asked, name, CHAT_PATH, request, opts, stream)


class GenerateHandler(_GeneratingHandler):
    """``POST lemonade/ollama/api/generate``."""

    chat = False

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        asked = str(body.get("model", body.get("name", "")))
        name = self.local_model(self.model_param(body))
        stream = _stream_flag(body)
        opts = parse_options(body.get("options"), body.get("keep_alive"))
        path, request = generate_request(body, opts, stream)
        if not body.get("prompt"):
            await self.load_only(asked, name, opts)
            return
        await self.answer(asked, name, path, request, opts, stream)


class EmbedHandler(OllamaHandler):
    """``POST lemonade/ollama/api/embed`` (``input``), and the older ``/api/embeddings``
    (``prompt``, one vector) with ``legacy``."""

    def initialize(self, legacy: bool = False) -> None:  # type: ignore[override]
        super().initialize()
        self.legacy = legacy

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        asked = str(body.get("model", body.get("name", "")))
        name = self.local_model(self.model_param(body))
        texts = embed_inputs({k: v for k, v in body.items() if k != "name"},
                             legacy=self.legacy)
        opts = parse_options(body.get("options"), body.get("keep_alive"), sampling=False)
        request = {"model": name, "input": texts}
        self.check(name, EMBED_PATH, request)
        started = time.monotonic()
        load_s = await self.prepare_model(name, opts)
        answer = await self.post_engine(name, EMBED_PATH, request)
        await self.after_answer(name, opts)
        vectors = [d["embedding"] for d in sorted(answer.get("data") or [],
                                                  key=lambda d: d.get("index", 0))]
        if self.legacy:
            self.write_json({"embedding": vectors[0] if vectors else []})
            return
        self.write_json({
            "model": asked, "embeddings": vectors,
            "total_duration": int((time.monotonic() - started) * 1e9),
            "load_duration": int(load_s * 1e9),
            "prompt_eval_count": (answer.get("usage") or {}).get("prompt_tokens", 0),
        })
