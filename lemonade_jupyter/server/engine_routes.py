"""The engine's inference routes that the proxy serves, and how each one behaves.

Every route llama-server answers for a model is proxied under ``lemonade/api/v1/`` with the
same model routing, auto-load, pins, leases and replay; they differ only in what this table
says: whether the answer may stream, whether a request takes one of the backend's parallel
slots (tokenizing does not, so it never waits behind generations), whether the answer
carries the engine's ``timings`` for the request statistics, and whether a request without a
length gets the router's default one (:func:`body_for_engine`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: Body fields that llama.cpp reads as the number of tokens to generate.
LENGTH_FIELDS = ("n_predict", "max_tokens")


@dataclass(frozen=True)
class EngineRoute:
    """One proxied route: the engine's path and how requests to it are handled."""

    #: llama-server's path.
    path: str
    #: ``"stream": true`` streams the answer as server-sent events.
    streams: bool = False
    #: A request holds one of the backend's parallel slots (and may wait for one).
    uses_slot: bool = True
    #: The answer carries ``timings``: it feeds ``GET lemonade/api/v1/stats``.
    records_stats: bool = False
    #: Without ``n_predict``/``max_tokens`` the engine generates until the context is full;
    #: the router then sends its ``default_n_predict``.
    caps_tokens: bool = False


CHAT = EngineRoute("/v1/chat/completions", streams=True, records_stats=True)
COMPLETIONS = EngineRoute("/v1/completions", streams=True, records_stats=True)
EMBEDDINGS = EngineRoute("/v1/embeddings")
RERANK = EngineRoute("/v1/rerank")
RESPONSES = EngineRoute("/v1/responses", streams=True, records_stats=True)
MESSAGES = EngineRoute("/v1/messages", streams=True, records_stats=True)
COUNT_TOKENS = EngineRoute("/v1/messages/count_tokens", uses_slot=False)
INFILL = EngineRoute("/infill", streams=True, records_stats=True, caps_tokens=True)
COMPLETION = EngineRoute("/completion", streams=True, records_stats=True, caps_tokens=True)
TOKENIZE = EngineRoute("/tokenize", uses_slot=False)
DETOKENIZE = EngineRoute("/detokenize", uses_slot=False)
APPLY_TEMPLATE = EngineRoute("/apply-template", uses_slot=False)

#: Path under ``lemonade/api/v1/`` → the engine route behind it.
PROXIED: dict[str, EngineRoute] = {
    "chat/completions": CHAT,
    "completions": COMPLETIONS,
    "embeddings": EMBEDDINGS,
    "reranking": RERANK,
    "rerank": RERANK,  # the name llama.cpp and lemonade users know
    "responses": RESPONSES,
    "messages": MESSAGES,
    "messages/count_tokens": COUNT_TOKENS,
    "infill": INFILL,
    "completion": COMPLETION,  # llama.cpp's own completion route (not OpenAI's)
    "tokenize": TOKENIZE,
    "detokenize": DETOKENIZE,
    "apply-template": APPLY_TEMPLATE,
}


def body_for_engine(route: EngineRoute, body: dict[str, Any], raw: bytes,
                    default_n_predict: int | None) -> bytes:
    """The request body to send to the engine: ``raw`` as the client sent it, or, on a route
    that caps tokens and when the body names no length, ``body`` with ``n_predict`` set to
    ``default_n_predict``.

    llama.cpp's own ``completion`` and ``infill`` routes default to ``n_predict: -1``: a client
    that forgets the length holds a slot until the context is full (minutes on a CPU, for a
    reply nobody reads). The OpenAI-style routes are left as the client sent them. A length
    of ``null`` counts as none; ``default_n_predict`` None or -1 means no cap.
    """
    if (not route.caps_tokens or default_n_predict is None or default_n_predict < 0
            or any(body.get(key) is not None for key in LENGTH_FIELDS)):
        return raw
    return json.dumps({**body, "n_predict": default_n_predict}).encode()
