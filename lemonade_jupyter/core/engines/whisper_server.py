"""``lemonade-whisper-server``: whisper.cpp's ``whisper-server`` HTTP API, with an API key.

The router runs one such process per loaded transcription model (recipe ``whispercpp``),
exactly as it runs ``llama-server`` for the others: its own loopback port, its own random key,
readiness on ``/health``, SIGTERM to stop. The routes are whisper-server's:

* ``GET /health``: ``200 {"status": "ok"}`` once the model is loaded, ``503`` before;
* ``POST /inference``: a multipart form with ``file`` (WAV), ``response_format`` (``json``,
  ``text``, ``srt``, ``vtt``, ``verbose_json``), ``temperature``, ``language``, ``prompt`` and
  ``translate`` (:mod:`.whisper_formats` has the answers);

plus ``GET /props`` (``{"total_slots": 1, ...}``), which llama-server has and the router uses
to check that the server on its port takes its key. Every route but ``/health`` needs
``Authorization: Bearer <key>`` (401 without it) when a key was given.

Two ways to serve, one command line (:mod:`.whisper_args`): by default the model runs in this
process through the ``pywhispercpp`` wheel (:mod:`.whisper_model`), loaded in a worker thread
after the port is open (so ``/health`` says 503 while it loads), and transcriptions run in that
same single thread, one at a time, off the event loop. With ``--native BINARY``, whisper.cpp's
own ``whisper-server`` (built by ``lemonade-jupyter install-whisper-server``) does the work:
it has no API key, so it listens on a loopback port of its own and this process checks the key
and forwards (:mod:`.whisper_native`).

Every field a request sets is checked against an allowlist or a range before it reaches the
model; a bad one is a 400 ``{"error": {...}}`` and changes nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from .whisper_args import WhisperArgs, parse_args
from .whisper_audio import AudioError, decode_wav
from .whisper_formats import render
from .whisper_request import (
    MAX_UPLOAD_BYTES, MAX_WAITING, BadField, check_fields, error, read_form,
)

log = logging.getLogger("lemonade-whisper-server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Engine:
    """What serves the routes: the in-process model, or whisper.cpp's server behind us."""

    ready: bool

    async def start(self) -> None: ...
    async def inference(self, request: web.Request) -> web.StreamResponse: ...
    async def close(self) -> None: ...


class LocalEngine(Engine):
    """The model in this process (``pywhispercpp``), on one worker thread.

    Owns ``_model`` (written once, by the load in the worker) and ``_waiting`` (the loop)."""

    def __init__(self, args: WhisperArgs, on_fatal: Callable[[str], None]) -> None:
        self.ready = False
        self._args = args
        self._on_fatal = on_fatal
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="whisper")
        self._model: Any = None
        self._waiting = 0
        self._load: asyncio.Future[None] | None = None

    async def start(self) -> None:
        self._load = asyncio.ensure_future(self._load_model())

    async def _load_model(self) -> None:
        from .whisper_model import WhisperModel

        loop = asyncio.get_running_loop()
        try:
            self._model = await loop.run_in_executor(
                self._pool, WhisperModel, self._args.model, self._args.threads)
        except Exception as exc:  # the process has nothing to serve: say why and exit
            self._on_fatal(f"error: cannot load {self._args.model}: {exc}")
            return
        self.ready = True
        log.info("model loaded: %s", self._args.model)

    async def inference(self, request: web.Request) -> web.StreamResponse:
        from .whisper_model import Decode

        try:
            audio, fields = await read_form(request)
            choices = check_fields(fields, self._model.known_language)
            samples = decode_wav(audio)
        except (BadField, AudioError) as exc:
            return error(400, str(exc))
        if self._waiting >= MAX_WAITING:
            return error(503, "too many transcriptions waiting", "server_error")
        decode = Decode(language=choices["language"], translate=choices["translate"],
                        temperature=choices["temperature"], prompt=choices["prompt"])
        self._waiting += 1
        try:
            transcript = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._model.transcribe, samples, decode)
        finally:
            self._waiting -= 1
        body, ctype = render(transcript, choices["response_format"])
        return web.Response(text=body, headers={"Content-Type": ctype})

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def build_app(args: WhisperArgs, engine: Engine) -> web.Application:
    """The routes, behind the key check (``/health`` is open, like llama-server's)."""

    @web.middleware
    async def key_check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if args.api_key and request.path != "/health":
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {args.api_key}".encode()):
                return error(401, "Invalid API Key", "authentication_error")
        return await handler(request)

    async def health(_request: web.Request) -> web.Response:
        if engine.ready:
            return web.json_response({"status": "ok"})
        return web.json_response({"status": "loading model"}, status=503)

    async def props(_request: web.Request) -> web.Response:
        return web.json_response({"total_slots": 1, "model_path": args.model,
                                  "engine": "native" if args.native else "pywhispercpp"})

    async def inference(request: web.Request) -> web.StreamResponse:
        if not engine.ready:
            return error(503, "the model is loading", "server_error")
        return await engine.inference(request)

    app = web.Application(middlewares=[key_check], client_max_size=MAX_UPLOAD_BYTES)
    app.router.add_get("/health", health)
    app.router.add_get("/props", props)
    app.router.add_post("/inference", inference)
    return app


async def serve(args: WhisperArgs) -> int:
    """Listen, load, serve until SIGTERM/SIGINT (exit 0) or a fatal error (exit 1)."""
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def fatal(message: str) -> None:
        print(message, file=sys.stderr, flush=True)
        if not done.done():
            done.set_result(1)

    engine: Engine
    if args.native:
        from .whisper_native import NativeEngine

        engine = NativeEngine(args, fatal)
    else:
        engine = LocalEngine(args, fatal)
    runner = web.AppRunner(build_app(args, engine), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port).start()
    except OSError as exc:
        print(f"error: couldn't bind to {args.host}:{args.port}: {exc}", file=sys.stderr)
        await runner.cleanup()
        return 1
    print(f"{args.host}:{args.port}: whisper server listening", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: done.done() or done.set_result(0))
    await engine.start()
    try:
        return await done
    finally:
        await engine.close()
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``lemonade-whisper-server``)."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
