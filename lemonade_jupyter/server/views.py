"""JSON views of router state for ``/health``, ``/models`` and ``/internal/config``.

Pure functions over snapshots: they never change the router and never count as use.
"""

from __future__ import annotations

from typing import Any

from ..core.context_size import requested_label
from ..core.engines.llamacpp import DEFAULT_CTX_SIZE, EngineInfo
from ..core.live_model import LiveModel
from ..core.memory import MemorySample
from ..core.owners import OwnerRegistry
from ..core.router import Router
from ..core.settings import RUNTIME_KEYS
from ..errors import EngineMissingError
from .remote_rest import remote_model_entries, remote_view


def model_view(m: LiveModel, engine: EngineInfo | None = None) -> dict[str, Any]:
    """One entry of ``all_models_loaded``. The backend's API key is never included.

    ``engine``: what its backend runs (None while it has no backend)."""
    backend = m.backend
    return {
        "model_name": m.name,
        "checkpoint": m.spec.checkpoint,
        "type": m.type,
        "recipe": m.spec.recipe,
        "recipe_options": m.options.to_json(),
        "pinned": m.pinned,
        "status": m.state.value,
        "pid": backend.pid if backend else None,
        "backend_url": backend.url if backend else None,
        "last_use": round(m.last_use_wall * 1000),
        "idle_s": round(m.idle_s(), 3),
        "load_duration_ms": round(m.load_duration_ms, 1),
        "memory_bytes": m.memory_bytes,
        "memory_freed_bytes": m.memory_freed_bytes,
        "is_busy": m.in_flight > 0,
        "in_flight": m.in_flight,
        "queued": len(m.slot_queue),
        "device": m.device,
        "placement": m.placement.to_json(),
        # Per device (GPU UUIDs, "cpu" for RAM): bytes and the source of each figure.
        "memory_by_device": {key: figure.to_json() for key, figure in
                             [*m.memory.gpu.items(), ("cpu", m.memory.ram)]},
        "memory_source": m.memory.sources(),
        "estimate_bytes": m.estimate_bytes,
        # The context its backend runs with ("auto" resolved), and what was asked for.
        "ctx_size": (backend.options.ctx_size or DEFAULT_CTX_SIZE) if backend else None,
        "ctx_size_requested": requested_label(m.options.ctx_size),
        "engine": engine.to_json() if engine else None,
    }


def engine_view(router: Router) -> dict[str, Any] | None:
    """The engine the next backend start would use; None when there is none."""
    try:
        return router.launcher.engine().to_json()
    except EngineMissingError:
        return None


def health_view(router: Router, memory: MemorySample | None,
                owners: OwnerRegistry | None = None) -> dict[str, Any]:
    """``/health``. With ``owners``, each model and each pin says whose it is (``owner``:
    the user whose load or pin it was; None when nobody is known)."""
    models = sorted(router.live_models(), key=lambda m: m.name)
    types = router.model_types()
    slots = router.slots()
    owner = owners.get if owners is not None else (lambda _name: None)
    return {
        "status": "ok",
        "all_models_loaded": [{**model_view(m, router.launcher.engine_of(m.backend)),
                               "owner": owner(m.name)} for m in models],
        "pins": [{"model_name": m.name, "type": m.type, "owner": owner(m.name)}
                 for m in models if m.pinned],
        "max_models": {t: slots for t in types},
        "pinned_models": {t: sum(1 for m in models if m.type == t and m.pinned) for t in types},
        "loaded_models": {t: sum(1 for m in models if m.type == t) for t in types},
        "memory": memory.to_json() if memory else {"source": "unknown", "devices": []},
        "engine": engine_view(router),
        "notes": list(router.notes),
        "remote_models": [remote_view(m) for m in router.remote.all()],
    }


def models_view(router: Router, *, show_all: bool = False) -> dict[str, Any]:
    """The OpenAI model list, with our catalog fields on each entry.

    ``show_all`` adds the curated models that are not downloaded yet. ``checkpoint`` is where a
    model comes from: its hub checkpoint, else its local file."""
    data = []
    for spec in router.catalog.all(include_not_downloaded=show_all):
        live = router.get_live(spec.name)
        entry = {
            "id": spec.name,
            "object": "model",
            "created": 0,
            "owned_by": "lemonade",
            "checkpoint": spec.source or spec.checkpoint,
            "recipe": spec.recipe,
            "labels": list(spec.labels),
            "type": spec.type,
            "builtin": spec.builtin,
            "loaded": live is not None,
            "pinned": bool(live and live.pinned),
            "downloaded": spec.downloaded,
            "size": spec.size(),
            "aliases": router.aliases.of(spec.name),
        }
        if spec.mmproj_source or spec.mmproj:
            entry["mmproj"] = spec.mmproj_source or spec.mmproj
        data.append(entry)
    data.extend(remote_model_entries(router))
    return {"object": "list", "data": data}


def config_view(router: Router) -> dict[str, Any]:
    settings = router.settings.to_json()
    view = {k: settings[k] for k in RUNTIME_KEYS}
    view["settable_keys"] = list(RUNTIME_KEYS)
    return view
