"""The base handler: Jupyter auth, JSON bodies, and the one place errors are rendered.

Handlers raise; only :meth:`LemonadeHandler.write_error` turns an exception into the OpenAI-style
envelope ``{"error": {"message", "type", "code"?, "param"?}}``. A :class:`LemonadeError` brings
its own status, type and code; tornado's ``HTTPError`` (protocol errors: 403 without login,
405, 413) gets a type from its status; anything else is a 500 with a constant message and no
traceback (the traceback goes to the server log).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from ..api_paths import ROUTE_PREFIX
from ..core.events import acting_user
from ..core.remote_hops import HOP_HEADER
from ..core.router import Router
from ..errors import InvalidRequestError, LemonadeError, error_body
from ..core.quotas import InFlight
from .node_access import caller_of, check_node_request, is_inference

#: Request bodies larger than this are refused with 413 before we parse them.
MAX_BODY_BYTES = 8 * 1024 * 1024

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class LemonadeHandler(APIHandler):
    """Base of every lemonade route: authenticated, authorized as ``lemonade``, JSON errors."""

    auth_resource = "lemonade"

    @property
    def router(self) -> Router:
        return self.settings["lemonade_router"]  # type: ignore[no-any-return]

    async def prepare(self) -> None:  # type: ignore[override]
        """Refuse anonymous callers (403) whatever the method, requests that came back to this
        router (508, ``core/remote_hops.py``), then oversized bodies (413).

        Jupyter's default ``allow_unauthenticated_access=True`` only guards methods that carry
        ``@web.authenticated``, so without this check an anonymous GET on a POST-only route got
        a 405 (the route answered before any login) instead of a 403. Methods Jupyter marks
        ``@allow_unauthenticated`` (the CORS preflight ``OPTIONS``, which browsers send without
        credentials) stay open, as everywhere in Jupyter.
        """
        await super().prepare()
        method = getattr(self, (self.request.method or "").lower(), None)
        if self.current_user is None and not getattr(method, "__allow_unauthenticated", False):
            raise web.HTTPError(403)
        self._check_caller()
        # A request this router forwarded came back (a remote model leads here): 508 at once.
        self.router.remote.hops.check(self.request.headers.get(HOP_HEADER))
        self.check_body_size()

    def body_size(self) -> int:
        """The body's size: the larger of its ``Content-Length`` and what arrived."""
        length = self.request.headers.get("Content-Length", "")
        return max(int(length) if length.isdigit() else 0, len(self.request.body or b""))

    def check_body_size(self) -> None:
        """Refuse a body over :data:`MAX_BODY_BYTES` (413); a route of uploads has its own."""
        if self.body_size() > MAX_BODY_BYTES:
            raise web.HTTPError(413, f"Request body larger than {MAX_BODY_BYTES} bytes")

    def _check_caller(self) -> None:
        """Name the user in the router's events, and in node mode check what the caller may do
        (``server/node_access.py``) before the handler touches anything."""
        user = self.current_user
        if user is None:
            return
        if not self.settings.get("lemonade_node_mode"):
            # A single-user server has one user (a token login is a new anonymous identity
            # on every request): the server's own user owns what is loaded.
            acting_user.set(self.settings.get("lemonade_server_user"))
            return
        caller = caller_of(user)
        acting_user.set(caller.name or None)
        prefix = url_path_join(self.base_url, ROUTE_PREFIX)
        path = self.request.path or ""
        route = path[len(prefix):] if path.startswith(prefix) else path
        method = (self.request.method or "").upper()
        check_node_request(self.router, self.settings.get("lemonade_owners"), caller,
                           method, route, self.request.body, self.path_kwargs)
        if is_inference(route, method):  # last: a refused request is not counted
            in_flight = self.settings.setdefault("lemonade_in_flight", InFlight())
            in_flight.enter(caller.name, int(self.router.settings.node_max_requests_per_user))
            self._in_flight = (in_flight, caller.name)

    def on_finish(self) -> None:
        """Count the caller's request in flight no more (node mode; see ``core/quotas.py``)."""
        entry, self._in_flight = getattr(self, "_in_flight", None), None
        if entry is not None:
            entry[0].leave(entry[1])
        super().on_finish()

    def json_body(self) -> dict[str, Any]:
        """The request body as a JSON object; raise InvalidRequestError (400) otherwise."""
        raw = self.request.body or b""
        if not raw.strip():
            raise InvalidRequestError("Invalid JSON body: the request body is empty")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequestError(f"Invalid JSON body: {exc}") from None
        except RecursionError:  # deeply nested arrays/objects (found by tests/reliability fuzzing)
            raise InvalidRequestError("Invalid JSON body: nested too deeply") from None
        if not isinstance(data, dict):
            raise InvalidRequestError("Invalid JSON body: expected a JSON object")
        return data

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Expected errors get one log line; only unexpected ones get a traceback."""
        if isinstance(value, LemonadeError):
            level = self.log.warning if value.status_code >= 500 else self.log.info
            level("%s %s -> %s %s", self.request.method, self.request.path,
                  value.status_code, value.message.splitlines()[0] if value.message else "")
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Render any exception as the JSON error envelope (never a traceback)."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, LemonadeError):
            self.set_status(exc.status_code)
            for name, value in exc.headers().items():
                self.set_header(name, value)
            body = exc.to_body()
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message or self._reason or "HTTP error"
            if exc.args:
                try:
                    message = message % exc.args
                except (TypeError, ValueError):
                    pass
            body = error_body(message, _TYPE_BY_STATUS.get(status_code, "server_error"))
        else:
            if exc is not None:
                self.log.error("Unhandled error in %s", self.request.path, exc_info=kwargs["exc_info"])
            body = error_body(
                "Internal error in the lemonade router; see the Jupyter server log",
                "server_error", code="internal_error",
            )
        self.finish_error(body)

    def finish_error(self, body: dict[str, Any]) -> None:
        """Send an error envelope; an API with another error shape (Ollama's) reshapes it."""
        self.clear_header("Content-Type")
        self.finish(json.dumps(body))

    def set_event_stream_headers(self) -> None:
        """Headers of a server-sent event stream: never cached, never buffered by a proxy."""
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")


class PolledHandler(LemonadeHandler):
    """A GET that dashboards poll: it must not keep an idle Jupyter server alive."""

    _track_activity = False


class EventStreamHandler(PolledHandler):
    """A GET that streams server-sent events until the client goes (``_closed`` is then set)."""

    def initialize(self) -> None:
        self._closed = asyncio.Event()

    def on_connection_close(self) -> None:
        self._closed.set()
