"""``GET lemonade/api/v1/models/{id}``: one model as OpenAI's model object.

OpenAI's clients retrieve a model by id (``client.models.retrieve``); the answer is the same
entry that ``GET lemonade/api/v1/models`` lists for it (with ``show_all``, so a curated model
that is not downloaded yet is found too). An alias answers with its model's entry under the
name asked for, and says which model that is in ``alias_of``. An unknown id is a 404
``model_not_found`` in the usual error envelope.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..core.router import Router
from ..errors import ModelNotFoundError
from .base import PolledHandler
from .views import models_view


def model_object(router: Router, name: str) -> dict[str, Any]:
    """The model list's entry for ``name`` (a model, an alias or a remote model).

    Raises ModelNotFoundError when no model has that name."""
    resolved = router.resolve(name)
    for entry in models_view(router, show_all=True)["data"]:
        if entry["id"] == resolved:
            if resolved != name:
                return {**entry, "id": name, "alias_of": resolved}
            return dict(entry)
    raise ModelNotFoundError(f"Model '{name}' is not in the catalog", param="model")


class ModelDetailHandler(PolledHandler):
    """``GET lemonade/api/v1/models/{id}``: OpenAI's model object, or 404."""

    @web.authenticated
    @authorized
    async def get(self, model: str) -> None:
        self.write_json(model_object(self.router, model))
