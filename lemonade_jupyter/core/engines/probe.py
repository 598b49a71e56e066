"""What an engine binary can do, in its own words: ``--list-devices`` and ``--version``.

An engine's name says little: a ``llama-server`` on ``PATH`` may be a CUDA, ROCm, Vulkan,
Metal or CPU build, and a CUDA build sees no GPU when ``CUDA_VISIBLE_DEVICES`` hides them.
So every engine is asked, once per binary (cached by its real path, size and modification
time, so a rebuilt binary is asked again), which devices it sees and what it was built with:

* ``--list-devices`` prints ``Available devices:`` and then one line per device that is not
  the CPU, ``  <name>: <description> (<total> MiB, <free> MiB free)`` (``CUDA0``, ``ROCm0``,
  ``Vulkan0``, ``MTL0``...). A CPU build lists none.
* ``--version`` prints ``version: <build> (<commit>)`` and ``built with <compiler> for
  <target>``.
* On the way, the backends log themselves: ``load_backend: loaded CUDA backend from ...``
  (builds with loadable backends), ``ggml_cuda_init: found 2 CUDA devices:`` (``ROCm`` for a
  HIP build), ``ggml_vulkan: Found 1 Vulkan devices:``.

An engine that lists no device runs on the CPU, whatever it is called. A probe that fails (an
error status, an output without the device list) or hangs (:data:`PROBE_TIMEOUT_S`) is logged
as a warning and the engine is treated as a CPU build; the answer is cached like any other, so
a broken binary costs one timeout, not one per start.

The probe runs the binary as a subprocess of the event loop (never blocking it); outputs are
read up to :data:`MAX_OUTPUT_BYTES`. Owns ``_answers`` and ``_pending`` (module-level, shared
by every router of the process; written on the loop that probes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: How long one probe command may run (a CUDA build initialises every GPU it sees: seconds).
PROBE_TIMEOUT_S = 30.0
#: Output read per probe command; a device list is a few hundred bytes.
MAX_OUTPUT_BYTES = 256 * 1024
MIB = 1024 * 1024

_DEVICE_LINE = re.compile(
    r"^\s+(?P<name>[A-Za-z][\w.-]*): (?P<description>.*?) "
    r"\((?P<total>\d+) MiB, (?P<free>\d+) MiB free\)\s*$")
_LOADED = re.compile(r"\bload_backend: loaded (?P<backend>[\w-]+) backend from\b")
_FOUND = re.compile(r"\bfound \d+ (?P<backend>CUDA|ROCm|MUSA) devices", re.IGNORECASE)
_VULKAN = re.compile(r"\bggml_vulkan: Found \d+ Vulkan devices")
_METAL = re.compile(r"\bggml_metal_(?:init|device_init)\b")
_VERSION = re.compile(r"^version: (?P<version>.+?)\s*$", re.MULTILINE)
_BUILT = re.compile(r"^built with (?P<built>.+?)\s*$", re.MULTILINE)
#: Device name prefix -> the backend it belongs to (``MTL0`` is Metal's).
_FAMILIES = {"MTL": "Metal"}


@dataclass(frozen=True)
class EngineDevice:
    """One device an engine sees, as it sees it (memory at the time of the probe)."""

    name: str
    description: str
    total_bytes: int
    free_bytes: int

    @property
    def backend(self) -> str:
        """``CUDA`` for ``CUDA0``, ``Metal`` for ``MTL0``."""
        prefix = re.sub(r"\d+$", "", self.name)
        return _FAMILIES.get(prefix, prefix)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "total": self.total_bytes, "free": self.free_bytes}


@dataclass(frozen=True)
class EngineCaps:
    """What an engine said about itself: its backends, its devices and its version.

    ``error`` is set when the probe failed (the engine is then treated as a CPU build)."""

    backends: tuple[str, ...] = ("CPU",)
    devices: tuple[EngineDevice, ...] = ()
    version: str | None = None
    error: str | None = None

    @property
    def offloads(self) -> bool:
        """Whether the engine can put layers anywhere but the CPU: it sees a device."""
        return bool(self.devices)

    def gpu_devices(self) -> tuple[EngineDevice, ...]:
        """The devices of the engine's first GPU backend, in its order (``CUDA0``,
        ``CUDA1``...): the ones placement numbers 0, 1... A build with two GPU backends
        (CUDA and Vulkan) lists the same GPU twice; one backend is used."""
        if not self.devices:
            return ()
        first = self.devices[0].backend
        return tuple(d for d in self.devices if d.backend == first)

    def to_json(self) -> dict[str, Any]:
        return {"backends": list(self.backends),
                "devices": [d.to_json() for d in self.devices],
                "version": self.version, "probe_error": self.error}


def parse_devices(text: str) -> tuple[EngineDevice, ...] | None:
    """The devices of a ``--list-devices`` output; None when it has no ``Available devices:``
    line (the binary did not understand the flag)."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines)
                     if line.strip() == "Available devices:")
    except StopIteration:
        return None
    devices = []
    for line in lines[start + 1:]:
        match = _DEVICE_LINE.match(line)
        if match is None:
            continue  # backend log lines may interleave (stderr and stdout are one stream)
        devices.append(EngineDevice(match["name"], match["description"],
                                    int(match["total"]) * MIB, int(match["free"]) * MIB))
    return tuple(devices)


def parse_backends(text: str, devices: tuple[EngineDevice, ...]) -> tuple[str, ...]:
    """The backends an engine was built with: those its log names and those its devices
    belong to, then the CPU (every build has it)."""
    found = [m["backend"] for m in _LOADED.finditer(text)]
    found += [m["backend"] for m in _FOUND.finditer(text)]
    if _VULKAN.search(text):
        found.append("Vulkan")
    if _METAL.search(text):
        found.append("Metal")
    found += [d.backend for d in devices]
    found.append("CPU")
    return tuple(dict.fromkeys(_FAMILIES.get(b, b) for b in found))


def parse_version(text: str) -> str | None:
    """``"6543 (1f2e3d4c); built with cc (GCC) 13.3.0 for x86_64-linux-gnu"`` from
    ``--version``'s two lines; None without them."""
    version = _VERSION.search(text)
    if version is None:
        return None
    built = _BUILT.search(text)
    return version["version"] + (f"; built with {built['built']}" if built else "")


def caps_from(list_output: str, version_output: str) -> EngineCaps:
    """An engine's capabilities from its two outputs; raises ProbeError when the device
    list is missing."""
    devices = parse_devices(list_output)
    if devices is None:
        last = list_output.strip().splitlines()[-1:] or ["no output"]
        raise ProbeError(f"--list-devices printed no device list ({last[0][:200]})")
    return EngineCaps(parse_backends(list_output + "\n" + version_output, devices), devices,
                      parse_version(version_output))


class ProbeError(RuntimeError):
    """The engine did not answer a probe command (timeout, error status, unknown output)."""


def probe_key(path: str) -> tuple[str, int, int] | None:
    """The cache key of a binary: its real path, size and modification time (None when it
    cannot be read)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return None
    return real, st.st_size, st.st_mtime_ns


#: Answers kept (the oldest goes first): one per binary and rebuild of it.
MAX_ANSWERS = 64
#: Answers so far, per :func:`probe_key`.
_answers: dict[tuple[str, int, int], EngineCaps] = {}
#: Probes under way (their own tasks, so that a caller that gives up does not cancel the
#: others' answer), so that concurrent starts share one.
_pending: dict[tuple[str, int, int], asyncio.Task[EngineCaps]] = {}


def cached(path: str) -> EngineCaps | None:
    """The probe's answer for this binary as it is now; None when it was not asked yet."""
    key = probe_key(path)
    return _answers.get(key) if key is not None else None


async def probe(path: str, *, timeout_s: float | None = None) -> EngineCaps:
    """Ask the engine at ``path`` for its devices and version (once per binary; later calls
    return the cached answer at once). Never raises for the engine's sake: a failure or a
    timeout (``timeout_s`` per command, default :data:`PROBE_TIMEOUT_S`) is a warning and a
    CPU answer with ``error`` set. Cancelling the caller leaves the probe running for others."""
    timeout_s = PROBE_TIMEOUT_S if timeout_s is None else timeout_s
    key = probe_key(path)
    if key is None:
        return EngineCaps(error=f"{path} cannot be read")
    if key in _answers:
        return _answers[key]
    loop = asyncio.get_running_loop()
    task = _pending.get(key)
    if task is None or task.done() or task.get_loop() is not loop:
        task = loop.create_task(_ask(path, key, timeout_s))
        _pending[key] = task
        task.add_done_callback(lambda done: _forget(key, done))
    return await asyncio.shield(task)


def _forget(key: tuple[str, int, int], task: asyncio.Task[EngineCaps]) -> None:
    if _pending.get(key) is task:
        del _pending[key]


async def _ask(path: str, key: tuple[str, int, int], timeout_s: float) -> EngineCaps:
    try:
        listed = await _run([path, "--list-devices"], timeout_s)
        version = await _run([path, "--version"], timeout_s)
        caps = caps_from(listed, version)
    except ProbeError as exc:
        log.warning("Engine %s did not say which devices it sees (%s); treating it as a "
                    "CPU build", path, exc)
        caps = EngineCaps(error=str(exc))
    _answers[key] = caps
    while len(_answers) > MAX_ANSWERS:
        del _answers[next(iter(_answers))]
    return caps


async def _run(argv: list[str], timeout_s: float) -> str:
    """stdout and stderr of ``argv`` (one stream, at most :data:`MAX_OUTPUT_BYTES`); raises
    ProbeError on a timeout, an error status or a binary that does not start."""
    # The order backends run with (see launcher.GPU_ENV), so CUDA<i> is NVML's GPU i here too.
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True, env=env)
    except OSError as exc:
        raise ProbeError(f"{argv[1]}: {exc}") from exc
    assert proc.stdout is not None
    try:
        output = await asyncio.wait_for(_read_capped(proc.stdout), timeout_s)
        status = await asyncio.wait_for(proc.wait(), timeout_s)
    except asyncio.TimeoutError:
        raise ProbeError(f"{argv[1]} did not finish within {timeout_s:g} s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    text = output.decode(errors="replace")
    if status != 0:
        last = text.strip().splitlines()[-1:] or ["no output"]
        raise ProbeError(f"{argv[1]} exited with status {status}: {last[0][:200]}")
    return text


async def _read_capped(stream: asyncio.StreamReader) -> bytes:
    """Read to the end, keeping at most :data:`MAX_OUTPUT_BYTES` (the rest is drained so the
    process is not blocked on a full pipe)."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < MAX_OUTPUT_BYTES:
            kept += chunk[: MAX_OUTPUT_BYTES - len(kept)]
    return bytes(kept)
