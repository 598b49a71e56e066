"""Alias routes: list, add and remove other names of catalog models.

The rules (spelling, clashes, persistence) are :mod:`lemonade_jupyter.core.aliases`'; these
handlers only read the body and answer. Each validates completely before it changes anything.
"""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..errors import InvalidRequestError
from .base import LemonadeHandler
from .rest import model_name_param


class AliasHandler(LemonadeHandler):
    """``GET lemonade/api/v1/alias``: every alias and its model;
    ``POST lemonade/api/v1/alias {model_name, alias}``: add one."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.write_json({"aliases": self.router.aliases.to_json()})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        unknown = set(body) - {"model_name", "model", "alias"}
        if unknown:
            raise InvalidRequestError(f"Unknown parameter '{sorted(unknown)[0]}'",
                                      param=sorted(unknown)[0])
        name = model_name_param(body)
        if "alias" not in body:
            raise InvalidRequestError("Parameter 'alias' is required", param="alias")
        target = self.router.aliases.add(name, body["alias"])
        self.write_json({"status": "success", "alias": body["alias"], "model_name": target})


class AliasRemoveHandler(LemonadeHandler):
    """``POST lemonade/api/v1/alias/remove {alias}``: forget an alias (404 if it is none)."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        alias = body.get("alias")
        if not isinstance(alias, str) or not alias:
            raise InvalidRequestError("Parameter 'alias' is required and must be a string",
                                      param="alias")
        target = self.router.aliases.remove(alias)
        self.write_json({"status": "success", "alias": alias, "model_name": target})
