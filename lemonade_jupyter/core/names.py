"""The spelling of every name a user gives: model names, aliases, labels, repository files.

One place for these rules, so that every check spells a name the same way and matches the
*whole* string. ``re.match`` with a ``$`` anchor is not enough: in a Python pattern ``$`` also
matches just before a final ``"\\n"``, so ``"user.x\\n"`` passed every ``^…$`` check and landed
in state files, file names and log lines. :func:`spelled` uses ``re.fullmatch``, which
accepts no trailing newline (or anything else); the patterns carry no anchors of their own, so
they are not meant for ``match``/``search``.
"""

from __future__ import annotations

import re
from typing import Any

#: A model of the catalog or an alias: letters, digits, ``.``, ``_``, ``-``; 128 at most.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: A model a user registered (``/pull``): ``user.`` and a model name.
USER_MODEL_NAME = re.compile(r"user\.[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: A label of a model (``llm``, ``embeddings``, ``vision``…); 64 at most.
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: A file inside a hub repository (a multimodal projector): relative, no ``..`` (checked apart).
REPO_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+/-]{0,255}")


def spelled(pattern: re.Pattern[str], value: Any) -> bool:
    """Whether ``value`` is a string that ``pattern`` matches from its first character to its
    last (no trailing ``\\n`` or ``\\r``)."""
    return isinstance(value, str) and pattern.fullmatch(value) is not None
