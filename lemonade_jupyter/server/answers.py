"""What the proxy does to an engine's answer on its way to the client, for local backends and
remote replicas alike: ``"model"`` set to the name the client asked for (on the bytes where
that is safe), a backend's error mapped into our envelope, and the signal that the client left.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import error_body


class ClientGone(Exception):
    """The HTTP client closed its connection; stop quietly."""


#: A ``"model"`` key right after ``{`` or ``,``, with a string value. Inside a JSON string
#: every quote is escaped, so these bytes are always a key and its value, never text.
_MODEL_FIELD = re.compile(rb'[{,]"model":"(?:[^"\\]|\\.)*"')
#: Every place ``"model"`` appears (a key, whatever its value, or a string value).
_MODEL_WORD = b'"model"'


def rewrite_model(payload: bytes, model: str) -> bytes:
    """Set ``"model"`` in a JSON object to the name the client asked for."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload
    if isinstance(data, dict) and "model" in data:
        data["model"] = model
        return json.dumps(data, separators=(",", ":")).encode()
    return payload


class Renamer:
    """Sets ``"model"`` to the name the client asked for in JSON answers or whole SSE events.

    llama-server names its GGUF path, the same way in every event of an answer, one field per
    event, at its top level. So the bytes of that field are found once (a regular expression)
    and then replaced as bytes, as long as they are the only ``"model"`` in the block: one
    count, one replace, no parsing. Anything else goes through JSON, event by event.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self._field = b'"model":' + json.dumps(model).encode()
        self._seen: bytes | None = None  # the backend's field with the byte before it

    def __call__(self, block: bytes) -> bytes:
        words = block.count(_MODEL_WORD)
        if not words:
            return block
        seen = self._seen
        if seen is not None and block.count(seen) == words:
            return block.replace(seen, seen[:1] + self._field)
        out, found = _MODEL_FIELD.subn(lambda m: m.group()[:1] + self._field, block)
        if found == words:
            self._seen = _MODEL_FIELD.findall(block)[-1]
            return out
        if not block.startswith(b"data: "):
            return rewrite_model(block, self.model)
        events = []
        for event in block.split(b"\n\n"):
            if event.startswith(b"data: {"):
                event = b"data: " + rewrite_model(event[6:], self.model)
            events.append(event)
        return b"\n\n".join(events)


def upstream_error(resp_status: int, payload: bytes) -> tuple[int, dict[str, Any]]:
    """Map a backend error answer to our envelope, keeping its status and message.

    One exception: llama-server answers 501 ``not_supported_error`` for a request the model
    cannot serve (``/infill`` on a model without fill-in-the-middle tokens, embeddings from a
    model loaded without them). That is the caller's request, not a server fault: a 400
    ``not_supported`` with the engine's message."""
    try:
        data = json.loads(payload)
    except ValueError:
        data = None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or "backend error")
        err_type = str(err.get("type") or "server_error")
    else:
        message = payload.decode("utf-8", "replace")[:500] or f"backend answered {resp_status}"
        err_type = "invalid_request_error" if resp_status < 500 else "server_error"
    if err_type == "not_supported_error":
        return 400, error_body(message, err_type, code="not_supported")
    status = resp_status if 400 <= resp_status < 600 else 502
    return status, error_body(message, err_type, code="backend_error")
