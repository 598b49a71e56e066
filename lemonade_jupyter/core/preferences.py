"""What the user asked for each model: its pin and its load options, remembered by name.

The one owner of pins and load options. A live model's ``pinned`` and ``options`` are views of
this table, so every reload path (option change, failed-load retry, crash reload, auto-load from
a request, restore at start) starts the model with what the user chose, and nothing has to copy
a pin or options from one place to another.

* A pin is remembered from the moment it is set until an explicit unpin or unload.
* Load options are remembered once a load with them succeeded (a failed load leaves the
  previous ones, so a bad ``llamacpp_args`` does not stick), and kept through evictions and
  crashes until an explicit unload.

The table is saved in the router's state file, so both survive a server restart.
Owned by the router's event loop; :meth:`to_json` is what gets persisted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from ..errors import LemonadeError
from .engine_flags import STRICT, ArgsPolicy
from .options import LoadOptions, parse_load_options

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preference:
    pinned: bool = False
    options: LoadOptions = LoadOptions()


_NONE = Preference()


class ModelPreferences:
    """Pins and load options by model name; :meth:`to_json` / :meth:`load_json` persist them."""

    def __init__(self) -> None:
        self._by_name: dict[str, Preference] = {}

    def pinned(self, name: str) -> bool:
        return self._by_name.get(name, _NONE).pinned

    def options(self, name: str) -> LoadOptions:
        return self._by_name.get(name, _NONE).options

    def set_pinned(self, name: str, pinned: bool) -> bool:
        """Remember the pin; True when it changed."""
        old = self._by_name.get(name, _NONE)
        self._store(name, replace(old, pinned=pinned))
        return old.pinned != pinned

    def set_options(self, name: str, options: LoadOptions) -> None:
        self._store(name, replace(self._by_name.get(name, _NONE), options=options))

    def names(self) -> set[str]:
        """Every model with a remembered pin or options."""
        return set(self._by_name)

    def forget(self, name: str | None = None) -> None:
        """Forget one model's pin and options, or everyone's (``None``)."""
        if name is None:
            self._by_name.clear()
        else:
            self._by_name.pop(name, None)

    def _store(self, name: str, pref: Preference) -> None:
        if pref == _NONE:
            self._by_name.pop(name, None)
        else:
            self._by_name[name] = pref

    # -- persistence -----------------------------------------------------------------------
    def to_json(self) -> dict[str, dict[str, Any]]:
        return {name: {"pinned": p.pinned, "options": p.options.to_json()}
                for name, p in sorted(self._by_name.items())}

    def load_json(self, data: object, known: set[str] | frozenset[str],
                  args_policy: ArgsPolicy = STRICT) -> None:
        """Take saved preferences of models still in the catalog (``known``).

        Options are validated as a ``/load`` body is, under ``args_policy``: an entry that no
        longer validates (a hand-edited file, a rule tightened since, the any-flag setting
        turned off) is dropped with a warning, its pin kept.
        """
        if not isinstance(data, dict):
            return
        for name, entry in data.items():
            if name not in known or not isinstance(entry, dict):
                continue
            pinned = entry.get("pinned") is True
            options = LoadOptions()
            raw = entry.get("options")
            if isinstance(raw, dict):
                try:
                    options, _given = parse_load_options(raw, args_policy=args_policy)
                except LemonadeError as exc:
                    log.warning("Ignoring saved options of %s: %s", name, exc.message)
            self._store(name, Preference(pinned, options))
