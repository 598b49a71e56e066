"""whisper.cpp's own ``whisper-server`` behind our wrapper, which adds the API key.

whisper.cpp's server (1.8.x) has no API key option: anyone who reaches its port may use it.
The router never exposes a backend without a key, so it does not start the native server
bare: ``lemonade-whisper-server --native BINARY`` starts it as its child on a loopback port
of its own (never the one the router knows), checks the key on every request, and forwards
``/inference`` to it. The child dies with the wrapper (same process group, and the
parent-death signal), and when the child exits the wrapper exits too, so the router sees a
crash as a crash.

What is left open: another process of the same machine that finds the child's loopback port
can use it without a key (the wrapper makes the port unadvertised, not secret). Where that
matters, the in-process engine (the default without a native build) has no such port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable

import aiohttp
from aiohttp import web

from ..process import parent_death_preexec
from .whisper_args import WhisperArgs, native_argv
from .whisper_request import BadField, check_fields, error, read_form

#: How long the native server may take to load before the wrapper gives up (the router's
#: own ready timeout is usually shorter and stops us first).
LOAD_DEADLINE_S = 600.0


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NativeEngine:
    """Runs and forwards to the native ``whisper-server``; owns its child process."""

    def __init__(self, args: WhisperArgs, on_fatal: Callable[[str], None]) -> None:
        self.ready = False
        self._args = args
        self._on_fatal = on_fatal
        self._port = _free_loopback_port()
        self._proc: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._watch: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            *native_argv(self._args.native, self._args.model, self._port, self._args.threads),
            stdin=asyncio.subprocess.DEVNULL, env=dict(os.environ),
            preexec_fn=parent_death_preexec())
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        self._watch = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        """Wait for the child's ``/health``, then for its exit (either way a fatal error
        ends the wrapper when the child is gone)."""
        assert self._proc is not None and self._session is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOAD_DEADLINE_S
        exited = asyncio.ensure_future(self._proc.wait())
        while not self.ready and loop.time() < deadline and not exited.done():
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self._session.get(f"{self.url}/health",
                                             timeout=aiohttp.ClientTimeout(total=2)) as r:
                    self.ready = r.status == 200
            if not self.ready:
                await asyncio.wait({exited}, timeout=0.05)
        if not self.ready and not exited.done():
            self._on_fatal(f"error: whisper-server did not load in {LOAD_DEADLINE_S:.0f} s")
            return
        code = await exited
        self.ready = False
        self._on_fatal(f"error: whisper-server exited with code {code}")

    async def inference(self, request: web.Request) -> web.StreamResponse:
        """Check the form like the in-process engine does, then send whisper-server a new
        form with only the checked fields."""
        assert self._session is not None
        try:
            audio, fields = await read_form(request)
            choices = check_fields(fields, lambda _code: True)
        except BadField as exc:
            return error(exc.status, str(exc))
        form = aiohttp.FormData()
        form.add_field("file", audio, filename="audio.wav", content_type="audio/wav")
        form.add_field("response_format", choices["response_format"])
        form.add_field("temperature", str(choices["temperature"]))
        form.add_field("language", choices["language"])
        form.add_field("translate", "true" if choices["translate"] else "false")
        if choices["prompt"]:
            form.add_field("prompt", choices["prompt"])
        try:
            async with self._session.post(f"{self.url}/inference", data=form) as upstream:
                data = await upstream.read()
                return web.Response(body=data, status=upstream.status, headers={
                    "Content-Type": upstream.headers.get("Content-Type", "application/json")})
        except aiohttp.ClientError as exc:
            return error(502, f"whisper-server: {exc}", "server_error")

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except asyncio.TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._session is not None:
            await self._session.close()
