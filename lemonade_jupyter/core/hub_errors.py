"""A failed pull, told to a person: every failure of a download becomes a typed API error.

The messages name the problem and what to do ("the hub at URL could not be reached",
"repository not found", "gated: set HF_TOKEN"), never a Python class name: a user reads them in
a notebook. Anything unforeseen is logged with its traceback for the server's operator and
answered with a plain sentence that points at that log.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import TYPE_CHECKING

import httpx

from ..errors import (
    HubAccessError, HubAuthError, HubError, HubNotFoundError, HubUnavailableError,
    InsufficientStorageError, LemonadeError,
)
from . import hub_transfer
from .hub_transfer import HubAnswerError, HubStatusError

if TYPE_CHECKING:
    from .hub import HubEnv, HubRef

log = logging.getLogger(__name__)

_OFFLINE_HINT = ("Check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use only "
                 "models already in the cache.")


def hub_error(exc: BaseException, ref: HubRef, env: HubEnv) -> LemonadeError:
    """The API error for a failure of the hub, the network or the disk during a pull."""
    where = env.endpoint
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorageError(
            f"The disk of the Hugging Face cache ({env.cache_dir}) is full. "
            f"The partial file of {ref} was removed.", param="checkpoint")
    if isinstance(exc, HubStatusError):
        return _status_error(exc, ref, env)
    if isinstance(exc, HubAnswerError):
        return HubError(f"The hub at {where} gave an answer that is not a Hugging Face Hub's "
                        f"while pulling {ref}: {exc}. Check HF_ENDPOINT.", param="checkpoint")
    reason = _transport_reason(exc)
    if reason is not None:
        return HubUnavailableError(
            f"The hub at {where} could not be reached to pull {ref}: {reason}. {_OFFLINE_HINT}",
            param="checkpoint")
    if isinstance(exc, OSError):
        return HubError(f"The pull of {ref} failed writing to the Hugging Face cache "
                        f"({env.cache_dir}): {exc.strerror or 'a disk error'}",
                        param="checkpoint")
    log.error("Unexpected failure while pulling %s", ref, exc_info=exc)
    return HubError(f"The pull of {ref} failed unexpectedly; the Jupyter server log has the "
                    "details", param="checkpoint")


def _status_error(exc: HubStatusError, ref: HubRef, env: HubEnv) -> LemonadeError:
    where, repo, status, code = env.endpoint, ref.repo_id, exc.status, exc.error_code
    token_hint = ("the token in HF_TOKEN cannot read it" if env.token
                  else "set HF_TOKEN to a token that can read it")
    if status == 401:
        if env.token and code != "RepoNotFound":
            return HubAuthError(f"The hub at {where} refused the token in HF_TOKEN for {repo}: "
                                "set HF_TOKEN to a valid token", param="checkpoint")
        return HubAuthError(f"Repository {repo} was not found on {where}, or it is private or "
                            f"gated: {token_hint}", param="checkpoint")
    if status == 403 or code == "GatedRepo":
        return HubAccessError(
            f"{repo} on {where} is gated: accept its conditions at {where}/{repo} and set "
            f"HF_TOKEN to a token of that account "
            f"({'the token in HF_TOKEN has no access yet' if env.token else 'no HF_TOKEN is set'})",
            param="checkpoint")
    if status == 404:
        if code == "EntryNotFound":
            return HubNotFoundError(f"The {exc.what} is not on {where} (asked for {ref})",
                                    param="checkpoint")
        if code == "RevisionNotFound":
            return HubNotFoundError(f"{repo} has no revision 'main' on {where}",
                                    param="checkpoint")
        return HubNotFoundError(f"Repository {repo} was not found on {where}",
                                param="checkpoint")
    if status == 429:
        return HubUnavailableError(f"The hub at {where} asks to slow down (too many requests) "
                                   f"while pulling {ref}; try again in a minute",
                                   param="checkpoint")
    if status >= 500:
        return HubUnavailableError(f"The hub at {where} failed (HTTP {status}) while pulling "
                                   f"{ref}; try again later", param="checkpoint")
    return HubError(f"The hub at {where} refused the {exc.what} with HTTP {status} while "
                    f"pulling {ref}", param="checkpoint")


def _transport_reason(exc: BaseException) -> str | None:
    """Why a connection could not be made or broke, in words; None for another failure."""
    if isinstance(exc, httpx.ConnectTimeout):
        text = str(exc)
        if "resolve" in text:
            return text
        return f"no connection within {hub_transfer.CONNECT_TIMEOUT_S:g} s"
    if isinstance(exc, httpx.ConnectError):
        text = str(exc)
        if "resolve" in text:
            return text
        if _caused_by(exc, socket.gaierror) or "Name or service" in text or "nodename" in text:
            return "its host name does not resolve"
        if _caused_by(exc, ConnectionRefusedError) or "refused" in text.lower():
            return "the connection was refused (nothing listens there)"
        return "the connection failed"
    if isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)):
        return f"it sent nothing for {hub_transfer.READ_TIMEOUT_S:g} s"
    if isinstance(exc, httpx.TooManyRedirects):
        return "it redirected too many times"
    if isinstance(exc, httpx.TransportError):
        return "the connection broke"
    if isinstance(exc, ConnectionRefusedError):
        return "the connection was refused (nothing listens there)"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return "the connection broke"
    return None


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _depth in range(8):
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
