"""A whisper.cpp model's memory estimate: read from its header, used by admission by fit.

The rule (:mod:`lemonade_jupyter.core.whisper_facts`): file size + a compute buffer fixed per
model size (read from the encoder width) + 64 MiB for the process; a width outside the table
takes the next larger size's buffer. With the real engine on the synthetic model, the estimate
is what admission uses before the start and lies above the RSS measured once it runs.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from lemonade_jupyter.core.fit_admission import FitAdmission
from lemonade_jupyter.core.live_model import LiveModel
from lemonade_jupyter.core.memory import DeviceMemory, MemorySample
from lemonade_jupyter.core.model_spec import ModelSpec
from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.core.preferences import ModelPreferences
from lemonade_jupyter.core.settings import RouterSettings
from lemonade_jupyter.core.whisper_facts import read_facts
from tests.fakes.synthetic_whisper import write_synthetic_whisper
from tests.helpers.artifacts import write_artifact
from tests.helpers.http import API
from tests.helpers.polling import wait_until

MIB = 1024 * 1024
#: (n_audio_state, n_audio_layer, n_text_layer) of whisper.cpp's model sizes.
SHAPES = {"tiny": (384, 4, 4), "base": (512, 6, 6), "small": (768, 12, 12),
          "medium": (1024, 24, 24), "large-v3-turbo": (1280, 32, 4)}
BUFFER_MIB = {"tiny": 192, "base": 256, "small": 384, "medium": 576, "large-v3-turbo": 896}


def whisper_header(path: Path, width: int, audio_layers: int, text_layers: int,
                   body: int = 4096, magic: int = 0x67676D6C) -> Path:
    hparams = (51865, 1500, width, width // 64, audio_layers, 448, width, width // 64,
               text_layers, 80, 1)
    path.write_bytes(struct.pack("<I11i", magic, *hparams) + b"\0" * body)
    return path


@pytest.mark.parametrize("size", sorted(SHAPES))
def test_whisper_estimate_is_file_plus_the_buffer_of_its_size_plus_the_process(tmp_path, size):
    path = whisper_header(tmp_path / f"ggml-{size}.bin", *SHAPES[size], body=3 * MIB)
    facts = read_facts(str(path))
    assert facts.file_bytes == path.stat().st_size
    assert facts.estimate_bytes() == path.stat().st_size + (BUFFER_MIB[size] + 64) * MIB


@pytest.mark.parametrize("width,size", [(64, "tiny"), (400, "base"), (1100, "large-v3-turbo"),
                                        (4096, "large-v3-turbo")])
def test_a_width_outside_the_table_takes_the_next_larger_buffer(tmp_path, width, size):
    path = whisper_header(tmp_path / "ggml-synthetic.bin", width, 2, 2)
    assert read_facts(str(path)).compute_bytes == BUFFER_MIB[size] * MIB


def test_a_file_that_is_no_whisper_model_has_no_estimate(tmp_path):
    with pytest.raises(ValueError, match="magic"):
        read_facts(str(whisper_header(tmp_path / "gguf", 384, 4, 4, magic=0x46554747)))
    (tmp_path / "short").write_bytes(struct.pack("<I", 0x67676D6C))
    with pytest.raises(ValueError, match="too short"):
        read_facts(str(tmp_path / "short"))
    with pytest.raises(ValueError, match="width"):
        read_facts(str(whisper_header(tmp_path / "zero", 0, 4, 4)))


async def test_fit_admission_estimates_a_whisper_model_from_its_own_header(tmp_path):
    """Under a RAM budget a whisper model gets the whisper estimate (the GGUF reader finds no
    GGUF header in it and would give none), and its -1 context is not read from a header."""
    path = whisper_header(tmp_path / "ggml-base.bin", *SHAPES["base"])
    spec = ModelSpec("user.base", str(path), recipe="whispercpp", labels=("transcription",))
    prefs = ModelPreferences()
    prefs.set_options(spec.name, LoadOptions(ctx_size=-1))
    m = LiveModel(spec=spec, preferences=prefs)
    fit = FitAdmission(lambda: RouterSettings(memory_budget_mib=64 * 1024.0), lambda: False)
    sample = MemorySample("psutil", (DeviceMemory("RAM", 1 << 40, 1 << 30),))
    wanted = await fit.resolve_context(m)
    plan = await fit.place(m, wanted, [], sample)
    assert plan.estimate_bytes == read_facts(str(path)).estimate_bytes()
    assert plan.placement.on_cpu


@pytest.mark.parametrize("lemonade_traits", [{"memory_budget_mib": 64 * 1024.0,
                                              "memory_sample_interval_s": 0.2}], indirect=True)
async def test_a_running_whisper_model_is_estimated_then_measured_below_the_estimate(
        api, lemonade, tmp_path, lemonade_traits):
    path = str(write_synthetic_whisper(tmp_path / "ggml-synth.bin"))
    answer = await api.post(f"{API}/pull", {"model_name": "user.synth", "checkpoint": path,
                                            "recipe": "whispercpp"})
    assert answer.code == 200, answer.body
    await api.load("user.synth")
    estimate = read_facts(path).estimate_bytes()

    async def measured():
        health = await api.health()
        entry = next(m for m in health["all_models_loaded"] if m["model_name"] == "user.synth")
        return entry if entry["memory_bytes"] else None

    entry = await wait_until(measured, what="the whisper engine's measured memory")
    assert entry["estimate_bytes"] == estimate  # what admission counted before the start
    assert entry["memory_by_device"]["cpu"]["source"] == "process_rss"
    rss = entry["memory_bytes"]
    write_artifact("whisper_fit_estimate.json", {
        "file_mib": round(os.path.getsize(path) / MIB, 2),
        "estimate_mib": round(estimate / MIB, 1), "measured_rss_mib": round(rss / MIB, 1),
        "estimate_over_measured": round(estimate / rss, 3)})
    assert rss <= estimate, (rss / MIB, estimate / MIB)
