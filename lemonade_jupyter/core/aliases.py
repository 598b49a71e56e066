"""Model aliases: other names a client may use for a model of the catalog.

A client that was written against another server asks for ``gpt-4o-mini`` or ``qwen``; an
alias routes such a name to a model here. The router resolves an alias at each of its public
entry points (load, acquire and call, unload, pin), so every route takes an alias wherever it
takes a model name, and the proxy still answers with the name the client asked for.

Rules:

* An alias is spelled like a catalog model name (letters, digits, ``.``, ``_``, ``-``; 128
  characters at most) and may not start with ``user.``, which belongs to user models, so a
  later ``/pull`` of a user model can never take an alias's name.
* It must not be the name of a catalog model or an alias of another model (400). Adding the
  same alias to the same model again changes nothing.
* A catalog name always wins: if a model of that name appears later (a new curated list), the
  alias is shadowed, never the model.
* An alias names a model, never another alias: an alias of an alias is stored as an alias of
  the model it ends at.
* Deleting a model drops its aliases.

Owns ``_target`` (alias → model name), persisted atomically in ``model_aliases.json`` of the
data folder, next to ``user_models.json``. Written on the router's event loop only; the file
is a few hundred bytes, so it is written in place like the catalog's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError, ModelNotFoundError
from .names import MODEL_NAME, spelled
from .state_files import read_json_or_quarantine, write_json_atomic
from .validation import check_name

log = logging.getLogger(__name__)

FILE_NAME = "model_aliases.json"
#: How an alias is spelled: like a model name (:mod:`.names`).
_ALIAS = MODEL_NAME
_SPELLING = "a name of letters, digits, . _ - (128 at most, not starting with 'user.')"
#: Aliases per router, so that a loop of API calls cannot grow the state file without bound.
MAX_ALIASES = 1000


class ModelAliases:
    """Alias → model name, checked against the catalog (``known`` says whether a name is a
    catalog model); :meth:`resolve` is what the router calls on every name it is given."""

    def __init__(self, data_dir: Path | None, known: Callable[[str], bool]) -> None:
        self._path = data_dir / FILE_NAME if data_dir is not None else None
        self._known = known
        self._target: dict[str, str] = {}
        self._load()

    # -- queries --------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        """The model ``name`` stands for: itself when it is a catalog model or no alias."""
        if self._known(name):
            return name
        return self._target.get(name, name)

    def of(self, model: str) -> list[str]:
        """The aliases of ``model``, sorted."""
        return sorted(a for a, t in self._target.items() if t == model)

    def to_json(self) -> dict[str, str]:
        """Every alias and its model (a copy)."""
        return dict(sorted(self._target.items()))

    # -- changes --------------------------------------------------------------------------
    def add(self, model: Any, alias: Any) -> str:
        """Make ``alias`` a name of ``model``; return the model it names.

        Raises InvalidRequestError (400) for a badly spelled alias or one that clashes with a
        model or with another model's alias, ModelNotFoundError (404) for an unknown model.
        """
        check_name("alias", alias, _ALIAS, _SPELLING)
        if alias.startswith("user."):
            raise InvalidRequestError(f"Parameter 'alias' must be {_SPELLING}", param="alias")
        check_name("model_name", model, MODEL_NAME,
                   "a model name (letters, digits, . _ -; 128 at most)")
        target = self.resolve(model)
        if not self._known(target):
            raise ModelNotFoundError(f"Model '{model}' is not in the catalog", param="model_name")
        if self._known(alias):
            raise InvalidRequestError(
                f"'{alias}' is the name of a model and cannot be an alias", param="alias")
        current = self._target.get(alias)
        if current is not None and current != target:
            raise InvalidRequestError(
                f"'{alias}' is already an alias of '{current}'; remove it first", param="alias")
        if current is None and len(self._target) >= MAX_ALIASES:
            raise InvalidRequestError(f"At most {MAX_ALIASES} aliases", param="alias")
        if current is None:
            self._target[alias] = target
            self._save()
        return target

    def remove(self, alias: Any) -> str:
        """Forget ``alias``; return the model it named. ModelNotFoundError (404) if it is none."""
        if not isinstance(alias, str) or alias not in self._target:
            raise ModelNotFoundError(f"'{alias}' is not an alias", param="alias")
        target = self._target.pop(alias)
        self._save()
        return target

    def drop_model(self, model: str) -> list[str]:
        """Forget every alias of ``model`` (it was deleted); return them."""
        gone = self.of(model)
        for alias in gone:
            del self._target[alias]
        if gone:
            self._save()
        return gone

    # -- persistence ----------------------------------------------------------------------
    def _save(self) -> None:
        if self._path is not None:
            write_json_atomic(self._path, self._target)

    def _load(self) -> None:
        if self._path is None:
            return
        for alias, target in (read_json_or_quarantine(self._path, dict) or {}).items():
            if (isinstance(target, str) and spelled(_ALIAS, alias)
                    and not alias.startswith("user.") and alias != target):
                self._target[alias] = target
            else:  # a junk entry must not stop the server's start
                log.warning("Skipping bad alias in %s: %r -> %r", self._path, alias, target)
