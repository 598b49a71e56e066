"""The engine process on its own: ``lemonade-whisper-server`` on the synthetic model, started
with the command line and environment the router gives it, spoken to over whisper-server's
HTTP API."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sys
import threading
import time
import wave
from pathlib import Path

import httpx

from tests.speech.conftest import wait_healthy

SRT_CUE = re.compile(r"^\d+\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n", re.M)
VTT_CUE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}\n", re.M)


def test_whisper_engine_health_is_503_until_the_model_is_loaded(start_engine,
                                                                 whisper_model_file, tmp_path):
    """The model file is a FIFO: the engine's load waits for the test to write its header,
    so the port is open with the model not loaded for as long as the test wants. Then the
    real file takes the FIFO's name and the header goes through the FIFO."""
    fifo = tmp_path / "ggml-fifo.bin"
    os.mkfifo(fifo)
    engine = start_engine(str(fifo), wait=False)
    deadline = time.monotonic() + 60
    while True:
        assert engine.proc.poll() is None and time.monotonic() < deadline
        try:
            loading = httpx.get(f"{engine.url}/health", timeout=2)
            break
        except httpx.TransportError:
            time.sleep(0.02)
    assert loading.status_code == 503 and loading.json() == {"status": "loading model"}
    refused = engine.inference(b"RIFF")
    assert refused.status_code == 503, refused.text
    real = tmp_path / "ggml-real.bin"
    real.write_bytes(Path(whisper_model_file).read_bytes())
    with open(fifo, "wb") as fh:  # pairs with the header check, blocked in its open
        os.replace(real, fifo)  # before any byte: whisper.cpp then opens the real file
        fh.write(Path(whisper_model_file).read_bytes()[:48])
    wait_healthy(engine.url, engine.proc)
    assert httpx.get(f"{engine.url}/health").json() == {"status": "ok"}


def test_whisper_engine_answers_every_response_format(start_engine, whisper_model_file,
                                                       jfk_wav):
    engine = start_engine(whisper_model_file)
    as_json = engine.inference(jfk_wav, response_format="json", language="en")
    assert as_json.status_code == 200, as_json.text
    assert list(as_json.json()) == ["text"] and isinstance(as_json.json()["text"], str)

    verbose = engine.inference(jfk_wav, response_format="verbose_json", language="en")
    body = verbose.json()
    assert body["task"] == "transcribe" and body["language"] == "en"
    assert abs(body["duration"] - 11.0) < 0.01  # jfk.wav is 176000 samples at 16 kHz
    assert body["segments"], body
    for i, seg in enumerate(body["segments"]):
        assert seg["id"] == i and 0 <= seg["start"] <= seg["end"] <= 30.0
        assert isinstance(seg["text"], str) and isinstance(seg["tokens"], list)
    assert body["text"] == " ".join(s["text"].strip() for s in body["segments"]
                                    if s["text"].strip())

    srt = engine.inference(jfk_wav, response_format="srt", language="en")
    assert srt.headers["content-type"].startswith("application/x-subrip")
    assert SRT_CUE.match(srt.text), srt.text
    vtt = engine.inference(jfk_wav, response_format="vtt", language="en")
    assert vtt.text.startswith("WEBVTT\n\n") and VTT_CUE.search(vtt.text), vtt.text
    text = engine.inference(jfk_wav, response_format="text", language="en")
    assert text.headers["content-type"].startswith("text/plain")

    translated = engine.inference(jfk_wav, response_format="verbose_json", translate="true",
                                  temperature=0.2)
    assert translated.json()["task"] == "translate"


def test_whisper_engine_refuses_a_request_without_its_key(start_engine, whisper_model_file,
                                                          jfk_wav):
    engine = start_engine(whisper_model_file)
    for key in ("not-the-key", engine.key[:-1]):
        answer = engine.inference(jfk_wav, key=key)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"]["type"] == "authentication_error"
    assert httpx.post(f"{engine.url}/inference", files={"file": ("a.wav", jfk_wav)}
                      ).status_code == 401
    assert httpx.get(f"{engine.url}/props").status_code == 401
    props = httpx.get(f"{engine.url}/props", headers=engine.auth())
    assert props.json()["total_slots"] == 1
    assert engine.inference(jfk_wav).status_code == 200


def test_whisper_engine_refuses_bad_fields_with_a_400(start_engine, whisper_model_file,
                                                      jfk_wav):
    engine = start_engine(whisper_model_file)
    bad = [
        {"response_format": "xml"},
        {"temperature": "hot"},
        {"temperature": "7"},
        {"temperature": "nan"},
        {"language": "klingon"},
        {"language": "zz"},
        {"translate": "maybe"},
        {"prompt": "x" * 5000},
    ]
    for fields in bad:
        answer = engine.inference(jfk_wav, **fields)
        assert answer.status_code == 400, (fields, answer.text)
        assert answer.json()["error"]["type"] == "invalid_request_error"
    not_wav = engine.inference(b"RIFF....WAVEjunk")
    assert not_wav.status_code == 400 and "WAV" in not_wav.json()["error"]["message"]
    no_file = httpx.post(f"{engine.url}/inference", headers=engine.auth(),
                         data={"response_format": "json"})
    assert no_file.status_code == 400
    not_form = httpx.post(f"{engine.url}/inference", headers=engine.auth(),
                          content=json.dumps({"file": "x"}))
    assert not_form.status_code == 400
    # Still serving after all that.
    assert engine.inference(jfk_wav).status_code == 200


def test_whisper_engine_exits_cleanly_on_sigterm(start_engine, whisper_model_file):
    engine = start_engine(whisper_model_file)
    engine.proc.send_signal(signal.SIGTERM)
    assert engine.proc.wait(30) == 0


def test_whisper_engine_exits_when_the_model_does_not_load(start_engine, tmp_path):
    broken = tmp_path / "ggml-broken.bin"
    broken.write_bytes(b"lmgg" + b"\0" * 64)
    engine = start_engine(str(broken), wait=False)
    assert engine.proc.wait(60) == 1
    assert "cannot load" in engine.log.read_text()


FAKE_NATIVE = """\
#!{python}
# A stand-in for whisper.cpp's whisper-server: no API key, /health and /inference.
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
assert args[args.index("--host") + 1] == "127.0.0.1"
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.answer(200, {{"status": "ok"}})
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.answer(200, {{"text": "native", "auth": self.headers.get("Authorization"),
                          "bytes": len(body), "argv": args}})
HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_native_whisper_server_runs_behind_the_key(start_engine, whisper_model_file, jfk_wav,
                                                   tmp_path: Path):
    """whisper.cpp's server has no key: the wrapper checks ours and forwards only the
    checked fields; the native server listens on a port of its own."""
    native = tmp_path / "whisper-server"
    native.write_text(FAKE_NATIVE.format(python=sys.executable))
    native.chmod(0o755)
    engine = start_engine(whisper_model_file, native=str(native))
    assert engine.inference(jfk_wav, key="wrong").status_code == 401
    assert engine.inference(jfk_wav, response_format="xml").status_code == 400
    answer = engine.inference(jfk_wav, language="en")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["text"] == "native" and body["auth"] is None  # our key stays with us
    assert body["bytes"] > len(jfk_wav)
    assert str(engine.url.rsplit(":", 1)[1]) not in body["argv"]
    assert body["argv"][:2] == ["-m", whisper_model_file]


def test_a_killed_wrapper_takes_the_native_server_with_it(start_engine, whisper_model_file,
                                                        tmp_path: Path):
    """kill -9 of the wrapper (what the watchdog does to a hung backend) runs no Python in
    it, so only the parent-death signal can end the native server it started."""
    import psutil

    native = tmp_path / "whisper-server"
    native.write_text(FAKE_NATIVE.format(python=sys.executable))
    native.chmod(0o755)
    engine = start_engine(whisper_model_file, native=str(native))
    children = psutil.Process(engine.proc.pid).children()
    assert len(children) == 1, children
    child = children[0]
    os.kill(engine.proc.pid, signal.SIGKILL)
    engine.proc.wait(10)
    gone, alive = psutil.wait_procs([child], timeout=10)
    assert child in gone and not alive, "the native server outlived its wrapper"


def test_native_whisper_server_exit_ends_the_wrapper(start_engine, whisper_model_file,
                                                     tmp_path: Path):
    native = tmp_path / "whisper-server"
    native.write_text("#!/bin/sh\necho 'error: failed to load model' >&2\nexit 3\n")
    native.chmod(0o755)
    engine = start_engine(whisper_model_file, native=str(native), wait=False)
    assert engine.proc.wait(60) == 1
    assert "exited with code 3" in engine.log.read_text()




def test_whisper_engine_answers_health_while_it_transcribes(start_engine, whisper_model_file,
                                                            jfk_wav):
    """Transcription runs on a worker thread: the event loop keeps answering /health (the
    router's readiness and watchdog probes) while a longer file is being transcribed."""
    engine = start_engine(whisper_model_file)
    with wave.open(io.BytesIO(jfk_wav), "rb") as wf:
        params, frames = wf.getparams(), wf.readframes(wf.getnframes())
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wf:  # jfk.wav four times: 44 s, two 30 s windows
        wf.setparams(params)
        wf.writeframes(frames * 4)
    done: list[httpx.Response] = []
    worker = threading.Thread(target=lambda: done.append(
        engine.inference(buf.getvalue(), language="en")))
    worker.start()
    probes = []
    try:
        while worker.is_alive() and len(probes) < 2000:
            started = time.monotonic()
            code = httpx.get(f"{engine.url}/health", timeout=5).status_code
            probes.append((code, time.monotonic() - started))
            time.sleep(0.02)
    finally:
        worker.join(120)
    assert done and done[0].status_code == 200, done
    assert len(probes) >= 5, probes  # it was busy for a while, and /health answered meanwhile
    assert all(code == 200 for code, _ in probes)
    # A loop that transcribed itself would hold a probe for the whole file (about 4 s here,
    # 44 s of audio); 2 s leaves room for a loaded machine (one probe took 1.05 s in CI).
    assert max(seconds for _, seconds in probes) < 2.0, probes
