"""llama-server's flags as its ``--help`` lists them, from ``tests/data/llama_server_help.txt``.

The file is recorded from the llama.cpp sources the native engine is built from (its header
says which, and ``scripts/llama_server_flags.py`` makes it), since the tests cannot count on a
built ``llama-server`` to ask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lemonade_jupyter.core.engine_flags import ALLOWED

HELP = Path(__file__).resolve().parents[1] / "data" / "llama_server_help.txt"


@dataclass(frozen=True)
class HelpEntry:
    """One flag of ``--help``: its spellings and whether it takes a value (a hint follows)."""

    spellings: tuple[str, ...]
    takes_value: bool


def help_entries() -> list[HelpEntry]:
    """The flags of the help file. An entry's head (spellings, then the value's hint) fills
    the first 40 columns, or the whole line when it is longer than 37 characters."""
    entries = []
    for line in HELP.read_text(encoding="utf-8").splitlines():
        if not line.startswith("-") or line.startswith("-----"):
            continue
        head = line[:40] if len(line) > 40 and line[37:40] == "   " else line
        spellings: list[str] = []
        takes_value = False
        for part in (p.strip() for p in head.strip().split(",")):
            name, _, hint = part.partition(" ")
            spellings.append(name)
            if hint:
                takes_value = True
                break
        entries.append(HelpEntry(tuple(spellings), takes_value))
    return entries


def outside_the_allowlist() -> list[str]:
    """Every spelling llama-server takes that ``llamacpp_args`` must refuse, sorted."""
    allowed = {n for rule in ALLOWED for n in rule.names + rule.negations}
    return sorted({s for e in help_entries() for s in e.spellings} - allowed)
