"""Pure summaries of a health snapshot: slots per type, the pinned-slots warning, formatting.

Nothing here does I/O or decides anything for the router; the magics and the dashboard use
these to *describe* what the server reported. The warning mirrors the router's own 409 rule
(a fresh load into a full pool whose models are all pinned is refused with
``slots_pinned_error`` and evicts nothing) only to tell the user before a load that it will be
refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "PoolSummary",
    "pools",
    "pinned_slots_warning",
    "catalog_type",
    "idle_seconds",
    "model_idle_seconds",
    "format_bytes",
    "format_seconds",
]


class PoolSummary(dict[str, Any]):
    """One pool: ``type``, ``used``, ``total`` (-1 = unlimited), ``pinned``, ``models``."""

    @property
    def full_of_pins(self) -> bool:
        """Every slot is taken by a pinned model (a fresh load would get 409)."""
        total = int(self["total"])
        return total > 0 and int(self["pinned"]) >= total

    @property
    def slots_text(self) -> str:
        total = int(self["total"])
        return f"{self['used']}/{'∞' if total < 0 else total}"


def _loaded(health: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [m for m in health.get("all_models_loaded") or [] if isinstance(m, Mapping)]


def pools(health: Mapping[str, Any]) -> list[PoolSummary]:
    """Slots used/total and pinned counts per model type, from one health snapshot.

    Types come from ``max_models`` plus any type a loaded model has; a type missing from
    ``max_models`` gets the llm pool's size (the server's default applies to every type).
    """
    max_models = {str(k): int(v) for k, v in (health.get("max_models") or {}).items()}
    pinned_models = {str(k): int(v) for k, v in (health.get("pinned_models") or {}).items()}
    loaded = _loaded(health)
    types = list(max_models)
    for m in loaded:
        t = str(m.get("type") or "llm")
        if t not in types:
            types.append(t)
    default_total = max_models.get("llm", 1)
    out = []
    for t in types:
        members = [str(m.get("model_name")) for m in loaded if str(m.get("type") or "llm") == t]
        pinned = pinned_models.get(
            t, sum(1 for m in loaded if m.get("pinned") and str(m.get("type") or "llm") == t)
        )
        out.append(
            PoolSummary(
                type=t,
                used=len(members),
                total=max_models.get(t, default_total),
                pinned=pinned,
                models=members,
            )
        )
    return out


def catalog_type(models: Iterable[Mapping[str, Any]], model_name: str) -> str | None:
    """The ``type`` the catalog (``GET api/v1/models``) gives ``model_name``, or None if unknown
    or remote (a remote model takes no slot, so no pool can refuse it)."""
    for m in models:
        if m.get("id") == model_name or m.get("model_name") == model_name:
            return None if m.get("recipe") == "remote" else str(m.get("type") or "llm")
    return None


def pinned_slots_warning(
    health: Mapping[str, Any], model_name: str, model_type: str | None
) -> str | None:
    """A warning when loading ``model_name`` would be refused because its pool is all pinned.

    None when the model is already loaded (a repeat load needs no slot), when its type is
    unknown (the server will answer 404), or when a slot can still be freed.
    """
    if model_type is None:
        return None
    if any(m.get("model_name") == model_name for m in _loaded(health)):
        return None
    for pool in pools(health):
        if pool["type"] == model_type and pool.full_of_pins:
            names = ", ".join(pool["models"]) or "?"
            return (
                f"every {model_type} slot ({pool.slots_text}) is pinned ({names}); loading "
                f"{model_name} will be refused with 409 unless you `%lemonade unpin` or "
                f"`%lemonade unload` one of them first."
            )
    return None


def idle_seconds(last_use: Any, now: float | None = None) -> float | None:
    """Seconds since ``last_use`` (epoch seconds or milliseconds, or an ISO date), or None."""
    if last_use is None or last_use == "":
        return None
    now = time.time() if now is None else now
    if isinstance(last_use, str):
        try:
            last_use = float(last_use)
        except ValueError:
            from datetime import datetime

            try:
                last_use = datetime.fromisoformat(last_use.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return None
    value = float(last_use)
    if value > 1e11:  # milliseconds since the epoch
        value /= 1000.0
    if value < 1e9:  # not a wall-clock time; nothing sensible to show
        return None
    return max(0.0, now - value)


def model_idle_seconds(model: Mapping[str, Any], now: float | None = None) -> float | None:
    """A loaded model's idle time: the server's ``idle_s`` if given, else from ``last_use``."""
    idle = model.get("idle_s")
    if isinstance(idle, (int, float)) and not isinstance(idle, bool):
        return float(idle)
    return idle_seconds(model.get("last_use"), now)


def format_bytes(n: Any) -> str:
    """``1536`` → ``1.5 KiB``; None → ``—``."""
    if n is None or isinstance(n, bool):
        return "—"
    try:
        value = float(n)
    except (TypeError, ValueError):
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "—"  # pragma: no cover - loop always returns


def format_seconds(s: float | None) -> str:
    """``75`` → ``1m 15s``; None → ``—``."""
    if s is None:
        return "—"
    s = float(s)
    if s < 60:
        return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s"
    minutes, sec = divmod(int(s), 60)
    if minutes < 60:
        return f"{minutes}m {sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def device_shares(health: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per memory device of a health snapshot: each model's share, other use, and what is free.

    A GPU is matched by its UUID, the system RAM by ``cpu`` (the keys of ``memory_by_device``).
    """
    out = []
    for d in (health.get("memory") or {}).get("devices") or []:
        key = d.get("uuid") or "cpu"
        models = []
        for m in _loaded(health):
            figure = (m.get("memory_by_device") or {}).get(key) or {}
            if figure.get("bytes"):
                models.append((str(m.get("model_name")), int(figure["bytes"]),
                               bool(m.get("pinned"))))
        total, used = int(d.get("total") or 0), int(d.get("used") or 0)
        ours = sum(b for _n, b, _p in models)
        out.append({"device": str(d.get("name") or key), "key": key, "total": total,
                    "models": models, "other": max(0, used - ours),
                    "free": max(0, total - used)})
    return out


def pinned_memory_warning(health: Mapping[str, Any], config: Mapping[str, Any],
                          model_name: str) -> str | None:
    """A warning when pinned models already hold (nearly) all of a device's room, so that a
    load would likely be refused with 409 ``insufficient_memory``: the RAM budget
    (``memory_budget_mib``) on the CPU, or 90 % of a GPU."""
    if any(m.get("model_name") == model_name for m in _loaded(health)):
        return None
    budget = config.get("memory_budget_mib")
    for share in device_shares(health):
        pinned = sum(b for _n, b, p in share["models"] if p)
        room = (float(budget) * 1024 * 1024 if share["key"] == "cpu" and budget
                else 0.9 * share["total"] if share["key"] != "cpu" else None)
        if room and pinned >= 0.9 * room:
            names = ", ".join(n for n, _b, p in share["models"] if p)
            where = "the memory budget" if share["key"] == "cpu" else share["device"]
            return (f"pinned models ({names}) hold {format_bytes(pinned)} of "
                    f"{format_bytes(int(room))} on {where}; loading {model_name} there will "
                    "likely be refused with 409 (insufficient memory) unless you unpin or "
                    "unload one of them first.")
    return None
