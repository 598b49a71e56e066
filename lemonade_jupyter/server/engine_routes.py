"""The engine's inference routes that the proxy serves, and how each one behaves.

Every route llama-server answers for a model is proxied under ``lemonade/api/v1/`` with the
same model routing, auto-load, pins, leases and replay; they differ only in what this table
says: whether the answer may stream, whether a request takes one of the backend's parallel
slots (tokenizing does not, so it never waits behind generations), and whether the answer
carries the engine's ``timings`` for the request statistics.
"""

from __future__ import annotations

from dataclasses import dataclass


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


CHAT = EngineRoute("/v1/chat/completions", streams=True, records_stats=True)
COMPLETIONS = EngineRoute("/v1/completions", streams=True, records_stats=True)
EMBEDDINGS = EngineRoute("/v1/embeddings")
RERANK = EngineRoute("/v1/rerank")
RESPONSES = EngineRoute("/v1/responses", streams=True, records_stats=True)
MESSAGES = EngineRoute("/v1/messages", streams=True, records_stats=True)
COUNT_TOKENS = EngineRoute("/v1/messages/count_tokens", uses_slot=False)
INFILL = EngineRoute("/infill", streams=True, records_stats=True)
COMPLETION = EngineRoute("/completion", streams=True, records_stats=True)
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
