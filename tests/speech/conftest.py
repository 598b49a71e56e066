"""Fixtures for the transcription engine: the synthetic whisper model, the engine process on
its own, and the extension inside a real Jupyter server (the fixtures of ``tests/server``).

The model is written once per test session (:mod:`tests.fakes.synthetic_whisper`, about
2.3 MB of seeded noise in whisper.cpp's layout); every test that starts an engine runs the
real ``lemonade-whisper-server`` on it, through the ``pywhispercpp`` wheel.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from lemonade_jupyter.core.catalog import ModelSpec
from lemonade_jupyter.core.engines.whispercpp import WhisperCppEngine, WhisperEngineInfo
from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.core.ports import free_port
from tests.fakes.synthetic_whisper import JFK_WAV, write_synthetic_whisper
from tests.helpers.http import API
from tests.server.conftest import (  # noqa: F401 - fixtures of the Jupyter server tests
    Api,
    api,
    jp_server_config,
    lemonade,
    lemonade_data_dir,
    lemonade_traits,
)

WHISPER = "user.whisper"
#: Deadline for an engine to answer /health (a load takes ~0.3 s on an idle machine).
READY_S = 60.0


@pytest.fixture(scope="session")
def whisper_model_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The synthetic whisper.cpp model, written once per session."""
    return str(write_synthetic_whisper(tmp_path_factory.mktemp("whisper") / "ggml-synth.bin"))


@pytest.fixture(scope="session")
def jfk_wav() -> bytes:
    return JFK_WAV.read_bytes()


@dataclass
class EngineProcess:
    """One engine process started by a test: its URL, key and process."""

    url: str
    key: str
    proc: subprocess.Popen[bytes]
    log: Path

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def inference(self, wav: bytes, key: str | None = None, **fields: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else self.auth()
        return httpx.post(f"{self.url}/inference", headers=headers, timeout=60,
                          files={"file": ("a.wav", wav, "audio/wav")},
                          data={k: str(v) for k, v in fields.items()})


def wait_healthy(url: str, proc: subprocess.Popen[bytes], seen: list[int] | None = None) -> None:
    """Poll ``/health`` until 200 (recording each status in ``seen``); fail if the process
    exits or the deadline passes."""
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the engine exited with {proc.returncode}"
        try:
            code = httpx.get(f"{url}/health", timeout=2).status_code
            if seen is not None:
                seen.append(code)
            if code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{url} was not healthy after {READY_S} s")


@pytest.fixture
def start_engine(tmp_path: Path) -> Iterator[Any]:
    """Starts engine processes the way the router does (its command line and environment);
    every one is stopped when the test ends."""
    started: list[subprocess.Popen[bytes]] = []

    def start(model: str, *, native: str = "", seen: list[int] | None = None,
              wait: bool = True) -> EngineProcess:
        info = WhisperEngineInfo("custom" if native else "pywhispercpp", native, "test")
        port = free_port()
        key = secrets.token_urlsafe(16)
        spec = ModelSpec(name=WHISPER, checkpoint=model, recipe="whispercpp",
                         labels=("transcription",))
        argv = WhisperCppEngine(info, threads=1).argv(spec, LoadOptions(), port=port)
        log = tmp_path / f"engine-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, env=WhisperCppEngine.env(key), stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        started.append(proc)
        engine = EngineProcess(f"http://127.0.0.1:{port}", key, proc, log)
        if wait:
            wait_healthy(engine.url, proc, seen)
        return engine

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def register_whisper(api: Api, path: str, name: str = WHISPER) -> None:
    """Register the whisper model file as ``name`` (recipe whispercpp) through ``/pull``."""
    answer = await api.post(f"{API}/pull", {"model_name": name, "checkpoint": path,
                                           "recipe": "whispercpp",
                                           "labels": ["transcription"]})
    assert answer.code == 200, answer.body


async def engine_inference(url: str, key: str | None, wav: bytes,
                           **fields: Any) -> httpx.Response:
    """POST ``/inference`` on a backend from a test running on the server's loop."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=60) as c:
        return await c.post(f"{url}/inference", headers=headers,
                            files={"file": ("a.wav", wav, "audio/wav")},
                            data={k: str(v) for k, v in fields.items()})

