"""What the router's state file holds, both ways: the preferences, the loaded set, settings.

:class:`~.persistence.RouterStateStore` reads and writes the file; this module knows its
shape (the older form with pins only included), so the router neither parses nor builds it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import LemonadeError
from .engine_flags import args_policy
from .preferences import ModelPreferences
from .settings import PERSISTED_KEYS, RouterSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Restored:
    """The settings to run with, and the models to load again (pinned ones first)."""

    settings: RouterSettings
    loaded: tuple[str, ...]


def restore(state: dict[str, Any], settings: RouterSettings, preferences: ModelPreferences,
            known: frozenset[str]) -> Restored:
    """Apply a saved state: the persisted settings over ``settings`` (a bad one is a warning),
    then each known model's pin and options into ``preferences``."""
    saved_settings = state.get("settings")
    if isinstance(saved_settings, dict):
        try:
            settings = settings.with_updates(saved_settings)
        except LemonadeError as exc:
            log.warning("Ignoring saved settings: %s", exc.message)
    preferences.load_json(state.get("models"), known, args_policy(settings))
    pins = state.get("pins")  # the file's older form: pins only
    if isinstance(pins, dict):
        for name, pinned in pins.items():
            if pinned is True and name in known:
                preferences.set_pinned(name, True)
    loaded = state.get("loaded")
    names = [n for n in loaded if isinstance(n, str) and n in known] \
        if isinstance(loaded, list) else []
    # Pinned models first: they are the ones a user asked to keep.
    names.sort(key=lambda n: not preferences.pinned(n))
    return Restored(settings, tuple(names))


def to_json(preferences: ModelPreferences, loaded: Iterable[str],
            settings: RouterSettings) -> dict[str, Any]:
    """The state to save: preferences, the loaded set and the persisted settings."""
    return {
        "models": preferences.to_json(),
        "loaded": sorted(loaded),
        "settings": {k: getattr(settings, k) for k in PERSISTED_KEYS},
    }
