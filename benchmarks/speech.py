"""Section 11: speech to text, one transcription of ``jfk.wav`` through the router vs the engine.

The baseline is a transcription engine started by hand with the router's own command line
(``lemonade-whisper-server`` on the engine the router would pick: the pywhispercpp wheel, or a
native ``whisper-server``) and the same key-in-the-environment; the subject is the same audio
through ``lemonade/api/v1/audio/transcriptions`` of a real Jupyter server, whose router runs
its own backend on the same file with the same thread count. A control arm sends the request
straight to the router's own backend (its key read from ``/proc``): router minus control is
what the route adds (multipart parsing, the WAV check and conversion, the lease, the relay).

The model is the synthetic whisper.cpp model of the test suite (``tests/fakes``: whisper's
shape at width 16, one layer each side, seeded noise), since no real model ships with the
repository and nothing is downloaded here: the text it produces is noise, and its real-time
factor (audio seconds per wall second, the engine's throughput) says what the engine's fixed
costs are (the mel spectrogram of 11 s of audio, 30 s windows padded to 1500 frames), not what
a real model's decoding costs.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import wave
from pathlib import Path

import httpx
import psutil

from lemonade_jupyter.core.engines.whispercpp import WhisperCppEngine, find_whisper_engine
from lemonade_jupyter.core.model_spec import ModelSpec
from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.core.ports import free_port

from .common import Context, Reps, interleaved_by_backend
from .procs import BenchmarkError, JupyterServer
from .report import Row, Target

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from tests.fakes.synthetic_whisper import JFK_WAV, write_synthetic_whisper  # noqa: E402

S11 = "11. Speech to text"
MODEL = "user.bench-whisper"
KEY_ENV = "WHISPER_API_KEY"
#: The engine wrapper's module (how a whisper backend is told apart from llama-server).
ENGINE_MODULE = "whisper_server"


def _audio_seconds(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def _threads() -> int | None:
    value = os.environ.get("LEMONADE_BACKEND_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


class BareWhisper:
    """The baseline engine: started as the router starts one, on a free port."""

    def __init__(self, model: Path, workdir: Path) -> None:
        self.key = secrets.token_urlsafe(24)
        self.port = free_port()
        spec = ModelSpec(MODEL, str(model), recipe="whispercpp", labels=("transcription",))
        self.engine = find_whisper_engine()
        runner = WhisperCppEngine(self.engine, threads=_threads())
        self.argv = runner.argv(spec, LoadOptions(), port=self.port)
        self.env = runner.env(self.key)
        self.log_path = workdir / "bare-whisper.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def start(self, timeout_s: float = 60.0) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchmarkError(f"the whisper engine exited with {self.proc.returncode}: "
                                     + self.log_path.read_text(errors="replace")[-2000:])
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise BenchmarkError(f"the whisper engine was not ready in {timeout_s} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _engine_key(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for item in raw.split(b"\0"):
        if item.startswith(KEY_ENV.encode() + b"="):
            return item.split(b"=", 1)[1].decode()
    return None


def _whisper_engines(server_pid: int) -> list[int]:
    found = []
    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.Error:
        return found
    for p in children:
        try:
            if ENGINE_MODULE in " ".join(p.cmdline()):
                found.append(p.pid)
        except psutil.Error:
            pass
    return found


def run_speech(ctx: Context) -> None:
    work = ctx.tmp / "speech"
    work.mkdir(parents=True, exist_ok=True)
    model = write_synthetic_whisper(work / "ggml-synth.bin")
    wav = JFK_WAV.read_bytes()
    audio_s = _audio_seconds(JFK_WAV)
    bare = BareWhisper(model, work)
    server = JupyterServer(work / "server", {"max_loaded_models": -1,
                                             "restore_on_start": False}, name="jupyter-speech")
    left: list[int] = []
    try:
        bare.start()
        server.start()
        with httpx.Client(timeout=120) as direct, httpx.Client(timeout=120) as routed, \
                httpx.Client(timeout=120) as control:
            r = routed.post(server.api("api/v1/pull"), headers=server.headers, json={
                "model_name": MODEL, "checkpoint": str(model), "recipe": "whispercpp"})
            if r.status_code != 200:
                raise BenchmarkError(f"/pull failed: {r.status_code} {r.text[:300]}")
            r = routed.post(server.api("api/v1/load"), headers=server.headers,
                            json={"model_name": MODEL})
            if r.status_code != 200:
                raise BenchmarkError(f"/load failed: {r.status_code} {r.text[:300]}")
            health = routed.get(server.api("api/v1/health"), headers=server.headers).json()
            backend = next(m for m in health["all_models_loaded"] if m["model_name"] == MODEL)
            key = _engine_key(backend["pid"]) if backend.get("pid") else None
            auth = {"Authorization": server.headers["Authorization"]}

            def arm(client: httpx.Client, url: str, headers: dict[str, str],
                    form: dict[str, str], where: str):
                def once() -> float:
                    t0 = time.perf_counter()
                    resp = client.post(url, headers=headers, data=form,
                                       files={"file": ("jfk.wav", wav, "audio/wav")})
                    dt = (time.perf_counter() - t0) * 1000
                    if resp.status_code != 200 or "text" not in resp.json():
                        raise BenchmarkError(f"{where}: HTTP {resp.status_code}: "
                                             f"{resp.text[:300]}")
                    return dt
                return once

            engine_form = {"response_format": "json"}
            bare_arms = {"direct": arm(direct, f"{bare.url}/inference", bare.headers,
                                       engine_form, "direct")}
            router_arms = {"router": arm(routed, server.api("api/v1/audio/transcriptions"),
                                         auth, {"model": MODEL, "response_format": "json"},
                                         "router")}
            if key is not None:
                router_arms["control"] = arm(control, f"{backend['backend_url']}/inference",
                                             {"Authorization": f"Bearer {key}"}, engine_form,
                                             "control")
            groups = [(bare_arms["direct"], bare_arms), (router_arms["router"], router_arms)]
            interleaved_by_backend(groups, ctx.reps(Reps(2, 2, 0), Reps(1, 1, 0)))  # warm-up
            got = interleaved_by_backend(groups, ctx.reps(Reps(15, 60, 45), Reps(3, 3, 0)))
    finally:
        bare.stop()
        engines = _whisper_engines(server.pid) if server._proc is not None else []
        left = server.stop()
        left += [p for p in engines if psutil.pid_exists(p)]
    if left:
        raise BenchmarkError(f"whisper engines left running after the server stopped: {left}")
    ctx.raw["speech_ms"] = got
    ctx.raw["speech_audio_s"] = audio_s
    ctx.raw["speech_engine"] = f"{bare.engine.flavour} ({bare.engine.source})"
    ctx.add(Row(S11, "jfk.wav transcription p50", "ms", "engine direct", got["direct"],
                "router", got["router"], "median", Target("max_diff", 25.0, "≤ +25 ms"),
                note=f"{audio_s:.1f} s of 16 kHz mono audio, response_format json; engine: "
                     f"{bare.engine.flavour}, synthetic model"))
    ctx.add(Row(S11, "jfk.wav transcription p95", "ms", "engine direct", got["direct"],
                "router", got["router"], "p95", Target("max_diff", 50.0, "≤ +50 ms")))
    if "control" in got:
        ctx.add(Row(S11, "control: route alone (p50)", "ms", "router's backend direct",
                    got["control"], "router", got["router"], "median",
                    Target("max_diff", 25.0, "≤ +25 ms"),
                    note="same engine process on both sides: the multipart parse, WAV check, "
                         "lease and relay"))
    rtf = {arm: [audio_s / (ms / 1000) for ms in samples] for arm, samples in got.items()}
    ctx.add(Row(S11, "real-time factor (audio s / wall s)", "×", "engine direct",
                rtf["direct"], "router", rtf["router"], "median",
                Target("min_ratio", 0.9, "router ≥ 0.9× the engine's"),
                note="the synthetic model: whisper.cpp's fixed costs per request, not a real "
                     "model's decoding"))
