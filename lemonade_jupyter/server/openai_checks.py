"""Shape checks of OpenAI-style request bodies, made before the router auto-loads a model.

llama-server validates requests as well, but only after the router has loaded the model for
them, possibly evicting another model from its pool: a request that cannot succeed must be
refused before it changes anything (a rejected request never changes the router's state; found
by ``tests/reliability/test_fuzz.py``). Only what the backend would refuse anyway is checked here;
every field we do not know passes through untouched.
"""

from __future__ import annotations

from typing import Any

from ..api_paths import API_V1
from ..core.catalog import ModelSpec
from ..core.validation import check_number
from ..errors import InvalidRequestError

#: Sampling and length fields that llama-server parses as numbers (int32 range).
NUMBER_FIELDS = (
    "max_tokens", "max_completion_tokens", "n", "temperature", "top_p", "top_k", "min_p",
    "seed", "presence_penalty", "frequency_penalty", "repeat_penalty",
)
_INT32_MAX = 2**31 - 1
#: llama-server's reranking route, behind ``lemonade/api/v1/reranking``.
RERANK_PATH = "/v1/rerank"
#: Model types that serve text generation; the others have routes of their own.
_NOT_GENERATIVE = ("embedding", "reranking")


def check_request(upstream_path: str, spec: ModelSpec, body: dict[str, Any]) -> None:
    """Raise InvalidRequestError (400) when ``body`` cannot be served by ``spec`` on that route."""
    if upstream_path == RERANK_PATH:
        _check_rerank(spec, body)
        return
    if upstream_path == "/v1/embeddings":
        if spec.type != "embedding":
            raise InvalidRequestError(
                f"Model '{spec.name}' is a {spec.type} model; embeddings need a model "
                "registered with the label 'embeddings'", param="model",
            )
        _check_text_or_list(body, "input")
        return
    if spec.type in _NOT_GENERATIVE:
        route = "reranking" if spec.type == "reranking" else "embeddings"
        raise InvalidRequestError(
            f"Model '{spec.name}' is a {spec.type} model and does not generate text; "
            f"use {API_V1}/{route}", param="model",
        )
    if upstream_path == "/v1/chat/completions":
        _check_messages(body.get("messages"))
    else:
        _check_text_or_list(body, "prompt")
    for key in NUMBER_FIELDS:
        value = body.get(key)
        if value is None:
            continue
        check_number(key, value, minimum=-_INT32_MAX, maximum=_INT32_MAX)


def _check_rerank(spec: ModelSpec, body: dict[str, Any]) -> None:
    """The reranking route: a reranking model, a query and documents to score (never streamed)."""
    if spec.type != "reranking":
        raise InvalidRequestError(
            f"Model '{spec.name}' is a {spec.type} model; reranking needs a model registered "
            "with the label 'reranking'", param="model",
        )
    if body.get("stream") is True:
        raise InvalidRequestError("Reranking answers are not streamed", param="stream")
    query = body.get("query")
    if not isinstance(query, str) or not query:
        raise InvalidRequestError("Parameter 'query' is required: a non-empty string",
                                  param="query")
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents or not all(
            isinstance(d, str) for d in documents):
        raise InvalidRequestError(
            "Parameter 'documents' is required: a non-empty array of strings",
            param="documents")
    top_n = body.get("top_n")
    if top_n is not None:
        check_number("top_n", top_n, minimum=1, maximum=_INT32_MAX, integer=True)


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list):
        raise InvalidRequestError("Parameter 'messages' must be an array", param="messages")
    for message in messages:
        if not isinstance(message, dict):
            raise InvalidRequestError(
                "Each entry of 'messages' must be an object", param="messages"
            )
        content = message.get("content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list) or not all(
            isinstance(part, dict) and isinstance(part.get("type"), str) for part in content
        ):
            raise InvalidRequestError(
                "A message's 'content' must be a string or an array of typed parts",
                param="messages",
            )


def _check_text_or_list(body: dict[str, Any], key: str) -> None:
    value = body.get(key)
    if isinstance(value, str) or (isinstance(value, list) and value):
        return
    raise InvalidRequestError(
        f"Parameter '{key}' is required: a string or a non-empty array", param=key
    )
