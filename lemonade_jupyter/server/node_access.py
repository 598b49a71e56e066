"""Who may do what on a node router: scopes per route, owners, and the locked-down surface.

A node router (``server/node.py``) serves every user of a JupyterHub, so before any handler
runs, :func:`check_node_request` decides from the caller's Hub scopes, the route
(``server/scopes.py``), the request body and the model's owner (``core/owners.py``) whether it
may go on. It raises before anything is touched, so a refused request changes nothing:

* a scope the request needs and the caller lacks: 403 ``missing_scope`` naming the scope;
* a rule of the locked-down surface: 403 ``locked_down`` naming the rule:

  - ``llamacpp_args``: only allowlisted flags (``core/engine_flags.py``), for everyone;
  - ``node_model_folders``: a local checkpoint only from the node's model folders (admins may
    register other files);
  - ``remote_key_envs``: a remote model's ``api_key_env`` only among the names the node's admin
    lends (``core/remote_rules.py``), for everyone;
  - ``log_owner``: a backend's log only for the model's owner and admins;

* a pin over the caller's quota (pins, pinned memory): 409 ``quota_exceeded`` with the figures
  (``core/quotas.py``; the quota of requests in flight is counted by ``server/base.py``).

Unpinned models stay shared: any user's load may evict another user's idle unpinned model (the
router's LRU and fit rules, unchanged); what is guarded here is the explicit acts on someone
else's model: pin, unpin, unload, and reloading their pinned model with other options.

The checks read the body the handler will read again; a body that does not parse is left to the
handler, which answers 400 as in a single-user server.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..api_paths import AUDIO_ROUTES
from ..core.engine_flags import PARAM as ARGS_PARAM
from ..core.engine_flags import refusal_reason, split_args
from ..core.hub import parse_checkpoint
from ..core.owners import OwnerRegistry
from ..core.quotas import check_pin as check_pin_quota
from ..core.remote_rules import key_env_allowed
from ..core.router import Router
from ..errors import LemonadeError, LockedDownError, MissingScopeError
from .engine_routes import PROXIED
from .scopes import ADMIN, PIN, has_scope, route_scope

#: Keys of a ``/load`` body that are not load options.
_NOT_OPTIONS = frozenset({"model_name", "model", "pinned"})


@dataclass(frozen=True)
class Caller:
    """A Hub user (or service) and the scopes of the token or login it came with."""

    name: str
    scopes: frozenset[str]

    def require(self, scope: str, what: str) -> None:
        """Raise MissingScopeError unless the caller holds ``scope`` (admin holds all)."""
        if not has_scope(self.scopes, scope):
            raise MissingScopeError(scope, what)

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes


def server_user() -> str | None:
    """The user of a single-user server: the Hub's name for it, else the system's."""
    try:
        return os.environ.get("JUPYTERHUB_USER") or getpass.getuser() or None
    except (KeyError, OSError):  # no name for this uid
        return None


def caller_of(user: Any) -> Caller:
    """The caller behind Jupyter's ``current_user``: its Hub model's name and scopes (a user
    that did not come through the Hub has none)."""
    hub = getattr(user, "hub_user", None) or {}
    scopes = hub.get("scopes") if isinstance(hub, dict) else None
    name = hub.get("name") if isinstance(hub, dict) else None
    return Caller(str(name or getattr(user, "username", "")),
                  frozenset(s for s in scopes or () if isinstance(s, str)))


def check_node_request(router: Router, owners: OwnerRegistry | None, caller: Caller,
                       method: str, route: str, body: bytes, path_kwargs: dict[str, str]
                       ) -> None:
    """Raise a ForbiddenError when ``caller`` may not make this request; return otherwise.

    ``route`` is the path under ``lemonade/``; ``path_kwargs`` are the route's named groups."""
    scope = route_scope(route, method)
    caller.require(scope, f"{method} lemonade/{route}")
    if route.startswith("api/v1/logs/"):
        _check_log_reader(router, owners, caller, path_kwargs.get("model", ""))
        return
    data = _json_object(body) if method == "POST" else None
    if data is None:
        return
    check = _BODY_RULES.get(route)
    if check is not None:
        check(router, owners, caller, data)


def is_inference(route: str, method: str) -> bool:
    """Whether the request runs a model (the engine's routes, Ollama's chat, generate and
    embeddings): what the quota of requests in flight per user counts."""
    return method == "POST" and route in _INFERENCE_ROUTES


_INFERENCE_ROUTES = frozenset(
    {f"api/v1/{path}" for path, engine in PROXIED.items() if engine.uses_slot}
    | {f"api/v1/{path}" for path in AUDIO_ROUTES}
    | {f"ollama/api/{path}" for path in ("chat", "generate", "embed", "embeddings")})


# -- per route ---------------------------------------------------------------------------------
def _check_load(router: Router, owners: OwnerRegistry | None, caller: Caller,
                body: dict[str, Any]) -> None:
    name = _model_name(router, body)
    if body.get("pinned") is True:
        caller.require(PIN, "Loading a model pinned")
    if name is not None:
        live = router.get_live(name)
        owner = owners.get(name) if owners is not None else None
        if live is not None and owner not in (None, caller.name):
            if "pinned" in body:
                caller.require(ADMIN, f"Pinning or unpinning {owner}'s model '{name}'")
            if live.pinned and set(body) - _NOT_OPTIONS:
                caller.require(ADMIN, f"Reloading {owner}'s pinned model '{name}' with "
                               "other options")
    _check_llamacpp_args(body.get(ARGS_PARAM))
    if body.get("pinned") is True and name is not None:
        check_pin_quota(router, owners, caller.name, name)


def _check_pin(router: Router, owners: OwnerRegistry | None, caller: Caller,
               body: dict[str, Any]) -> None:
    name = _model_name(router, body)
    owner = owners.get(name) if owners is not None and name is not None else None
    if owner not in (None, caller.name):
        caller.require(ADMIN, f"Pinning or unpinning {owner}'s model '{name}'")
    if body.get("pinned") is True and name is not None:
        check_pin_quota(router, owners, caller.name, name)


def _check_unload(router: Router, owners: OwnerRegistry | None, caller: Caller,
                  body: dict[str, Any]) -> None:
    name = _model_name(router, body)
    if name is None and not ({"model_name", "model"} & set(body)):  # {}: every model
        others = sorted({o for m in router.live_models()
                         if (o := _owner(owners, m.name)) not in (None, caller.name)})
        if others:
            caller.require(ADMIN, f"Unloading every model (models of {', '.join(others)} "
                           "among them)")
        return
    owner = _owner(owners, name) if name is not None else None
    if owner not in (None, caller.name):
        caller.require(ADMIN, f"Unloading {owner}'s model '{name}'")


def _check_pull(router: Router, owners: OwnerRegistry | None, caller: Caller,
                body: dict[str, Any]) -> None:
    if body.get("recipe") == "remote":
        caller.require(ADMIN, "Registering a remote model")
        _check_key_envs(router, body.get("api_key_env"))
        return
    checkpoint = body.get("checkpoint")
    if checkpoint is None:
        caller.require(ADMIN, "Pulling a catalog model from the model hub")
        return
    try:
        ref = parse_checkpoint(checkpoint)
    except LemonadeError:
        return  # the handler answers 400
    if ref is not None:
        caller.require(ADMIN, "Pulling from the model hub")
        return
    if not isinstance(checkpoint, str) or caller.is_admin:
        return
    folders = router.settings.node_model_folders
    if not _under_any(checkpoint, folders):
        where = ", ".join(folders) if folders else "none are configured"
        raise LockedDownError(
            "node_model_folders",
            f"A local checkpoint must be a file under the node's model folders ({where}); "
            f"other files need the JupyterHub scope '{ADMIN}'", param="checkpoint")


def _check_ollama(router: Router, owners: OwnerRegistry | None, caller: Caller,
                  body: dict[str, Any]) -> None:
    """Ollama's ``keep_alive`` and load options (``num_ctx``, ``num_gpu``) change how long a
    model stays and how it is loaded (``keep_alive: 0`` unloads it after the answer): on
    another user's loaded model that is an admin's act, like an unload or a reload."""
    raw = body.get("model")
    if not isinstance(raw, str) or not raw:
        return
    name = router.resolve(raw[:-len(":latest")] if raw.endswith(":latest") else raw)
    owner = _owner(owners, name)
    if router.get_live(name) is None or owner in (None, caller.name):
        return
    options = body.get("options")
    loads = isinstance(options, dict) and bool({"num_ctx", "num_gpu"} & set(options))
    if "keep_alive" in body or loads:
        caller.require(ADMIN, f"Changing keep_alive or load options of {owner}'s model '{name}'")


_BODY_RULES = {
    "api/v1/load": _check_load,
    "internal/pin": _check_pin,
    "api/v1/unload": _check_unload,
    "api/v1/pull": _check_pull,
    **{f"ollama/api/{path}": _check_ollama
       for path in ("chat", "generate", "embed", "embeddings")},
}


# -- the rules ---------------------------------------------------------------------------------
def _check_llamacpp_args(value: Any) -> None:
    """Every flag of ``llamacpp_args`` must be on the allowlist (a malformed value: the
    handler's 400)."""
    if value is None:
        return
    try:
        words = split_args(value)
    except LemonadeError:
        return
    for word in words:
        if not word.startswith("-"):
            continue
        flag = word.partition("=")[0]
        reason = refusal_reason(flag)
        if reason is not None:
            raise LockedDownError(
                "llamacpp_args",
                f"Flag '{flag}' {reason}: on this node {ARGS_PARAM} takes only the allowlisted "
                "flags", param=ARGS_PARAM)


def _check_key_envs(router: Router, value: Any) -> None:
    names = value if isinstance(value, list) else [value]
    allowed = router.settings.remote_key_envs
    for name in names:
        if isinstance(name, str) and name and not key_env_allowed(name, allowed):
            raise LockedDownError(
                "remote_key_envs",
                f"api_key_env '{name[:128]}' is not among the variables this node lends to "
                f"remote models ({', '.join(allowed) or 'none'})", param="api_key_env")


def _check_log_reader(router: Router, owners: OwnerRegistry | None, caller: Caller,
                      model: str) -> None:
    if caller.is_admin:
        return
    owner = _owner(owners, router.resolve(model))
    if owner != caller.name:
        raise LockedDownError(
            "log_owner", f"The log of '{model[:256]}' is shown only to the model's owner "
            f"({owner or 'nobody'}) and to holders of '{ADMIN}'", param="model")


# -- helpers -----------------------------------------------------------------------------------
def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body or b"")
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _model_name(router: Router, body: dict[str, Any]) -> str | None:
    name = body.get("model_name", body.get("model"))
    return router.resolve(name) if isinstance(name, str) and name else None


def _owner(owners: OwnerRegistry | None, name: str) -> str | None:
    return owners.get(name) if owners is not None else None


def _under_any(path: str, folders: tuple[str, ...]) -> bool:
    """True when ``path``, links resolved, lies inside one of ``folders`` (resolved too)."""
    if "\0" in path or not folders:
        return False
    try:
        real = Path(path).expanduser().resolve()
        return any(real.is_relative_to(Path(f).resolve()) for f in folders)
    except (OSError, RuntimeError, ValueError):
        return False
