"""A cold load told to a chat client, as reasoning content in its stream (opt-in).

A streaming chat request that has to wait for its model to load is silent for as long as the
load takes (``: ping`` comments keep the connection, but a chat UI shows nothing). With
``c.LemonadeApp.stream_loading_state = True`` the proxy first sends the load's progress (the
router's events about that model, and the models evicted to make room) as chat-completion
chunks whose delta has only ``reasoning_content``, which chat UIs show as the model's
"thinking" and OpenAI clients parse as any other chunk; the real answer follows. The idea is
llama-swap's ``sendLoadingState``.

Pure formatting: the proxy decides when, this module says what.
"""

from __future__ import annotations

import json
import secrets
import time

from ..core.events import Event

#: Events of other models worth telling: they explain where the wait goes.
_OTHERS = ("evict",)


def chunk(model: str, text: str, chunk_id: str) -> bytes:
    """One SSE event in the OpenAI chat-completion chunk shape with ``reasoning_content``."""
    body = {
        "id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": text},
                     "finish_reason": None}],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def new_id() -> str:
    return "chatcmpl-loading-" + secrets.token_hex(8)


def start_line(model: str) -> str:
    return f"Loading model {model}...\n"


def describe(event: Event, model: str) -> str | None:
    """One line about ``event`` for a client waiting for ``model``, or None to skip it."""
    if event.model != model:
        if event.kind in _OTHERS and event.model:
            return f"Unloading {event.model} to make room ({event.reason}).\n"
        return None
    detail = event.detail
    if event.kind == "pull":
        if event.reason == "progress":
            done, total = detail.get("bytes_downloaded"), detail.get("bytes_total")
            if isinstance(done, int) and isinstance(total, int) and total > 0:
                return f"Downloading {model}: {100 * done / total:.0f}%\n"
            return None
        return f"Download of {model}: {event.reason}.\n"
    if event.kind in ("load", "reload", "restore"):
        ms = detail.get("load_duration_ms")
        took = f" in {ms / 1000:.1f} s" if isinstance(ms, (int, float)) else ""
        return f"Model {model} is loaded{took}.\n"
    if event.kind == "load_failed":
        return f"Loading {model} failed: {detail.get('error', 'unknown error')}\n"
    return None
