"""Ollama's request bodies to llama-server's OpenAI-compatible ones, and the answers back.

Pure functions and one small accumulator for streams, no I/O, so that each mapping is
testable alone. ``/api/chat`` becomes ``/v1/chat/completions``; ``/api/generate`` becomes the
same chat request with one user message (the model's chat template applies, as in Ollama), or
``/v1/completions`` with ``raw: true``; ``/api/embed`` and ``/api/embeddings`` become
``/v1/embeddings``. What Ollama would do that we cannot (images, ``suffix``, ``template``,
``context``, log-probabilities) is refused with a 400 naming the parameter.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

from ..errors import InvalidRequestError
from .ollama_options import OllamaOptions

CHAT_KEYS = {"model", "messages", "tools", "format", "options", "stream", "keep_alive", "think"}
GENERATE_KEYS = {"model", "prompt", "system", "raw", "format", "options", "stream",
                 "keep_alive", "think", "images", "suffix", "template", "context"}
EMBED_KEYS = {"model", "input", "truncate", "options", "keep_alive", "dimensions"}
EMBEDDINGS_KEYS = {"model", "prompt", "options", "keep_alive"}
MESSAGE_KEYS = {"role", "content", "images", "thinking", "tool_calls", "tool_name"}
ROLES = {"system", "user", "assistant", "tool"}
#: Inputs one embedding request may carry.
MAX_INPUTS = 2048


def now_iso() -> str:
    """Ollama's ``created_at``: RFC 3339 in UTC."""
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def check_keys(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequestError(f"Parameter '{unknown[0]}' is not supported", param=unknown[0])


def _refuse_given(body: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if body.get(key) not in (None, "", [], False):
            raise InvalidRequestError(f"Parameter '{key}' is not supported", param=key)


def _string(body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidRequestError(f"Parameter '{key}' must be a string", param=key)
    return value


def _format(value: Any) -> dict[str, Any] | None:
    if value in (None, ""):
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": value}}
    raise InvalidRequestError("Parameter 'format' must be \"json\" or a JSON schema",
                              param="format")


def _common(body: dict[str, Any], opts: OllamaOptions, stream: bool) -> dict[str, Any]:
    """Fields every generating request carries: sampling, format, thinking, streaming."""
    out: dict[str, Any] = {"stream": stream, **opts.sampling}
    fmt = _format(body.get("format"))
    if fmt is not None:
        out["response_format"] = fmt
    think = body.get("think")
    if think is not None:
        if not isinstance(think, bool):
            raise InvalidRequestError("Parameter 'think' must be a boolean", param="think")
        out["chat_template_kwargs"] = {"enable_thinking": think}
    if stream:
        out["stream_options"] = {"include_usage": True}
    return out


def _tool_call(call: Any, index: int) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequestError("Each tool call needs a function with a name",
                                  param="messages")
    args = fn.get("arguments", {})
    return {"id": f"call_{index}", "type": "function",
            "function": {"name": fn["name"],
                         "arguments": args if isinstance(args, str) else json.dumps(args)}}


def _message(msg: Any) -> dict[str, Any]:
    if not isinstance(msg, dict):
        raise InvalidRequestError("Each message must be an object", param="messages")
    check_keys(msg, MESSAGE_KEYS)
    role = msg.get("role")
    if role not in ROLES:
        raise InvalidRequestError(f"A message's role must be one of {', '.join(sorted(ROLES))}",
                                  param="messages")
    content = msg.get("content") or ""
    if not isinstance(content, str):
        raise InvalidRequestError("A message's content must be a string", param="messages")
    _refuse_given(msg, "images")
    out: dict[str, Any] = {"role": role, "content": content}
    calls = msg.get("tool_calls")
    if calls:
        if not isinstance(calls, list):
            raise InvalidRequestError("'tool_calls' must be a list", param="messages")
        out["tool_calls"] = [_tool_call(c, i) for i, c in enumerate(calls)]
    if role == "tool" and isinstance(msg.get("tool_name"), str):
        out["name"] = msg["tool_name"]
    return out


def chat_request(body: dict[str, Any], opts: OllamaOptions, stream: bool) -> dict[str, Any]:
    """``/api/chat`` → ``/v1/chat/completions`` (``messages`` already checked non-empty)."""
    check_keys(body, CHAT_KEYS)
    out = {**_common(body, opts, stream), "messages": [_message(m) for m in body["messages"]]}
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise InvalidRequestError("Parameter 'tools' must be a list of objects",
                                      param="tools")
        out["tools"] = tools
    return out


def generate_request(body: dict[str, Any], opts: OllamaOptions,
                     stream: bool) -> tuple[str, dict[str, Any]]:
    """``/api/generate`` → (engine path, body): a chat turn, or a raw completion."""
    check_keys(body, GENERATE_KEYS)
    _refuse_given(body, "images", "suffix", "template", "context")
    prompt = _string(body, "prompt") or ""
    system = _string(body, "system")
    raw = body.get("raw", False)
    if not isinstance(raw, bool):
        raise InvalidRequestError("Parameter 'raw' must be a boolean", param="raw")
    common = _common(body, opts, stream)
    if raw:
        common.pop("chat_template_kwargs", None)
        return "/v1/completions", {**common, "prompt": prompt}
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return "/v1/chat/completions", {**common, "messages": messages}


def embed_inputs(body: dict[str, Any], *, legacy: bool) -> list[str]:
    """The texts of ``/api/embed`` (``input``) or ``/api/embeddings`` (``prompt``)."""
    check_keys(body, EMBEDDINGS_KEYS if legacy else EMBED_KEYS)
    if legacy:
        return [_string(body, "prompt", required=True) or ""]
    _refuse_given(body, "dimensions")
    truncate = body.get("truncate")
    if truncate is not None and not isinstance(truncate, bool):
        raise InvalidRequestError("Parameter 'truncate' must be a boolean", param="truncate")
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if (not isinstance(texts, list) or not texts or len(texts) > MAX_INPUTS
            or not all(isinstance(t, str) for t in texts)):
        raise InvalidRequestError(
            f"Parameter 'input' must be a string or a list of 1 to {MAX_INPUTS} strings",
            param="input")
    return texts


# ---------------------------------------------------------------------------- answers
def _ns(ms: Any) -> int:
    return int(float(ms) * 1e6) if isinstance(ms, (int, float)) else 0


def figures(answer: dict[str, Any], started: float, load_s: float) -> dict[str, Any]:
    """Ollama's counts and durations (ns) from an answer's ``usage`` and ``timings``."""
    usage = answer.get("usage") or {}
    timings = answer.get("timings") or {}
    return {
        "total_duration": int((time.monotonic() - started) * 1e9),
        "load_duration": int(load_s * 1e9),
        "prompt_eval_count": timings.get("prompt_n", usage.get("prompt_tokens", 0)),
        "prompt_eval_duration": _ns(timings.get("prompt_ms")),
        "eval_count": timings.get("predicted_n", usage.get("completion_tokens", 0)),
        "eval_duration": _ns(timings.get("predicted_ms")),
    }


def _done_reason(finish: Any) -> str:
    return "length" if finish == "length" else "stop"


def _ollama_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for call in calls:
        fn = call.get("function") or {}
        args = fn.get("arguments") or "{}"
        try:
            parsed = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            parsed = {"_raw": args}
        out.append({"function": {"name": fn.get("name", ""), "arguments": parsed}})
    return out


class AnswerBuilder:
    """Turns one engine answer (whole, or stream chunk by chunk) into Ollama's lines.

    ``chat`` True gives ``message`` objects (``/api/chat``), else ``response`` text
    (``/api/generate``); ``from_chat`` says whether the engine answers a chat completion
    (else a raw completion)."""

    def __init__(self, model: str, *, chat: bool, from_chat: bool, started: float,
                 load_s: float) -> None:
        self.model, self.chat, self.from_chat = model, chat, from_chat
        self.started, self.load_s = started, load_s
        self.finish: Any = None
        self.last: dict[str, Any] = {}
        self._tool_calls: dict[int, dict[str, Any]] = {}

    def _line(self, text: str, thinking: str, done: bool) -> dict[str, Any]:
        line: dict[str, Any] = {"model": self.model, "created_at": now_iso()}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if done and self._tool_calls:
                message["tool_calls"] = _ollama_tool_calls(
                    [self._tool_calls[i] for i in sorted(self._tool_calls)])
            line["message"] = message
        else:
            line["response"] = text
            if thinking:
                line["thinking"] = thinking
            if done and self._tool_calls:
                line["tool_calls"] = _ollama_tool_calls(
                    [self._tool_calls[i] for i in sorted(self._tool_calls)])
        line["done"] = done
        return line

    def whole(self, answer: dict[str, Any]) -> dict[str, Any]:
        """The one line of a ``stream: false`` answer."""
        choice = (answer.get("choices") or [{}])[0]
        if self.from_chat:
            msg = choice.get("message") or {}
            text, thinking = msg.get("content") or "", msg.get("reasoning_content") or ""
            for i, call in enumerate(msg.get("tool_calls") or []):
                self._tool_calls[i] = call
        else:
            text, thinking = choice.get("text") or "", ""
        line = self._line(text, thinking, True)
        line["done_reason"] = _done_reason(choice.get("finish_reason"))
        line.update(figures(answer, self.started, self.load_s))
        return line

    def chunk(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """One line for a stream event with text, else None (the event is remembered)."""
        if event.get("usage") or event.get("timings"):
            self.last = event
        choice = (event.get("choices") or [None])[0]
        if not choice:
            return None
        self.finish = choice.get("finish_reason") or self.finish
        if self.from_chat:
            delta = choice.get("delta") or {}
            for call in delta.get("tool_calls") or []:
                self._merge_call(call)
            text = delta.get("content") or ""
            thinking = delta.get("reasoning_content") or ""
        else:
            text, thinking = choice.get("text") or "", ""
        if not text and not thinking:
            return None
        return self._line(text, thinking, False)

    def _merge_call(self, delta: dict[str, Any]) -> None:
        index = delta.get("index", len(self._tool_calls))
        call = self._tool_calls.setdefault(index, {"function": {"name": "", "arguments": ""}})
        fn = delta.get("function") or {}
        call["function"]["name"] += fn.get("name") or ""
        call["function"]["arguments"] += fn.get("arguments") or ""

    def done(self) -> dict[str, Any]:
        """The last line of a stream: ``done`` with the reason and the figures."""
        line = self._line("", "", True)
        line["done_reason"] = _done_reason(self.finish)
        line.update(figures(self.last, self.started, self.load_s))
        return line
