"""Engines asked what they can do: the recorded outputs of CUDA, ROCm, Vulkan, Metal and CPU
builds parsed, fake engines probed once per binary, and probes that hang or fail treated as
the CPU with a warning (never an error, never a blocked event loop)."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import psutil
import pytest

from lemonade_jupyter.core.engines import probe
from lemonade_jupyter.core.engines.install import cached_binary
from lemonade_jupyter.core.engines.llamacpp import find_engine
from tests.fakes.fake_engine import probe_calls, recorded, write_engine

MIB = 1024 * 1024

#: What each recorded build says: backends, then (name, total MiB, free MiB) per device.
EXPECTED = {
    "cuda": (("CUDA", "CPU"), [("CUDA0", 81089, 80514), ("CUDA1", 81089, 80514),
                               ("CUDA2", 22478, 22168), ("CUDA3", 22478, 22168)]),
    "rocm": (("ROCm", "CPU"), [("ROCm0", 196592, 196288), ("ROCm1", 49136, 48950)]),
    "vulkan": (("Vulkan", "CPU"), [("Vulkan0", 24560, 23012)]),
    "metal": (("Metal", "CPU"), [("MTL0", 49152, 49151)]),
    "cpu": (("CPU",), []),
}


@pytest.mark.parametrize("build", sorted(EXPECTED))
def test_probe_reads_each_recorded_build(build):
    caps = probe.caps_from(recorded(build, "list-devices"), recorded(build, "version"))
    backends, devices = EXPECTED[build]
    assert caps.backends == backends
    assert [(d.name, d.total_bytes // MIB, d.free_bytes // MIB) for d in caps.devices] == devices
    assert caps.offloads is bool(devices) and caps.error is None
    assert caps.version is not None and caps.version.startswith("7213 (5f1c8a2b); built with ")
    assert [d.name for d in caps.gpu_devices()] == [d[0] for d in devices]


def test_probe_output_without_a_device_list_is_an_error():
    with pytest.raises(probe.ProbeError, match="no device list"):
        probe.caps_from("usage: llama-server [options]\n", "")


async def test_probe_asks_each_binary_once_and_again_once_rebuilt(tmp_path):
    engine = write_engine(tmp_path / "a", "rocm")
    first, second = await asyncio.gather(probe.probe(str(engine)), probe.probe(str(engine)))
    assert first is second and [d.name for d in first.devices] == ["ROCm0", "ROCm1"]
    assert await probe.probe(str(engine)) is first
    assert probe_calls(engine) == ["--list-devices", "--version"]
    assert probe.cached(str(engine)) is first
    # Rebuilt in place (another build, another modification time): asked again.
    write_engine(tmp_path / "a", "vulkan")
    os.utime(engine, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert probe.cached(str(engine)) is None
    again = await probe.probe(str(engine))
    assert [d.name for d in again.devices] == ["Vulkan0"]
    assert probe_calls(engine) == ["--list-devices", "--version"] * 2


@pytest.mark.parametrize("mode", ["fail", "garbage"])
async def test_probe_that_fails_is_a_warning_and_the_cpu(tmp_path, caplog, mode):
    engine = write_engine(tmp_path, "cuda", mode=mode)
    with caplog.at_level(logging.WARNING, logger=probe.__name__):
        caps = await probe.probe(str(engine))
    assert not caps.offloads and caps.devices == () and caps.backends == ("CPU",)
    assert caps.error and ("status 1" in caps.error if mode == "fail"
                           else "no device list" in caps.error)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(engine) in warning.getMessage() and "CPU" in warning.getMessage()
    assert await probe.probe(str(engine)) is caps  # not asked again


async def test_probe_that_hangs_times_out_without_blocking_the_loop(tmp_path, caplog,
                                                                    monkeypatch):
    monkeypatch.setattr(probe, "PROBE_TIMEOUT_S", 1.5)
    engine = write_engine(tmp_path, "cuda", mode="hang")
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.05)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)  # the ticker runs first
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=probe.__name__):
        caps = await probe.probe(str(engine))
    took = time.monotonic() - started
    ticker.cancel()
    # The loop kept running while the engine hung: no pause near the 1.5 s a blocking wait
    # would take (generous for a loaded machine).
    gaps = [b - a for a, b in zip(ticks, ticks[1:] + [time.monotonic()])]
    assert 1.4 < took < 10 and max(gaps) < 1.0, max(gaps)
    assert caps.error and "did not finish within 1.5 s" in caps.error and not caps.offloads
    assert "CPU" in caplog.text
    # The hung engine was killed, not left behind.
    assert not [p for p in psutil.Process().children(recursive=True)
                if str(engine) in " ".join(p.cmdline())]


async def test_find_engine_reports_what_the_engine_said(bare_world, tmp_path):
    """A ROCm build on PATH offloads once it listed its devices; our cached CUDA build that
    sees no GPU (CUDA_VISIBLE_DEVICES empty) is CPU-only, whatever its name."""
    on_path = write_engine(bare_world, "rocm")
    before = find_engine(gpu=False)
    assert (before.flavour, before.offload, before.caps) == ("custom", False, None)
    await probe.probe(str(on_path))
    engine = find_engine(gpu=False)
    assert (engine.flavour, engine.offload) == ("custom", True)
    data = engine.to_json()
    assert data["backends"] == ["ROCm", "CPU"]
    assert data["devices"][1] == {"name": "ROCm1", "description": "AMD Radeon PRO W7900",
                                  "total": 49136 * MIB, "free": 48950 * MIB}
    assert data["probe_error"] is None and data["version"].startswith("7213")

    on_path.unlink()
    cuda = write_engine(cached_binary("cuda").parent, "cpu", name=cached_binary("cuda").name)
    assert find_engine(gpu=True).offload is True  # the name's guess, before it is asked
    await probe.probe(str(cuda))
    engine = find_engine(gpu=True)
    assert (engine.flavour, engine.offload, engine.to_json()["devices"]) == ("cuda", False, [])


def test_the_prebuilt_engine_is_answered_without_running_it(bare_world, monkeypatch):
    from lemonade_jupyter.core.engines import lookup

    monkeypatch.setattr(lookup, "prebuilt_available", lambda: True)
    engine = find_engine(gpu=False)
    assert engine.flavour == "prebuilt" and engine.caps is not None
    data = engine.to_json()
    assert (data["backends"], data["devices"], data["offload"]) == (["CPU"], [], False)


async def test_probe_given_up_by_one_caller_still_answers_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "PROBE_TIMEOUT_S", 1.0)
    engine = write_engine(tmp_path, "cuda", mode="hang")
    first = asyncio.create_task(probe.probe(str(engine)))
    second = asyncio.create_task(probe.probe(str(engine)))
    await asyncio.sleep(0.2)
    first.cancel()
    caps = await second
    assert first.cancelled()
    assert caps.error and "did not finish" in caps.error
    assert probe_calls(engine) == ["--list-devices"]  # one run, shared


async def test_probe_keeps_a_bounded_number_of_answers(tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "MAX_ANSWERS", 2)
    monkeypatch.setattr(probe, "_answers", {})
    engines = [write_engine(tmp_path / str(i), "cpu") for i in range(3)]
    for engine in engines:
        await probe.probe(str(engine))
    assert [probe.cached(str(e)) is not None for e in engines] == [False, True, True]
