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
    "max_tokens", "max_completion_tokens", "max_output_tokens", "n", "n_predict",
    "temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty",
    "frequency_penalty", "repeat_penalty",
)
_INT32_MAX = 2**31 - 1
#: llama-server's reranking route, behind ``lemonade/api/v1/reranking`` and ``rerank``.
RERANK_PATH = "/v1/rerank"
#: Model types that serve text generation; the others have routes of their own.
_NOT_GENERATIVE = ("embedding", "reranking")
#: Routes of any model type: they only use the model's tokenizer.
_TOKENIZER_PATHS = ("/tokenize", "/detokenize")


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
    if upstream_path in _TOKENIZER_PATHS:
        _check_tokenizer(upstream_path, body)
        return
    if spec.type in _NOT_GENERATIVE:
        route = "reranking" if spec.type == "reranking" else "embeddings"
        raise InvalidRequestError(
            f"Model '{spec.name}' is a {spec.type} model and does not generate text; "
            f"use {API_V1}/{route}", param="model",
        )
    _check_generation_body(upstream_path, body)
    for key in NUMBER_FIELDS:
        value = body.get(key)
        if value is None:
            continue
        check_number(key, value, minimum=-_INT32_MAX, maximum=_INT32_MAX)


def _check_generation_body(upstream_path: str, body: dict[str, Any]) -> None:
    """The field each generation route cannot do without, in the shape the engine reads."""
    if upstream_path in ("/v1/chat/completions", "/apply-template"):
        _check_messages(body.get("messages"))
    elif upstream_path in ("/v1/messages", "/v1/messages/count_tokens"):
        _check_messages(body.get("messages"), required=True)
        system = body.get("system")
        if system is not None and not isinstance(system, (str, list)):
            raise InvalidRequestError(
                "Parameter 'system' must be a string or an array of text blocks",
                param="system")
    elif upstream_path == "/v1/responses":
        _check_text_or_list(body, "input")
    elif upstream_path == "/infill":
        for key in ("input_prefix", "input_suffix", "prompt"):
            if body.get(key) is not None and not isinstance(body[key], str):
                raise InvalidRequestError(f"Parameter '{key}' must be a string", param=key)
        extra = body.get("input_extra")
        if extra is not None and not (isinstance(extra, list) and all(
                isinstance(chunk, dict) for chunk in extra)):
            raise InvalidRequestError(
                "Parameter 'input_extra' must be an array of {filename, text} objects",
                param="input_extra")
    else:
        _check_text_or_list(body, "prompt")


def _check_tokenizer(upstream_path: str, body: dict[str, Any]) -> None:
    if upstream_path == "/tokenize":
        if not isinstance(body.get("content"), str):
            raise InvalidRequestError("Parameter 'content' is required: a string",
                                      param="content")
        return
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t <= _INT32_MAX
            for t in tokens):
        raise InvalidRequestError(
            "Parameter 'tokens' is required: an array of token ids", param="tokens")


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


def _check_messages(messages: Any, *, required: bool = False) -> None:
    if not isinstance(messages, list) or (required and not messages):
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
