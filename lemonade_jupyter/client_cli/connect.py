"""How the CLI finds the router, and how its failures become exit codes.

The router is found the way a kernel finds it (:func:`..kernel.discovery.discover` in
``server`` mode: ``LEMONADE_JUPYTER_URL``/``LEMONADE_JUPYTER_TOKEN``, JupyterHub's variables,
then the running Jupyter servers that answer the lemonade health route); ``--url`` and
``--token`` override it. The CLI never starts a router of its own.

Exit codes (distinct, so scripts can tell them apart):

* 0: done;
* 1: the router failed (a 5xx other than "cannot reach it");
* 2: bad input: a usage error, or the API's 400;
* 3: refused: any other 4xx (404 unknown model, 409 every slot pinned, 403 login...);
* 4: not reachable: no server found, connection refused, timeout.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ..errors import ClientError
from ..kernel.client import RouterClient
from ..kernel.discovery import ENV_TOKEN, discover

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4

#: Error types the client gives a request that never got an answer.
_UNREACHABLE_TYPES = {"connection_error", "timeout"}


class UsageError(Exception):
    """A command line the CLI refuses before asking the router (exit 2)."""


class Refused(Exception):
    """A request the CLI refuses on the router's behalf, as the API would (exit 3)."""


class Unreachable(Exception):
    """No router to talk to (exit 4)."""


def connect(url: str | None, token: str | None, timeout: float = 600.0) -> RouterClient:
    """The router's client: at ``url`` when given, else discovered like a kernel does."""
    if url:
        return RouterClient(url, token if token is not None else os.environ.get(ENV_TOKEN, ""),
                            kind="explicit", source=f"{url} (from --url)", timeout=timeout)
    try:
        return discover(token=token, mode="server", timeout=timeout)
    except ClientError as exc:
        raise Unreachable(exc.message) from None


def exit_code(exc: BaseException) -> int:
    """The exit code of a failure (see the module docstring)."""
    if isinstance(exc, UsageError):
        return EXIT_BAD_INPUT
    if isinstance(exc, Refused):
        return EXIT_REFUSED
    if isinstance(exc, Unreachable):
        return EXIT_UNREACHABLE
    if isinstance(exc, ClientError):
        err: Any = (exc.body or {}).get("error") if isinstance(exc.body, dict) else None
        kind = err.get("type") if isinstance(err, dict) else None
        if kind in _UNREACHABLE_TYPES:
            return EXIT_UNREACHABLE
        if exc.status_code == 400:
            return EXIT_BAD_INPUT
        if 400 < exc.status_code < 500:
            return EXIT_REFUSED
    return EXIT_FAILED


def fail(exc: BaseException) -> int:
    """Print the one-line message of a failure on stderr; return its exit code."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, ClientError) and exc.status_code in (401, 403):
        message += f" (wrong or missing token? give --token or ${ENV_TOKEN})"
    print(f"lemonade-jupyter: {message.splitlines()[0] if message else message}",
          file=sys.stderr)
    return exit_code(exc)
