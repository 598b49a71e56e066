"""Progress of a build from its output: ninja's ``[n/m]`` and make's ``[ NN%]`` lines.

The parser is a pure function over one line. The printer updates one line in place on a
terminal (``\\r``) and, on a pipe or a log file, prints a line at every tenth of the way, so a
captured log stays short.
"""

from __future__ import annotations

import re
import sys
from typing import TextIO

_NINJA = re.compile(r"^\s*\[(\d+)/(\d+)\]\s")
_MAKE = re.compile(r"^\s*\[\s*(\d{1,3})%\]\s")


def parse_progress(line: str) -> tuple[float, str] | None:
    """``(fraction done, "n/m steps")`` for a ninja step line, ``(fraction, "NN%")`` for a make
    progress line, None for anything else."""
    m = _NINJA.match(line)
    if m:
        done, total = int(m.group(1)), int(m.group(2))
        if total > 0 and done <= total:
            return done / total, f"{done}/{total} steps"
        return None
    m = _MAKE.match(line)
    if m and int(m.group(1)) <= 100:
        return int(m.group(1)) / 100, f"{int(m.group(1))}%"
    return None


class ProgressPrinter:
    """Shows ``label: NN% (detail)``; the figure never goes back (make's per-target
    percentages can, when two targets build in parallel)."""

    def __init__(self, label: str, stream: TextIO | None = None, *,
                 tty: bool | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.fraction = 0.0
        self._printed_tenth = -1
        self._dirty = False

    def feed(self, line: str) -> float | None:
        """Take one output line; returns the fraction done when the line was a progress line."""
        parsed = parse_progress(line)
        if parsed is None:
            return None
        fraction, detail = parsed
        if fraction < self.fraction:
            return self.fraction
        self.fraction = fraction
        pct = int(fraction * 100)
        if self.tty:
            self.stream.write(f"\r{self.label}: {pct:3d}% ({detail})\033[K")
            self.stream.flush()
            self._dirty = True
        elif pct // 10 > self._printed_tenth:
            self._printed_tenth = pct // 10
            self.stream.write(f"{self.label}: {pct}% ({detail})\n")
            self.stream.flush()
        return fraction

    def done(self) -> None:
        """End the in-place line (a terminal) so that what follows starts on a fresh one."""
        if self._dirty:
            self.stream.write("\n")
            self.stream.flush()
            self._dirty = False
