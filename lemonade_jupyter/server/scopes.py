"""The JupyterHub scopes of a node router, and the one table of which route needs which.

In node mode (one router for every user of a hub, ``server/node.py``) a caller is a Hub user or
token with scopes. The hub's admin declares three custom scopes and grants them by role
(``docs/jupyterhub_config.py``):

* ``custom:lemonade:use``: inference, the model list, health and events, and loading and
  unloading the node's models (catalog or already downloaded);
* ``custom:lemonade:pin``: pinning and unpinning one's own models;
* ``custom:lemonade:admin``: everything else: pinning, unpinning and unloading anyone's model,
  settings, hub pulls, remote models, local checkpoints outside the node's model folders.

:data:`ROUTE_SCOPES` gives the scope every route needs whatever its body; what a body may add
(a pin, someone else's model, a hub checkpoint) is decided in ``server/node_access.py`` from
:data:`USE`, :data:`PIN` and :data:`ADMIN`. ``tests/unit/test_scopes.py`` checks that every
route of ``server/routes.py`` is listed here.
"""

from __future__ import annotations

import re

from ..api_paths import AUDIO_ROUTES
from .engine_routes import PROXIED

USE = "custom:lemonade:use"
PIN = "custom:lemonade:pin"
ADMIN = "custom:lemonade:admin"

#: Every scope of the node, the way a hub config declares them.
ALL_SCOPES: tuple[str, ...] = (USE, PIN, ADMIN)

#: Route (as written in ``server/routes.py``, under ``lemonade/``) -> the scope it needs, or
#: a scope per method where reading and changing differ.
ROUTE_SCOPES: dict[str, str | dict[str, str]] = {
    "api/v1/health": USE,
    "api/v1/models": USE,
    "api/v1/load": USE,
    "api/v1/unload": USE,
    "api/v1/pull": USE,  # the body decides: hub pulls, remote models, far-away files need admin
    "api/v1/pull/cancel": ADMIN,
    "api/v1/delete": ADMIN,
    "api/v1/alias": {"GET": USE, "POST": ADMIN},
    "api/v1/alias/remove": ADMIN,
    "internal/pin": PIN,
    "internal/config": USE,
    "internal/set": ADMIN,
    "internal/simulate-vram-pressure": ADMIN,
    "api/v1/events": USE,
    "api/v1/logs/(?P<model>[^/]+)": USE,  # and the model's owner (or an admin)
    "api/v1/memory/history": USE,
    "metrics": USE,
    "api/v1/stats": USE,
    "page": USE,  # the page shows admins' buttons to admins only; each button's route checks
    "api/v1/models/(?P<model>[^/]+)": USE,
    # The engine's inference routes (server/engine_routes.py).
    **{f"api/v1/{path}": USE for path in PROXIED},
    # OpenAI's audio routes (server/audio.py).
    **{f"api/v1/{path}": USE for path in AUDIO_ROUTES},
    # Ollama's API (server/ollama.py, server/ollama_models.py): its pulls are hub pulls and its
    # delete forgets a model for everyone.
    **{f"ollama/api/{path}": USE
       for path in ("chat", "generate", "embed", "embeddings", "tags", "ps", "show", "version")},
    "ollama/api/pull": ADMIN,
    "ollama/api/delete": ADMIN,
}

_COMPILED = [(re.compile(path), scope) for path, scope in ROUTE_SCOPES.items()]


def route_scope(route: str, method: str = "POST") -> str:
    """The scope ``method`` on the route at ``route`` (the path under ``lemonade/``) needs;
    :data:`ADMIN` for a path or a method the table does not know (closed by default)."""
    for pattern, scope in _COMPILED:
        if pattern.fullmatch(route):
            return scope if isinstance(scope, str) else scope.get(method.upper(), ADMIN)
    return ADMIN


def has_scope(granted: frozenset[str] | set[str], scope: str) -> bool:
    """True when ``granted`` holds ``scope``; ``admin`` holds every other lemonade scope."""
    return scope in granted or ADMIN in granted
