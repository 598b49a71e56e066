"""Load options sent with an inference request: applied when that request auto-loads its model.

Lemonade's clients put load options in the body of a chat or completion request (an agent with
a long system prompt sends ``ctx_size`` so that the model it auto-loads has room for it). Such a
field means nothing to llama-server, so it is taken out of the body here, checked exactly as
``/load`` checks it (:func:`~..core.options.parse_load_options`: ``ctx_size`` a number or
``"auto"``, ``llamacpp_args`` through the allowlist of :mod:`..core.engine_flags` under the
server's policy; a bad value is a 400 before anything loads), and handed to the lease that
auto-loads the model.

Only :data:`REQUEST_LOAD_FIELDS` are taken (an allowlist: the rest of the body goes to the
engine as the client sent it). They apply only to a load the request itself causes: a model
that is already loaded (or loading) keeps the options it runs with, since reloading it would
cut off every other request it serves. Either way the answer says what the model runs with in
the :data:`HEADER` header, a JSON object of the fields the request named, so a client can tell
whether it got what it asked for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.engine_flags import ArgsPolicy
from ..core.engines.llamacpp import DEFAULT_CTX_SIZE
from ..core.options import LoadOptions, parse_load_options

#: The load options an inference request may carry (lemonade's clients send ``ctx_size``).
REQUEST_LOAD_FIELDS = ("ctx_size", "llamacpp_args")
#: The answer's header with what the model runs with, e.g. ``{"ctx_size": 8192}``.
HEADER = "X-Lemonade-Load-Options"


@dataclass(frozen=True)
class RequestLoadOptions:
    """The load options one inference request carried (``given`` empty: none)."""

    options: LoadOptions = field(default_factory=LoadOptions)
    given: frozenset[str] = frozenset()

    def running(self, started_with: LoadOptions) -> str:
        """The :data:`HEADER` value: each field the request named, as the backend runs it
        (``started_with``: the options its process was started with, ``ctx_size`` resolved)."""
        values: dict[str, Any] = {}
        for key in REQUEST_LOAD_FIELDS:
            if key not in self.given:
                continue
            if key == "ctx_size":
                values[key] = started_with.ctx_size or DEFAULT_CTX_SIZE
            else:
                values[key] = getattr(started_with, key)
        return json.dumps(values, separators=(",", ":"), ensure_ascii=True)


def take_load_options(body: Mapping[str, Any], policy: ArgsPolicy,
                      ) -> tuple[RequestLoadOptions, dict[str, Any]]:
    """The request's load options and its body without them.

    Raises InvalidRequestError (400, naming the field) for a value ``/load`` would refuse."""
    carried = {k: body[k] for k in REQUEST_LOAD_FIELDS if k in body}
    rest = {k: v for k, v in body.items() if k not in REQUEST_LOAD_FIELDS}
    if not carried:
        return RequestLoadOptions(), rest
    options, given = parse_load_options(carried, args_policy=policy)
    return RequestLoadOptions(options, given), rest
