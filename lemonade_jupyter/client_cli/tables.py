"""Plain-text views of the API's answers for a terminal: fixed-width tables, sizes, progress.

Pure functions over the decoded JSON, so that what ``--json`` prints and what a person reads
come from the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def human_bytes(n: Any) -> str:
    """``1.2 GiB`` from a byte count; ``-`` when unknown."""
    if not isinstance(n, (int, float)) or isinstance(n, bool) or n < 0:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def status_text(health: dict[str, Any]) -> str:
    """``status``: every loaded model (state, pin, owner, device, memory), then the slots."""
    models = health.get("all_models_loaded") or []
    rows = [[m.get("model_name"), m.get("type"), m.get("status"),
             "yes" if m.get("pinned") else "no", m.get("owner") or "-",
             m.get("device") or "-", human_bytes(m.get("memory_bytes"))] for m in models]
    lines = [table(["MODEL", "TYPE", "STATE", "PINNED", "OWNER", "DEVICE", "MEMORY"], rows)
             if rows else "No model is loaded."]
    loaded = health.get("loaded_models") or {}
    pinned = health.get("pinned_models") or {}
    for kind, slots in sorted((health.get("max_models") or {}).items()):
        if loaded.get(kind) or kind == "llm":
            limit = "unlimited" if slots == -1 else str(slots)
            lines.append(f"{kind}: {loaded.get(kind, 0)} of {limit} slots in use, "
                         f"{pinned.get(kind, 0)} pinned")
    for remote in health.get("remote_models") or []:
        lines.append(f"remote {remote.get('model_name')}: {remote.get('status')}")
    return "\n".join(lines)


def models_text(models: Sequence[dict[str, Any]]) -> str:
    """``models``: the catalog with type, whether it is on disk, loaded and pinned."""
    rows = [[m.get("id"), m.get("type"), m.get("recipe"),
             "yes" if m.get("downloaded") else "no",
             "pinned" if m.get("pinned") else "yes" if m.get("loaded") else "no",
             f"{m['size']:.2f} GB" if isinstance(m.get("size"), (int, float)) else "-"]
            for m in models]
    return table(["MODEL", "TYPE", "RECIPE", "DOWNLOADED", "LOADED", "SIZE"], rows)


def config_text(config: dict[str, Any]) -> str:
    return "\n".join(f"{k} = {v}" for k, v in config.items() if k != "settable_keys")


def progress_bar(event: dict[str, Any], width: int = 30) -> str:
    """One line of a pull's progress: a bar, the percentage, bytes, the current file."""
    percent = event.get("percent")
    done = event.get("bytes_downloaded")
    total = event.get("bytes_total")
    filled = int(width * percent / 100) if isinstance(percent, (int, float)) else 0
    shown = f"{percent:5.1f}%" if isinstance(percent, (int, float)) else "    ?%"
    name = str(event.get("file") or "").rsplit("/", 1)[-1]
    return (f"[{'#' * filled}{'.' * (width - filled)}] {shown} "
            f"{human_bytes(done)} / {human_bytes(total)} {name}")
