"""Performance of the last generation request, as llama-server measured it.

llama-server puts a ``timings`` object in every non-streamed generation answer and in the last
event of a stream (``prompt_n``, ``prompt_ms``, ``predicted_n``, ``predicted_per_second``,
``cache_n``...). The proxy hands the answer's last bytes here; :class:`RequestStats` keeps the
figures of the last request (``GET lemonade/api/v1/stats``, lemonade's stats endpoint) and
tells its listeners (the Prometheus histograms of :mod:`.metrics`). Each record also names its
user (the request's ``acting_user``) and is added to that user's usage (:mod:`.usage`).

Owner: :class:`RequestStats` (one per router) holds the last record; only :meth:`record` writes
it, on the router's loop.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from .events import acting_user
from .usage import UsageLedger

#: The ``timings`` object of llama-server: flat, numbers only, so it ends at the first ``}``.
_TIMINGS = re.compile(rb'"timings"\s*:\s*(\{[^{}]*\})')


@dataclass(frozen=True)
class RequestRecord:
    """One request's figures, named as lemonade's stats endpoint names them."""

    model: str
    route: str
    #: Seconds the engine took to process the prompt (its first token follows at once).
    time_to_first_token: float
    #: Generated tokens per second of decoding.
    tokens_per_second: float
    #: Prompt tokens the engine processed, those it reused from its cache, and both together.
    input_tokens: int
    cached_tokens: int
    prompt_tokens: int
    output_tokens: int
    #: Wall-clock time the request ended (seconds since the epoch).
    finished_at: float
    #: The user's row in the usage ledger (:mod:`.usage`): who made the request.
    user: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_timings(tail: bytes) -> dict[str, Any] | None:
    """The last ``timings`` object in the last bytes of an answer, or None."""
    found = _TIMINGS.findall(tail)
    if not found:
        return None
    try:
        timings = json.loads(found[-1])
    except ValueError:
        return None
    return timings if isinstance(timings, dict) else None


def _number(timings: dict[str, Any], key: str) -> float:
    value = timings.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else 0.0


class RequestStats:
    """The last generation request's figures, and who wants to hear of each new one."""

    def __init__(self) -> None:
        self.last: RequestRecord | None = None
        #: Requests and tokens per user since the router started.
        self.usage = UsageLedger()
        self._listeners: list[Callable[[RequestRecord], None]] = []

    def add_listener(self, listener: Callable[[RequestRecord], None]) -> None:
        self._listeners.append(listener)

    def record(self, model: str, route: str, tail: bytes) -> RequestRecord | None:
        """Record the request whose answer ended with ``tail`` if it carries ``timings``.

        An answer without them (an error, an engine that does not measure, Anthropic's stream
        format) leaves the previous record in place and returns None.
        """
        timings = parse_timings(tail)
        if timings is None:
            return None
        rec = RequestRecord(
            model=model, route=route,
            time_to_first_token=_number(timings, "prompt_ms") / 1000.0,
            tokens_per_second=_number(timings, "predicted_per_second"),
            input_tokens=int(_number(timings, "prompt_n")),
            cached_tokens=int(_number(timings, "cache_n")),
            prompt_tokens=int(_number(timings, "prompt_n") + _number(timings, "cache_n")),
            output_tokens=int(_number(timings, "predicted_n")),
            finished_at=time.time(),
        )
        user = self.usage.add(acting_user.get(), rec.prompt_tokens, rec.output_tokens,
                              rec.time_to_first_token)
        rec = replace(rec, user=user)
        self.last = rec
        for listener in self._listeners:
            listener(rec)
        return rec
