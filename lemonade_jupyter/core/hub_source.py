"""Which hub a curated model may come from: any if its entry pins its files, else the official one.

A curated name promises a particular model. Where its entry in ``curated_models.json`` pins the
size and sha256 of each file, :mod:`.hub_fetch` checks what arrives, so any ``HF_ENDPOINT``
(a mirror, a local hub) may serve it. Where it pins nothing, the only thing that vouches for the
bytes is the hub itself, so such an entry is pulled only from the official Hugging Face Hub,
``https://huggingface.co`` over TLS; a mirror could otherwise serve any file under the curated
name. The endpoint is matched against that one allowed origin (scheme, host and port), never
against a list of refused ones.

A checkpoint pulled under a ``user.`` name is the user's own choice of source and is not
concerned: the catalog promises nothing about it.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from ..errors import UnverifiedSourceError
from .hub import DEFAULT_ENDPOINT
from .hub_fetch import Checks

#: The one hub an unpinned curated model may come from (``DEFAULT_ENDPOINT``'s parts).
OFFICIAL_SCHEME, OFFICIAL_HOST, OFFICIAL_PORT = "https", "huggingface.co", 443
#: The script that pins the figures (in a clone of the repository).
FIGURES_SCRIPT = "scripts/curated_figures.py --write"


def is_official(endpoint: str) -> bool:
    """Whether ``endpoint`` is the official hub: https, huggingface.co, port 443, no path.

    Anything else (another host, plain http, a port, credentials, a path, a query) is not,
    including spellings that merely look alike (``huggingface.co.example``)."""
    try:
        parts = urlsplit(endpoint.strip())
        port = parts.port
    except ValueError:
        return False
    return (parts.scheme.lower() == OFFICIAL_SCHEME
            and (parts.hostname or "") == OFFICIAL_HOST
            and port in (None, OFFICIAL_PORT)
            and parts.username is None and parts.password is None
            and parts.path in ("", "/") and not parts.query and not parts.fragment)


def require_trusted_source(name: str, checkpoint: str, mmproj: str | None,
                           checks: Checks | None, endpoint: str) -> None:
    """Refuse, before anything is fetched, a curated model without pinned figures from a hub
    other than the official one; UnverifiedSourceError (403) saying what to do instead."""
    if checks is not None or is_official(endpoint):
        return
    body = {"model_name": f"user.{name}", "checkpoint": checkpoint}
    if mmproj:
        body["mmproj"] = mmproj
    raise UnverifiedSourceError(
        f"'{name}' is a curated model whose entry pins no size and sha256 for its files, so "
        f"it is pulled only from the official hub ({DEFAULT_ENDPOINT}); HF_ENDPOINT is "
        f"{endpoint}, which could serve another model under its name: refused, nothing "
        f"downloaded. Either pin its figures in the curated list (run python "
        f"{FIGURES_SCRIPT} on a machine that reaches {DEFAULT_ENDPOINT}), or pull the "
        f"checkpoint from this hub under a name of your own: {json.dumps(body)}",
        param="model_name")
