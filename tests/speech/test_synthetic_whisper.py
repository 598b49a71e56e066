"""The synthetic whisper model: its layout read back record by record, and whisper.cpp's own
loader accepting it (and refusing it without one of its tensors)."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lemonade_jupyter.core.catalog import is_gguf
from lemonade_jupyter.core.engines.whisper_model import (
    ModelLoadFailed,
    WhisperModel,
    check_header,
)
from lemonade_jupyter.core.whisper_models import is_whisper_file
from tests.fakes import synthetic_whisper as sw

ROOT = Path(__file__).resolve().parents[2]


def read_tensors(path: str) -> dict[str, tuple[tuple[int, ...], int, bytes]]:
    """Walk the file as whisper.cpp's loader does: header, filters, vocabulary, tensors."""
    data = Path(path).read_bytes()
    off = sw.HEADER.size
    n_mel, n_fft = struct.unpack_from("<2i", data, off)
    off += 8 + n_mel * n_fft * 4
    (n_vocab,) = struct.unpack_from("<i", data, off)
    off += 4
    for _ in range(n_vocab):
        (length,) = struct.unpack_from("<I", data, off)
        off += 4 + length
    tensors = {}
    while off < len(data):
        n_dims, name_len, ttype = struct.unpack_from("<3i", data, off)
        off += 12
        ne = struct.unpack_from(f"<{n_dims}i", data, off)
        off += 4 * n_dims
        name = data[off:off + name_len].decode()
        off += name_len
        size = int(np.prod(ne)) * (2 if ttype == sw.F16 else 4)
        tensors[name] = (ne, ttype, data[off:off + size])
        off += size
    assert off == len(data), "the last tensor runs past the end of the file"
    return tensors


def test_synthetic_whisper_layout(whisper_model_file):
    header = sw.read_header(whisper_model_file)
    assert header == (sw.MAGIC, 51865, 1500, 16, 2, 1, 448, 16, 2, 1, 80, 1)
    assert is_whisper_file(whisper_model_file) and not is_gguf(whisper_model_file)
    assert check_header(whisper_model_file)["n_text_state"] == 16
    assert Path(whisper_model_file).stat().st_size < 3 * 2**20
    tensors = read_tensors(whisper_model_file)
    assert list(tensors) == sw.tensor_names()
    assert len(tensors) == 7 + 15 + 4 + 24  # encoder, one block; decoder, one block
    ne, ttype, raw = tensors["decoder.token_embedding.weight"]
    assert ne == (16, 51865) and ttype == sw.F16
    assert np.frombuffer(raw, "<f2").std() > 0.1  # noise, not zeros
    ne, ttype, raw = tensors["encoder.conv1.bias"]
    assert ne == (1, 16) and ttype == sw.F32 and not np.frombuffer(raw, "<f4").any()
    assert np.all(np.frombuffer(tensors["decoder.ln.weight"][2], "<f4") == 1.0)


def test_synthetic_whisper_is_the_same_for_a_seed(tmp_path):
    a = sw.write_synthetic_whisper(tmp_path / "a.bin", seed=3)
    b = sw.write_synthetic_whisper(tmp_path / "b.bin", seed=3)
    c = sw.write_synthetic_whisper(tmp_path / "c.bin", seed=4)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


LOAD = """
import sys
from lemonade_jupyter.core.engines.whisper_model import WhisperModel, ModelLoadFailed
try:
    WhisperModel(sys.argv[1], 1)
except ModelLoadFailed as exc:
    print("REFUSED", exc)
    sys.exit(2)
print("LOADED")
"""


def load_in_child(path: str) -> subprocess.CompletedProcess[str]:
    """whisper.cpp may crash on a bad file: load it in a process of its own."""
    return subprocess.run([sys.executable, "-c", LOAD, path], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_whisper_cpp_loads_the_synthetic_model(whisper_model_file):
    done = load_in_child(whisper_model_file)
    assert done.returncode == 0 and "LOADED" in done.stdout, done.stdout + done.stderr


def test_whisper_cpp_refuses_the_model_without_a_tensor(tmp_path, monkeypatch):
    every = list(sw._tensors())
    monkeypatch.setattr(sw, "_tensors", lambda: iter(every[:-1]))
    path = sw.write_synthetic_whisper(tmp_path / "ggml-short.bin")
    done = load_in_child(str(path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "not all tensors loaded" in done.stdout


@pytest.mark.parametrize("change", [
    {1: 0},  # n_vocab
    {3: 15},  # n_audio_state != n_text_state
    {4: 3},  # heads that do not divide the width
    {11: 999},  # ftype
])
def test_check_header_refuses_what_whisper_cpp_would_crash_on(tmp_path, whisper_model_file,
                                                              change):
    fields = list(sw.read_header(whisper_model_file))
    for index, value in change.items():
        fields[index] = value
    bad = tmp_path / "ggml-bad.bin"
    bad.write_bytes(sw.HEADER.pack(*fields) + b"\0" * 64)
    with pytest.raises(ModelLoadFailed, match="impossible"):
        check_header(str(bad))
    with pytest.raises(ModelLoadFailed, match="impossible"):
        WhisperModel(str(bad), 1)


def test_check_header_refuses_a_gguf(default_model_file):
    with pytest.raises(ModelLoadFailed, match="bad magic"):
        check_header(default_model_file)
