"""``GET lemonade/api/v1/logs/{model}``: a model's backend log as a server-sent event stream.

The last ``tail`` lines of its newest log first, then every new line as the backend writes it
(the file is polled :data:`POLL_S` apart), across reloads: a new backend starts a new file,
announced by a ``start`` event, and the stream goes on with it. Every line is redacted on its
way out (:func:`~lemonade_jupyter.core.backend_logs.redact_lines`): the backends' API keys and
the Jupyter token never leave.

The tail is read, redacted and formatted in a worker process
(:mod:`~lemonade_jupyter.core.log_worker` says why not on the loop, nor in a thread): 50
dashboards asking for a 10,000-line tail at once used to hold the loop, and ``/health`` with
it, for seconds. The follow steps, at most 1 MiB each and mostly a few lines, run in a thread.
"""

from __future__ import annotations

import asyncio
import json

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..core.backend_logs import LogFollower
from ..core.log_worker import log_events, tail_events
from ..core.validation import check_number
from ..errors import InvalidRequestError, ModelNotFoundError
from .base import EventStreamHandler
from .observe import KEEPALIVE_S

#: Seconds between two looks at the file.
POLL_S = 0.25
DEFAULT_TAIL = 100
MAX_TAIL = 10_000


class LogsHandler(EventStreamHandler):
    """``GET lemonade/api/v1/logs/{model}[?tail=N&follow=false]``: the backend log as SSE.

    ``tail`` (default 100, 0 to 10000) lines first; ``follow=false`` ends the stream after
    them. 404 for a name that is neither a model nor an alias.
    """

    @web.authenticated
    @authorized
    async def get(self, model: str) -> None:
        tail = self._tail()
        follow = self.get_argument("follow", "true").strip().lower()
        if follow not in ("true", "1", "false", "0"):
            raise InvalidRequestError("Parameter 'follow' must be true or false",
                                      param="follow")
        name = self.router.resolve(model)
        if name not in self.router.catalog:
            raise ModelNotFoundError(f"Model '{model}' is not in the catalog", param="model")
        follower = LogFollower(self.router.launcher.log_dir, name)
        first = await self._first_events(follower, tail)
        try:
            self.set_event_stream_headers()
            self.write(f": log of {name}\n\n".encode())
            self.write(first)
            await self.flush()
            if follow in ("true", "1"):
                await self._follow(follower)
        except StreamClosedError:
            return
        if not self._closed.is_set():
            self.finish()

    def _tail(self) -> int:
        raw = self.get_argument("tail", str(DEFAULT_TAIL))
        try:
            return int(check_number("tail", int(raw), minimum=0, maximum=MAX_TAIL,
                                    integer=True))
        except (ValueError, InvalidRequestError):
            raise InvalidRequestError(
                f"Parameter 'tail' must be an integer between 0 and {MAX_TAIL}",
                param="tail") from None

    async def _follow(self, follower: LogFollower) -> None:
        """Send new lines until the client goes; a ping after :data:`KEEPALIVE_S` of quiet."""
        quiet = 0.0
        while not self._closed.is_set():
            try:
                await asyncio.wait_for(self._closed.wait(), POLL_S)
                return
            except asyncio.TimeoutError:
                pass
            events = await asyncio.to_thread(_next_events, follower, self._secrets())
            if events:
                quiet = 0.0
                self.write(events)
                await self.flush()
                continue
            quiet += POLL_S
            if quiet >= KEEPALIVE_S:
                quiet = 0.0
                self.write(b": ping\n\n")
                await self.flush()

    async def _first_events(self, follower: LogFollower, tail: int) -> bytes:
        """The newest file's ``start`` event and its last ``tail`` lines, redacted (by a
        worker process; in a thread if none can serve)."""
        path = await asyncio.to_thread(follower.find_newest)
        if path is None:
            return b""
        secrets = self._secrets()
        try:
            events, follower.offset = await self.router.log_reader.read(path, tail, secrets)
        except (OSError, ValueError, EOFError, RuntimeError):
            events, follower.offset = await asyncio.to_thread(tail_events, path, tail, secrets)
        return _start_event(follower.generation) + events

    def _secrets(self) -> list[str]:
        """What must never be shown: every live backend's key and the Jupyter token."""
        keys = [m.backend.api_key for m in self.router.live_models() if m.backend is not None]
        token = getattr(self.identity_provider, "token", "") or self.settings.get("token", "")
        return [*keys, token] if isinstance(token, str) else keys


def _next_events(follower: LogFollower, secrets: list[str]) -> bytes:
    """The events of one follow step (in a thread): new lines, and a new file's ``start``
    and lines."""
    old, generation, new = follower.step()
    events = log_events(old, secrets)
    if generation is not None:
        events += _start_event(generation) + log_events(new, secrets)
    return events


def _start_event(generation: int) -> bytes:
    return f"event: start\ndata: {json.dumps({'generation': generation})}\n\n".encode()
