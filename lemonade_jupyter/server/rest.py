"""REST routes of the router: health, load/unload, pin, config, catalog (models/delete).

Each handler validates its body completely before touching the router, so a rejected request
changes nothing.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..core.engine_flags import args_policy
from ..core.context_size import requested_label
from ..core.options import parse_load_options
from ..core.remote import RemoteModel
from ..core.router import Router
from ..errors import InvalidRequestError, ModelNotFoundError
from .base import LemonadeHandler, PolledHandler
from .remote_rest import delete_remote, load_remote
from .views import config_view, health_view, models_view

#: How old a memory sample ``/health`` may show before it takes a new one.
HEALTH_MEMORY_MAX_AGE_S = 1.0


def model_name_param(body: dict[str, Any], *, required: bool = True) -> str | None:
    """``model_name`` or ``model`` from a body; 400 when missing (if required) or not a string.

    Only an *absent* key means "no name": an explicit ``null`` is a wrong type (400), because on
    ``/unload`` "no name" means "unload everything" and junk must never do that.
    """
    key = "model_name" if "model_name" in body else "model" if "model" in body else None
    if key is None:
        if required:
            raise InvalidRequestError(
                "Parameter 'model' or 'model_name' is required", param="model_name"
            )
        return None
    name = body[key]
    if not isinstance(name, str) or not name or len(name) > 256:
        raise InvalidRequestError(
            "Parameter 'model_name' must be a non-empty string", param="model_name"
        )
    return name


class HealthHandler(PolledHandler):
    """``GET lemonade/api/v1/health``: what is loaded, slots, pins and memory."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.router.note_watcher()
        await self.router.launcher.probe_engine()  # its backends and devices (once per binary)
        memory = await self.router.memory.fresh(HEALTH_MEMORY_MAX_AGE_S)
        self.write_json(health_view(self.router, memory, self.settings.get("lemonade_owners")))


class ModelsHandler(PolledHandler):
    """``GET lemonade/api/v1/models``: the catalog as an OpenAI model list."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        raw = self.get_argument("show_all", "false").strip().lower()
        if raw not in ("true", "1", "false", "0", ""):
            raise InvalidRequestError("Parameter 'show_all' must be true or false",
                                      param="show_all")
        self.write_json(models_view(self.router, show_all=raw in ("true", "1")))


class LoadHandler(LemonadeHandler):
    """``POST lemonade/api/v1/load``: load (or touch, re-pin, reload) a model."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        name = model_name_param(body)
        assert name is not None
        if isinstance(self.router.target(name), RemoteModel):  # probe it (remote_rest)
            self.write_json(await load_remote(self.router, name, body))
            return
        # Omitted keeps the live model's pin, else the remembered one, else false; anything
        # given that is not a JSON boolean, null included, is a 400 rather than a silent
        # "omitted".
        pinned = body.get("pinned")
        if "pinned" in body and not isinstance(pinned, bool):
            raise InvalidRequestError("Parameter 'pinned' must be a boolean", param="pinned")
        options, given = parse_load_options(body, args_policy=args_policy(self.router.settings))
        m = await self.router.load(name, pinned=pinned, options=options, given=given)
        self.write_json(
            {
                "status": "success",
                "model_name": name,  # the name asked for: an alias stays an alias
                "checkpoint": m.spec.checkpoint,
                "recipe": m.spec.recipe,
                "pinned": m.pinned,
                # The context it runs with, and what was asked for ("auto" by default).
                "ctx_size": m.ctx_size,
                "ctx_size_requested": requested_label(m.options.ctx_size),
            }
        )


class UnloadHandler(LemonadeHandler):
    """``POST lemonade/api/v1/unload``: ``{model_name}`` unloads one, ``{}`` all (pins too)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        # ``{}`` unloads everything, so a typo such as ``{"modelname": ...}`` must not fall
        # through to that: unknown keys are refused like on /pull.
        unknown = set(body) - {"model_name", "model"}
        if unknown:
            raise InvalidRequestError(f"Unknown parameter '{sorted(unknown)[0]}'",
                                      param=sorted(unknown)[0])
        name = model_name_param(body, required=False)
        await self.router.unload(name)
        self.write_json({"status": "success"})


class PinHandler(LemonadeHandler):
    """``POST lemonade/internal/pin``: ``{model_name|model, pinned: bool}`` on a loaded model."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        name = model_name_param(body)
        assert name is not None
        pinned = body.get("pinned")
        if not isinstance(pinned, bool):
            raise InvalidRequestError(
                "Parameter 'pinned' is required and must be a boolean", param="pinned"
            )
        m = await self.router.set_pinned(name, pinned)
        self.write_json({"status": "success", "model_name": name, "pinned": m.pinned})


class ConfigHandler(PolledHandler):
    """``GET lemonade/internal/config``: the runtime-settable settings."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.write_json(config_view(self.router))


class SetHandler(LemonadeHandler):
    """``POST lemonade/internal/set``: change settings; one bad value changes nothing."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        if not body:
            raise InvalidRequestError("Give at least one setting, e.g. {\"max_loaded_models\": 2}")
        await self.router.update_settings(body)
        self.write_json(config_view(self.router))


class DeleteHandler(LemonadeHandler):
    """``POST lemonade/api/v1/delete``: remove a model (and its downloaded files), unloading
    it first. The pull routes are in ``pull.py``."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        name = model_name_param(body)
        assert name is not None
        delete_files = body.get("delete_files", False)
        if not isinstance(delete_files, bool):
            raise InvalidRequestError("Parameter 'delete_files' must be a boolean",
                                      param="delete_files")
        self.write_json(await delete_model(self.router, name, delete_files=delete_files))


async def delete_model(router: Router, name: str, *, delete_files: bool) -> dict[str, Any]:
    """Remove a model (a built-in one is a 400), unloading it first; the ``/delete`` answer.

    Also the Ollama API's ``/api/delete``."""
    name = router.resolve(name)
    remote = delete_remote(router, name)
    if remote is not None:
        return remote
    spec = router.catalog.get(name)
    if spec.builtin:
        raise InvalidRequestError(f"Model '{name}' is built in and cannot be deleted",
                                  param="model_name")
    if spec.curated and not spec.downloaded:
        raise ModelNotFoundError(f"Model '{name}' is not downloaded", param="model_name")
    if router.get_live(name) is not None:
        try:
            await router.unload(name)
        except ModelNotFoundError:
            pass  # unloaded meanwhile
    removed = router.catalog.delete(name, delete_files=delete_files)
    router.aliases.drop_model(name)
    return {"status": "success", "model_name": name, "deleted_files": removed}
