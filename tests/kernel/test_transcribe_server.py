"""``%lemonade transcribe`` and the dashboard against a real ``jupyter server`` with the extension.

The server starts transcription models as it always does: ``lemonade-whisper-server --native``
around ``tests/fakes/fake_whisper_server.py``, a stand-in for whisper.cpp's server that answers a
fixed transcript in every format (the real engine's words are the engine tests' business).
So the magic's request goes through discovery, the audio route, the router's auto-load and
lease, and the engine wrapper. The dashboard then shows the model in the ``transcription``
pool, with its measured memory. Last, the magic drives the real engine (the ``pywhispercpp``
wheel) on the synthetic whisper model through an embedded router: its words are noise, the
shape of the answer is whisper.cpp's.
"""

from __future__ import annotations

import json
import math
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell

from lemonade_jupyter.core.whisper_models import MAGIC
from lemonade_jupyter.kernel.client import RouterClient
from lemonade_jupyter.kernel.magics import LemonadeMagics, LemonadeServerError
from lemonade_jupyter.kernel.pools import pools
from lemonade_jupyter.kernel.widgets import Dashboard
from lemonade_jupyter.server.embedded import EmbeddedServer
from tests.fakes.synthetic_whisper import JFK_WAV, write_synthetic_whisper
from tests.helpers.jupyter import JupyterProcess
from tests.helpers.polling import wait_for

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "fake_whisper_server.py"
TEXT = "And so my fellow Americans, ask not what your country can do for you."
MODEL = "user.whisper"


@pytest.fixture(scope="module")
def whisper_server(tmp_path_factory: pytest.TempPathFactory, llama_server_path: str
                   ) -> Iterator[JupyterProcess]:
    """A ``jupyter server`` whose whisper engine is the stand-in."""
    FAKE.chmod(0o755)
    server = JupyterProcess(tmp_path_factory.mktemp("jupyter-whisper"),
                            lemonade={"max_loaded_models": 1},
                            env={"LEMONADE_LLAMA_SERVER": llama_server_path,
                                 "LEMONADE_WHISPER_SERVER": str(FAKE)})
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def router(whisper_server: JupyterProcess, monkeypatch: pytest.MonkeyPatch
           ) -> Iterator[RouterClient]:
    """The server's client, with this process posing as one of its kernels."""
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(whisper_server.runtime_dir))
    monkeypatch.setenv("JPY_PARENT_PID", str(whisper_server.pid))
    for var in ("LEMONADE_JUPYTER_URL", "LEMONADE_JUPYTER_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    client = whisper_server.router_client
    yield client
    client.unload()


@pytest.fixture
def magics(ip: InteractiveShell, router: RouterClient) -> LemonadeMagics:
    magics = LemonadeMagics(ip, mode="server", progress="none")
    ip.register_magics(magics)
    return magics


def write_tone(path: Path, seconds: float = 1.0, rate: int = 16_000) -> Path:
    frames = b"".join(int(8000 * math.sin(2 * math.pi * 440 * i / rate)).to_bytes(
        2, "little", signed=True) for i in range(int(seconds * rate)))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return path


def test_transcribe_magic_through_a_real_server(ip, magics, router, tmp_path):
    weights = tmp_path / "ggml-fake.bin"
    weights.write_bytes(MAGIC.to_bytes(4, "little") + b"\0" * 64)
    pulled = ip.run_line_magic("lemonade", f"pull whisper {weights} --recipe whispercpp")
    assert pulled.data["type"] == "transcription"
    speech = write_tone(tmp_path / "speech.wav")
    assert ip.run_line_magic("lemonade", f"transcribe {MODEL} {speech}") == TEXT
    out = tmp_path / "speech.vtt"
    message = ip.run_line_magic("lemonade",
                                f"transcribe {MODEL} {speech} --format vtt -o {out}")
    text = out.read_text()
    assert text.startswith("WEBVTT") and "-->" in text and str(out) in message.text
    translated = ip.run_line_magic("lemonade", f"transcribe {MODEL} {speech} --translate")
    assert translated == "Translated: " + TEXT
    # A model of another type: the route's refusal, in one line.
    with pytest.raises(LemonadeServerError) as caught:
        ip.run_line_magic("lemonade", f"transcribe SmolLM2-135M-Instruct-GGUF {speech}")
    assert caught.value.status_code == 400 and "lemonade: " in caught.value.one_line()


def test_dashboard_shows_the_transcription_pool(ip, magics, router, tmp_path):
    weights = tmp_path / "ggml-fake.bin"
    weights.write_bytes(MAGIC.to_bytes(4, "little") + b"\0" * 64)
    router.pull(MODEL, str(weights), recipe="whispercpp")
    router.load(MODEL)
    dash = Dashboard(router, interval=0.2)
    try:
        assert MODEL in dash.models
        assert dash.rows[MODEL].type.value == "transcription"
        summary = {p["type"]: p for p in pools(router.health())}
        assert summary["transcription"]["models"] == [MODEL]
        assert ">transcription</td>" in dash.slots.value
        # Its memory is measured once it runs (the engine's RSS), as for any model.
        wait_for(lambda: dash.rows[MODEL].memory.value not in ("", "—", "?"), timeout=20,
                 what="the transcription model's memory on the dashboard")
    finally:
        dash.close()


def test_transcribe_magic_with_the_real_engine(ip, tmp_path, monkeypatch):
    monkeypatch.delenv("LEMONADE_WHISPER_SERVER", raising=False)
    model = write_synthetic_whisper(tmp_path / "ggml-synth.bin")
    server = EmbeddedServer(data_dir=tmp_path / "embedded-data")
    server.start()
    client = RouterClient(server.url, server.token, kind="explicit", source="test")
    try:
        magics = LemonadeMagics(ip, progress="none")
        magics.client = client
        ip.register_magics(magics)
        ip.run_line_magic("lemonade", f"pull synth {model} --recipe whispercpp")
        out = tmp_path / "jfk.json"
        ip.run_line_magic("lemonade", f"transcribe user.synth {JFK_WAV} --format verbose_json "
                                      f"--language en -o {out}")
        answer = json.loads(out.read_text())
        assert answer["task"] == "transcribe" and answer["language"] == "en"
        assert abs(answer["duration"] - 11.0) < 0.01 and isinstance(answer["text"], str)
        loaded = {m["model_name"]: m for m in client.health()["all_models_loaded"]}
        assert loaded["user.synth"]["type"] == "transcription"
        assert loaded["user.synth"]["recipe"] == "whispercpp"
    finally:
        client.unload()
        client.close()
        server.stop()
