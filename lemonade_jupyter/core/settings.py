"""Router-wide settings and their validation for ``/internal/set``.

The server layer fills :class:`RouterSettings` from traitlets (``c.LemonadeApp.*``); the
runtime-settable subset can then be changed through ``/internal/set`` and is persisted in the
state file, so a value set at run time survives a restart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..errors import InvalidRequestError


@dataclass(frozen=True)
class RouterSettings:
    """Everything the router reads; replaced as a whole, never mutated in place."""

    max_loaded_models: int = 1
    auto_evict: bool = False
    auto_evict_threshold_pct: float = 0.90
    downsize_idle_timeout: float = 60.0
    evict_idle_timeout: float = 300.0
    evict_weight_factor: float = 1.0
    restore_on_start: bool = True
    crash_loop_threshold: int = 2
    crash_cooldown_s: float = 5.0
    crash_cooldown_max_s: float = 300.0
    ready_timeout_s: float = 120.0
    stop_grace_s: float = 5.0
    watchdog_interval_s: float = 2.0
    watchdog_probe_timeout_s: float = 3.0
    watchdog_probe_failures: int = 3
    memory_sample_interval_s: float = 2.0
    eviction_interval_s: float = 5.0
    eviction_grace_s: float = 0.25
    backend_threads: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def with_updates(self, updates: Mapping[str, Any]) -> RouterSettings:
        """Validate every key first, then apply all of them; a bad one changes nothing."""
        checked = {key: validate_setting(key, value) for key, value in updates.items()}
        return replace(self, **checked)


#: Keys ``/internal/set`` accepts (the rest are start-up only).
RUNTIME_KEYS = (
    "max_loaded_models",
    "auto_evict",
    "auto_evict_threshold_pct",
    "downsize_idle_timeout",
    "evict_idle_timeout",
    "evict_weight_factor",
    "restore_on_start",
    "memory_sample_interval_s",
    "eviction_interval_s",
    "eviction_grace_s",
)


#: Upper bound of ``eviction_grace_s``.
MAX_EVICTION_GRACE_S = 60.0


def validate_setting(key: str, value: Any) -> Any:
    """Return the checked value for a runtime key; raise InvalidRequestError otherwise."""
    if key not in RUNTIME_KEYS:
        raise InvalidRequestError(
            f"Unknown config key '{key}'; settable keys: {', '.join(RUNTIME_KEYS)}", param=key
        )
    if key == "max_loaded_models":
        if (isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1
                or value > 1_000_000):
            raise InvalidRequestError(
                "max_loaded_models must be a positive integer or -1 (unlimited)", param=key
            )
        return value
    if key in ("auto_evict", "restore_on_start"):
        if not isinstance(value, bool):
            raise InvalidRequestError(f"{key} must be a boolean", param=key)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"{key} must be a number", param=key)
    if abs(value) > 1e12 or not math.isfinite(value):  # abs() first: huge ints overflow isfinite
        raise InvalidRequestError(f"{key} must be a finite number below 1e12", param=key)
    if key == "auto_evict_threshold_pct":
        if not 0 < value <= 1:
            raise InvalidRequestError(
                "auto_evict_threshold_pct must be in (0, 1]", param=key
            )
    elif key == "evict_weight_factor":
        if value <= 0:
            raise InvalidRequestError("evict_weight_factor must be > 0", param=key)
    elif key == "eviction_grace_s":
        # The engine sleeps this long before acting on memory pressure: a long grace is an
        # engine that never relieves it.
        if not 0 <= value <= MAX_EVICTION_GRACE_S:
            raise InvalidRequestError(
                f"eviction_grace_s must be between 0 and {MAX_EVICTION_GRACE_S:g} seconds",
                param=key,
            )
    elif key in ("memory_sample_interval_s", "eviction_interval_s"):
        if value < 0.1:
            raise InvalidRequestError(f"{key} must be >= 0.1", param=key)
    elif value < 0:
        raise InvalidRequestError(f"{key} must be >= 0", param=key)
    return float(value)
