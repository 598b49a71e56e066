"""What every section shares: the run's context, repetition counts, and interleaving."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .report import Row

#: The fixed prompt of every chat request (same bytes on both sides; prompt cache left on).
PROMPT = [{"role": "user", "content": "Say hi"}]


@dataclass
class Reps:
    """How many repetitions a section takes: at least ``min``, at most ``max``, and no more
    once ``budget_s`` is spent (so a loaded machine shortens the run instead of stretching it)."""

    min: int
    max: int
    budget_s: float


@dataclass
class Context:
    """The run: mode, paths, binaries and the rows and notes sections add."""

    smoke: bool
    llama_server: str
    model_file: str
    fake_server: str
    tmp: Path
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    loadavg_samples: list[list[float]] = field(default_factory=list)
    #: time.monotonic() after which sections take only their minimum repetitions.
    deadline: float = float("inf")
    #: Where ``--profile`` puts the profiles of sections that start their own server (else None).
    profile_dir: Path | None = None

    def reps(self, full: Reps, smoke: Reps) -> Reps:
        chosen = smoke if self.smoke else full
        left = max(0.0, self.deadline - time.monotonic())
        return Reps(chosen.min, chosen.max, min(chosen.budget_s, left))

    def sample_load(self) -> None:
        self.loadavg_samples.append(list(os.getloadavg()))

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def interleaved(
    arms: dict[str, Callable[[], float]], reps: Reps
) -> dict[str, list[float]]:
    """Run each arm once per repetition, rotating the order each time (AB, BA, AB...).

    An arm returns one sample (or raises: that is a broken run). Returns the samples per arm.
    """
    names = list(arms)
    out: dict[str, list[float]] = {n: [] for n in names}
    started = time.monotonic()
    for i in range(reps.max):
        if i >= reps.min and time.monotonic() - started > reps.budget_s:
            break
        k = i % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(arms[name]())
    return out


def interleaved_by_backend(
    groups: list[tuple[Callable[[], object], dict[str, Callable[[], float]]]], reps: Reps
) -> dict[str, list[float]]:
    """:func:`interleaved` for arms that hit different backend processes.

    Each group is ``(warm, arms)``: arms that end up at the same llama-server, and ``warm``, one
    unmeasured request to it. A request that follows one to another llama-server is slower
    (1.5 ms on this machine: that process's working set is cold), so with plain rotation an arm
    that always follows a different backend pays for it every time. Here every group starts with
    ``warm``, and arms inside a group rotate, so each measured request follows one to its own
    backend, whatever the arm.
    """
    out: dict[str, list[float]] = {n: [] for _, arms in groups for n in arms}
    started = time.monotonic()
    for i in range(reps.max):
        if i >= reps.min and time.monotonic() - started > reps.budget_s:
            break
        order = groups if i % 2 == 0 else groups[::-1]
        for warm, arms in order:
            warm()
            names = list(arms)
            k = i % len(names)
            for name in names[k:] + names[:k]:
                out[name].append(arms[name]())
    return out
