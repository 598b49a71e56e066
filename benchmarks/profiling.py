"""``--profile``: sample the Jupyter server with py-spy while a section runs.

py-spy is optional (``pip install py-spy``); it attaches to the server process from outside,
in non-blocking mode, so the server runs unmodified. Each profiled section leaves
``profile-<section>.raw`` (collapsed stacks, for flamegraph tools or speedscope) and
``profile-<section>.txt`` (the frames with the most samples, own and total) in the results
folder. Figures of a profiled run are perturbed by the sampling; use them to find causes,
not as results.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import TracebackType


def find_py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class PySpy:
    """``with PySpy(pid, raw_path):`` records the process until the block ends."""

    def __init__(self, pid: int, raw: Path, rate: int = 250) -> None:
        exe = find_py_spy()
        if exe is None:
            raise RuntimeError("--profile needs py-spy: pip install py-spy")
        self._argv = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
                      "-o", str(raw), "--nonblocking"]
        self.raw = raw
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PySpy:
        self._proc = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached before the first request
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self.raw.exists():
            self.raw.with_suffix(".txt").write_text(summarize(self.raw))


def summarize(raw: Path, top: int = 30) -> str:
    """The frames with the most samples: own (leaf) and total (anywhere on the stack)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{samples} samples of {raw.name}", "", "own (leaf frame):"]
    lines += [f"{n:6d} {100 * n / max(samples, 1):5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", "total (anywhere on the stack):"]
    lines += [f"{n:6d} {100 * n / max(samples, 1):5.1f}%  {f}"
              for f, n in total.most_common(top * 2)]
    return "\n".join(lines) + "\n"
