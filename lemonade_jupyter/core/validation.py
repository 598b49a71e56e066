"""The one check of a number, boolean or name a user gave: a JSON body, a config file, a command
line.

Every check raises :class:`~lemonade_jupyter.errors.InvalidRequestError` (a 400) naming the
parameter, so the same wording reaches an HTTP client, a magic and a ``TraitError``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..errors import InvalidRequestError
from .names import spelled

#: Larger magnitudes are never meaningful here (seconds, tokens, counts, weights).
MAX_MAGNITUDE = 1e12
_LIMIT = f"{MAX_MAGNITUDE:.0e}".replace("e+", "e")  # "1e12"


def check_number(
    key: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    integer: bool = False,
    exclusive_minimum: bool = False,
) -> float | int:
    """Return ``value`` checked: an ``int`` when ``integer``, else a ``float``.

    A bool is not a number (it is an ``int`` subclass in Python, never in JSON). NaN, the
    infinities and anything beyond :data:`MAX_MAGNITUDE` are refused before the bounds.
    ``minimum`` and ``maximum`` are inclusive unless ``exclusive_minimum``.
    """
    if integer:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequestError(f"Parameter '{key}' must be an integer", param=key)
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"Parameter '{key}' must be a number", param=key)
    # abs() first: comparing a huge int with a float is exact, math.isfinite() on it overflows.
    if abs(value) > MAX_MAGNITUDE or not math.isfinite(value):
        raise InvalidRequestError(
            f"Parameter '{key}' must be a finite number between -{_LIMIT} and {_LIMIT}",
            param=key,
        )
    too_low = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
    too_high = maximum is not None and value > maximum
    if too_low or too_high:
        raise InvalidRequestError(
            f"Parameter '{key}' must be {range_text(minimum, maximum, exclusive_minimum)}",
            param=key,
        )
    return value if integer else float(value)


def check_bool(key: str, value: Any) -> bool:
    """Return ``value`` if it is a real boolean (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise InvalidRequestError(f"Parameter '{key}' must be a boolean", param=key)
    return value


def check_name(key: str, value: Any, pattern: re.Pattern[str], spelling: str) -> str:
    """Return ``value`` if the whole string is spelled as ``pattern`` says (see :mod:`.names`:
    no trailing newline); else a 400 saying ``Parameter 'key' must be <spelling>``."""
    if not spelled(pattern, value):
        raise InvalidRequestError(f"Parameter '{key}' must be {spelling}", param=key)
    return str(value)


def range_text(
    minimum: float | None, maximum: float | None, exclusive_minimum: bool = False
) -> str:
    """The bounds in words: ``>= 0``, ``> 0``, ``<= 5``, ``between 0 and 60``, ``in (0, 1]``."""
    low, high = _show(minimum), _show(maximum)
    if minimum is not None and maximum is not None:
        return f"in ({low}, {high}]" if exclusive_minimum else f"between {low} and {high}"
    if minimum is not None:
        return f"> {low}" if exclusive_minimum else f">= {low}"
    if maximum is not None:
        return f"<= {high}"
    return "a number"


def _show(bound: float | None) -> str:
    if bound is None:
        return ""
    if float(bound).is_integer():
        return str(int(bound))
    return f"{bound:g}"
