"""The REST side of remote models: ``/pull`` with ``recipe: "remote"``, ``/load``, ``/delete``,
and their entries in ``/health`` and ``/models``.

Called from the handlers of ``rest.py`` and ``pull.py`` (one line each), so that everything a
remote model changes in the REST API reads in one place. Views never include a key: a replica
shows its URL and the *name* of the environment variable its key comes from.

A registration is checked whole before anything changes: the body (``core/remote_spec.py``,
with the key variables the admin lends), then where its replicas point (``remote_hosts.py``:
never back at this server unless an admin allows it). Models a state file kept from before
the rules they now break are dropped at start (:func:`drop_refused`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..core.remote import RemoteModel
from ..core.remote_rules import key_env_allowed
from ..core.remote_spec import RECIPE, RemoteSpec, parse_remote_pull
from ..core.remote_target import refuse_remote
from ..core.router import Router
from ..errors import InvalidRequestError, RemoteUnreachableError
from .remote_hosts import OwnServer, check_replica_hosts, host_rules, refusal

log = logging.getLogger(__name__)


def remote_view(m: RemoteModel) -> dict[str, Any]:
    """One remote model as ``/health`` (``remote_models``) and ``/pull`` show it."""
    return {
        "model_name": m.name,
        "recipe": RECIPE,
        "type": m.spec.type,
        "labels": list(m.spec.labels),
        "upstream_model": m.spec.upstream_model,
        "status": m.status,
        "latency_ms": m.latency_ms(),
        "in_flight": m.in_flight,
        "replicas": [r.to_json() for r in m.replicas],
    }


def remote_model_entries(router: Router) -> list[dict[str, Any]]:
    """The remote models as entries of the OpenAI model list (``/models``)."""
    return [{
        "id": m.name, "object": "model", "created": 0, "owned_by": "remote",
        "checkpoint": m.spec.upstream_model, "recipe": RECIPE, "labels": list(m.spec.labels),
        "type": m.spec.type, "builtin": False, "loaded": m.status == "ready", "pinned": False,
        "downloaded": True, "size": None, "status": m.status,
        "replicas": [r.url for r in m.replicas],
    } for m in router.remote.all()]


async def pull_remote(router: Router, body: dict[str, Any],
                      own: OwnServer) -> dict[str, Any] | None:
    """Handle a remote ``/pull`` (None: the body is no remote pull, carry on).

    ``own``: where this server listens (``remote_hosts.own_server``). A local pull that would
    take a remote model's name is refused here too (400)."""
    if body.get("recipe") != RECIPE:
        name = body.get("model_name")
        if isinstance(name, str) and (name in router.remote or name in router.remote.groups()):
            raise InvalidRequestError(
                f"'{name}' is a remote model; delete it first or choose another name",
                param="model_name")
        return None
    pull = parse_remote_pull(body, router.settings.remote_key_envs)
    await check_replica_hosts(pull.replicas, host_rules(router.settings, own),
                              "base_urls" if "base_urls" in body else "base_url")
    taken = {s.name for s in router.catalog.all(include_not_downloaded=True)}
    models = await router.remote.register(pull, taken)
    return {"status": "success", "model_name": pull.name, "recipe": RECIPE,
            "registered": [remote_view(m) for m in models]}


async def load_remote(router: Router, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """``/load`` of a remote model: nothing to start and no slot; probe its replicas now.

    502 ``upstream_unreachable`` when none answers."""
    if body.get("pinned") is True:
        refuse_remote(router.target(name), name, "pinned")
    extra = set(body) - {"model_name", "model", "pinned"}
    if extra:
        raise InvalidRequestError(
            f"'{name}' is a remote model: it takes no load options ({sorted(extra)[0]})",
            param=sorted(extra)[0])
    model = await router.remote.probe_model(name)
    if model.status != "ready":
        problems = "; ".join(f"{r.url}: {r.last_error or r.state}" for r in model.replicas)
        raise RemoteUnreachableError(
            f"No replica of remote model '{name}' answers: {problems}", param="model")
    return {"status": "success", "model_name": name, "checkpoint": model.spec.upstream_model,
            "recipe": RECIPE, "pinned": False, "remote": remote_view(model)}


def delete_remote(router: Router, name: str) -> dict[str, Any] | None:
    """``/delete`` of a remote model (or of every model of a list); None if it is none."""
    if name not in router.remote and name not in router.remote.groups():
        return None
    removed = router.remote.remove(name)
    return {"status": "success", "model_name": name, "deleted_files": [], "deleted": removed}


async def drop_refused(router: Router, own: OwnServer) -> list[str]:
    """Forget the remote models the state file kept that the rules now refuse (a key variable
    no longer lent, a host now refused); return their names, each one logged and noted.

    Called once at start, when the server's own port is known; every host is looked at once,
    all of them together (each resolution is bounded)."""
    rules, lent = host_rules(router.settings, own), router.settings.remote_key_envs
    models = router.remote.all()
    urls = sorted({r.base_url for m in models for r in m.spec.replicas})
    hosts = dict(zip(urls, await asyncio.gather(*(refusal(u, rules) for u in urls))))
    dropped: list[str] = []
    for model in models:
        why = _spec_refusal(model.spec, lent, hosts)
        if why is None or model.name not in router.remote:
            continue
        dropped.extend(router.remote.remove(model.name))
        note = f"Remote model '{model.name}' was dropped: {why}"
        log.warning("lemonade: %s", note)
        router.notes.append(note)
    return dropped


def _spec_refusal(spec: RemoteSpec, lent: tuple[str, ...],
                  hosts: dict[str, str | None]) -> str | None:
    for replica in spec.replicas:
        env = replica.api_key_env
        if env is not None and not key_env_allowed(env, lent):
            return f"its key variable '{env}' is not in remote_key_envs"
        if hosts.get(replica.base_url) is not None:
            return hosts[replica.base_url]
    return None
