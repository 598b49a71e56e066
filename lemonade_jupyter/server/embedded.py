"""The embedded server: the same handlers and router, without a Jupyter server.

Used by the kernel when it runs outside Jupyter (plain IPython, nbclient) or finds no server.
It runs a tornado application with exactly the routes of the extension, protected by a random
token through jupyter_server's own ``IdentityProvider``, on 127.0.0.1, on a thread of its own
with its own asyncio loop (never the kernel's). The kernel talks to it over HTTP like to any
server, so there is one code path for everything. The thread lives as long as the router, which
matters: backends get a parent-death signal tied to the thread that spawned them.

Its data folder is its own, never the Jupyter server's: ``$LEMONADE_EMBEDDED_DATA_DIR``, else
``<jupyter data dir>/lemonade-embedded``. Sharing the server's folder made a kernel restore the
server's pinned models into a second set of ``llama-server`` processes, and two routers rewrite
one state file. A :class:`~lemonade_jupyter.core.persistence.DataDirLock` is held for the
router's life: a folder given explicitly (argument or variable) that another router holds is
refused with :class:`~lemonade_jupyter.core.persistence.DataDirInUseError`; when the default
folder is held (a second kernel with its own embedded router), this router runs on a temporary
folder instead, removed when it stops, and says so in :attr:`EmbeddedServer.note`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.auth.authorizer import AllowAllAuthorizer
from jupyter_server.auth.identity import IdentityProvider
from tornado.httpserver import HTTPServer
from tornado.web import Application

from ..core.launcher import BackendLauncher
from ..core.persistence import DataDirInUseError, DataDirLock
from ..core.router import Router
from ..core.settings import RouterSettings, ServerOptions
from .compose import build_services
from .jupyter_config import configured_settings
from .remote_hosts import OWN_PORT_SETTING, own_server
from .routes import handlers

log = logging.getLogger(__name__)
_access_log = logging.getLogger("tornado.access")


def _log_request(handler: object) -> None:
    """Access log at debug level: in a notebook, a 409 is an answer, not a warning to print."""
    request = handler.request  # type: ignore[attr-defined]
    status = handler.get_status()  # type: ignore[attr-defined]
    level = logging.ERROR if status >= 500 else logging.DEBUG
    _access_log.log(level, "%d %s %s", status, request.method, request.uri)


#: Overrides the embedded router's data folder (a folder of its own, never the server's).
ENV_DATA_DIR = "LEMONADE_EMBEDDED_DATA_DIR"


def default_data_dir() -> Path:
    """The embedded router's data folder: ``$LEMONADE_EMBEDDED_DATA_DIR`` or
    ``<jupyter data dir>/lemonade-embedded`` (the server's is ``<jupyter data dir>/lemonade``)."""
    explicit = os.environ.get(ENV_DATA_DIR)
    if explicit:
        return Path(explicit).expanduser()
    return Path(jupyter_data_dir()) / "lemonade-embedded"


class EmbeddedServer:
    """A router plus its HTTP API on a private thread; ``start()`` blocks until it serves.

    ``settings`` and ``options`` are the rows of the settings table, as for the Jupyter server;
    left out, they are what the Jupyter server's config files say (``c.LemonadeApp.*``, read by
    :func:`.jupyter_config.configured_settings`, defaults and ``$LEMONADE_BACKEND_THREADS``
    included), so a kernel's router runs as the user configured the server's. The services are
    built by the same ``compose.build_services``. ``llama_server_path`` is a shorthand for
    ``options.llama_server_path``; ``options.data_dir`` is not read (see ``data_dir``).
    ``launcher`` (code only, never configuration) replaces what starts backends: the test suite
    runs the whole app on in-memory ones.
    """

    def __init__(
        self,
        *,
        data_dir: Path | None = None,
        settings: RouterSettings | None = None,
        options: ServerOptions | None = None,
        llama_server_path: str | None = None,
        port: int = 0,
        launcher: BackendLauncher | None = None,
    ) -> None:
        self.token = secrets.token_urlsafe(24)
        self.url = ""
        #: Whether the folder was chosen by the caller or the environment (then a held lock is
        #: an error) or is the default one (then a temporary folder is used instead).
        self._explicit_dir = data_dir is not None or bool(os.environ.get(ENV_DATA_DIR))
        self._requested_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        self._data_dir = self._requested_dir
        self._lock: DataDirLock | None = None
        self._temp_dir: Path | None = None
        #: A sentence about where the data lives when it is not the usual folder ('' if it is).
        self.note = ""
        if settings is None or options is None:
            configured = configured_settings()
            settings = configured[0] if settings is None else settings
            options = configured[1] if options is None else options
        self._settings: RouterSettings = settings
        if llama_server_path is not None:
            options = replace(options, llama_server_path=llama_server_path)
        self._options = options
        self._port = port
        self._launcher = launcher  # None: llama-server processes (see build_services)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.router: Router | None = None

    @property
    def data_dir(self) -> Path:
        """The folder this router keeps its state and user models in."""
        return self._data_dir

    def _take_data_dir(self) -> None:
        """Lock the data folder; fall back to a temporary one when the default is held."""
        lock = DataDirLock(self._data_dir)
        try:
            lock.acquire()
        except DataDirInUseError:
            if self._explicit_dir:
                raise
            held = self._data_dir
            self._temp_dir = Path(tempfile.mkdtemp(prefix="lemonade-embedded-"))
            self._data_dir = self._temp_dir
            lock = DataDirLock(self._data_dir)
            lock.acquire()
            pid = DataDirLock(held).holder()
            self.note = (
                f"{held} is used by another embedded router{f' (pid {pid})' if pid else ''}; "
                f"this one keeps its state in {self._data_dir} until it stops"
            )
            log.warning("lemonade: %s", self.note)
        self._lock = lock

    def _give_back_data_dir(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()
        temp, self._temp_dir = self._temp_dir, None
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
            self._data_dir, self.note = self._requested_dir, ""

    def start(self, timeout_s: float = 60.0) -> None:
        """Start the thread and wait until the API answers; raise what stopped it.

        Raises :class:`~lemonade_jupyter.core.persistence.DataDirInUseError` when an explicit
        data folder is held by another router.
        """
        if self._thread is not None:
            return
        self._take_data_dir()
        self._thread = threading.Thread(target=self._run, name="lemonade-embedded", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("The embedded lemonade router did not start in time")
        if self._error is not None:
            raise RuntimeError(f"The embedded lemonade router failed: {self._error}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop every backend and the thread (idempotent)."""
        loop, stopped = self._loop, self._stopped
        if loop is None or stopped is None or self._thread is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(stopped.set)
        self._thread.join(timeout_s)
        self._thread = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start(); the thread must not die silently
            self._error = exc
            log.exception("Embedded lemonade router failed")
        finally:
            self._ready.set()
            loop.close()
            self._give_back_data_dir()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        services = build_services(self._settings, self._options, data_dir=self._data_dir,
                                  launcher=self._launcher)
        self.router = services.router
        identity = IdentityProvider(token=self.token)
        app = Application(
            handlers("/"),
            base_url="/",
            identity_provider=identity,
            authorizer=AllowAllAuthorizer(identity_provider=identity),
            serverapp=None,
            xsrf_cookies=False,
            cookie_secret=secrets.token_bytes(32),
            log_function=_log_request,
            **services.handler_settings(),
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._port))
        sock.listen(128)
        sock.setblocking(False)
        server = HTTPServer(app, max_body_size=64 * 1024 * 1024)
        server.add_sockets([sock])
        port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/"
        app.settings[OWN_PORT_SETTING] = port  # a remote model may not point back here
        await services.start(own_server(app.settings))
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            server.stop()
            await services.stop()
            await server.close_all_connections()
