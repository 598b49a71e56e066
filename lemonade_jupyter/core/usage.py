"""Usage per user: requests, prompt and completion tokens, and time to first token.

A node router is shared by the users of a JupyterHub, and whoever runs it wants to know who
uses it how much. Each generation request whose answer carries the engine's ``timings`` (see
``core/request_stats.py``) is added to its user's row: the user is the request's
``acting_user`` (the Hub user in node mode, the server's user in a single-user server). The
rows add up to :attr:`UsageLedger.totals`, and ``GET lemonade/api/v1/stats`` shows both
(``users``, ``totals``); ``core/metrics.py`` keeps the same figures as Prometheus counters
labelled by user.

Bounded: at most :data:`MAX_USERS` rows; requests of further users go to the row
:data:`OTHER_USERS` (a Hub has far fewer users). Owner: :class:`UsageLedger` (one per router)
is written only by :meth:`~.request_stats.RequestStats.record`, on the router's loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Most users with a row of their own.
MAX_USERS = 1000
#: The row of a request without a user (no login), and of users beyond :data:`MAX_USERS`.
NO_USER = "(none)"
OTHER_USERS = "(other)"


@dataclass
class Usage:
    """What one user (or everyone) has used since the router started."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Sum of the requests' times to first token (s); the mean is this over ``requests``.
    time_to_first_token_s: float = 0.0

    def add(self, prompt_tokens: int, completion_tokens: int, ttft_s: float) -> None:
        self.requests += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        self.time_to_first_token_s += ttft_s

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "time_to_first_token_s": self.time_to_first_token_s,
            "mean_time_to_first_token_s": (self.time_to_first_token_s / self.requests
                                           if self.requests else None),
        }


class UsageLedger:
    """User -> :class:`Usage`, and their sum."""

    def __init__(self) -> None:
        self._by_user: dict[str, Usage] = {}
        self.totals = Usage()

    def row_of(self, user: str | None) -> str:
        """The row ``user``'s requests are added to (its own while there is room)."""
        name = user or NO_USER
        if name in self._by_user or len(self._by_user) < MAX_USERS:
            return name
        return OTHER_USERS

    def add(self, user: str | None, prompt_tokens: int, completion_tokens: int,
            ttft_s: float) -> str:
        """Add one request to ``user``'s row and to the totals; return the row's name."""
        row = self.row_of(user)
        self._by_user.setdefault(row, Usage()).add(prompt_tokens, completion_tokens, ttft_s)
        self.totals.add(prompt_tokens, completion_tokens, ttft_s)
        return row

    def to_json(self) -> dict[str, dict[str, Any]]:
        """A snapshot: user -> figures, sorted by user."""
        return {user: self._by_user[user].to_json() for user in sorted(self._by_user)}
