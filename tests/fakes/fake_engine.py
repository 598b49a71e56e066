"""Fake engine binaries for the device probe: llama-server builds that answer ``--list-devices``
and ``--version`` with a recorded output (``tests/data/engines/<build>.*.txt``), hang, fail,
or print something else; any other command line runs the fake llama-server
(:mod:`tests.fakes.fake_llama_server`), so a router can start models on them too.

Each call of :func:`write_engine` writes a new script (its own path: the probe's cache is per
binary), which appends one line per probe to ``<script>.calls`` so tests can count probes.
"""

from __future__ import annotations

import sys
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "engines"
FAKE_SERVER = Path(__file__).resolve().parent / "fake_llama_server.py"
BUILDS = ("cuda", "rocm", "vulkan", "metal", "cpu")
MODES = ("answer", "hang", "fail", "garbage")


def recorded(build: str, kind: str) -> str:
    """The recorded output of ``--<kind>`` (``list-devices`` or ``version``) of a ``build``,
    without the header lines (``#``) that say where its format comes from."""
    text = (DATA / f"{build}.{kind}.txt").read_text()
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))


def write_engine(folder: Path, build: str = "cpu", *, mode: str = "answer",
                 name: str = "llama-server") -> Path:
    """An executable ``folder/name`` that probes as ``build`` does (``mode`` "answer"),
    sleeps for an hour ("hang"), exits 1 with llama.cpp's error ("fail") or prints a usage
    text instead of a device list ("garbage")."""
    assert build in BUILDS and mode in MODES
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / name
    script.write_text(f"""#!{sys.executable}
import os, sys, time
probe = [a for a in sys.argv[1:] if a in ("--list-devices", "--version")]
if probe:
    with open({str(script) + ".calls"!r}, "a") as fh:
        fh.write(probe[0] + "\\n")
    if {mode!r} == "hang":
        time.sleep(3600)
    if {mode!r} == "fail":
        print("error: invalid argument: " + probe[0], file=sys.stderr)
        sys.exit(1)
    if {mode!r} == "garbage":
        print("usage: llama-server [options]")
        sys.exit(0)
    kind = probe[0].lstrip("-")
    with open(os.path.join({str(DATA)!r}, {build!r} + "." + kind + ".txt")) as fh:
        sys.stdout.write("".join(l for l in fh if not l.startswith("#")))
    sys.exit(0)
os.execv(sys.executable, [sys.executable, {str(FAKE_SERVER)!r}] + sys.argv[1:])
""")
    script.chmod(0o755)
    return script


def probe_calls(script: Path) -> list[str]:
    """The probe flags ``script`` was run with, in order."""
    calls = Path(str(script) + ".calls")
    return calls.read_text().split() if calls.exists() else []
