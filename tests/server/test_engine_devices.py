"""``GET lemonade/api/v1/health``'s ``engine``: the backends and devices the engine itself
reported (a fake CUDA build answering with a recorded ``--list-devices``), and an engine whose
probe hangs: a warning, a CPU answer, and models still served."""

from __future__ import annotations

import logging

import pytest

from lemonade_jupyter.core.engines import probe
from tests.fakes.fake_engine import write_engine

MIB = 1024 * 1024


@pytest.fixture
def engine_build() -> tuple[str, str]:
    return "cuda", "answer"


@pytest.fixture
def lemonade_traits(tmp_path, engine_build):
    build, mode = engine_build
    return {"llama_server_path": str(write_engine(tmp_path / "engine", build, mode=mode))}


async def test_health_engine_lists_its_backends_and_devices(api):
    engine = (await api.health())["engine"]
    assert engine["flavour"] == "custom" and engine["offload"] is True
    assert engine["backends"] == ["CUDA", "CPU"]
    assert [(d["name"], d["description"], d["total"] // MIB, d["free"] // MIB)
            for d in engine["devices"]] == [
        ("CUDA0", "NVIDIA H100 80GB HBM3", 81089, 80514),
        ("CUDA1", "NVIDIA H100 80GB HBM3", 81089, 80514),
        ("CUDA2", "NVIDIA L4", 22478, 22168),
        ("CUDA3", "NVIDIA L4", 22478, 22168)]
    assert engine["version"].startswith("7213 (5f1c8a2b)") and engine["probe_error"] is None


@pytest.mark.parametrize("engine_build", [("cuda", "hang")])
async def test_an_engine_whose_probe_hangs_is_the_cpu_and_still_serves(
        api, default_model_name, caplog, monkeypatch):
    monkeypatch.setattr(probe, "PROBE_TIMEOUT_S", 1.0)
    with caplog.at_level(logging.WARNING, logger=probe.__name__):
        engine = (await api.health())["engine"]
    assert engine["offload"] is False and engine["devices"] == []
    assert engine["backends"] == ["CPU"] and "did not finish" in engine["probe_error"]
    assert "treating it as a CPU build" in caplog.text
    await api.load(default_model_name)
    [entry] = (await api.health())["all_models_loaded"]
    assert entry["device"] == "cpu"
