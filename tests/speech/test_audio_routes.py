"""OpenAI's audio routes through a real Jupyter server, with a stand-in whisper-server.

The router starts the transcription model as it would any: ``lemonade-whisper-server --native``
with ``tests/fakes/fake_whisper_server.py`` as the native server, so each request goes through
the route, the router's auto-load and lease, the wrapper's key check and reaches the fake,
which records what it got (fields, and the WAV's format). That shows what the real engine
cannot: the fields sent, the conversion of the audio, a kill in the middle of a request, and
that a refused request never reached any engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
import wave
from io import BytesIO
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from lemonade_jupyter.core.whisper_models import MAGIC_BYTES as GGML_MAGIC
from tests.helpers.http import API
from tests.helpers.polling import wait_until
from tests.server.conftest import (  # noqa: F401 - fixtures shared with the server tests
    api, client, jp_server_config, lemonade, lemonade_data_dir, lemonade_traits, openai_client,
    server_url, token,
)

FAKE = Path(__file__).resolve().parent.parent / "fakes" / "fake_whisper_server.py"
TEXT = "And so my fellow Americans, ask not what your country can do for you."
MODEL = "user.whisper"
#: The openai client marks ``audio.translations.create`` deprecated; it still sends the same
#: request, which the router still serves.
translations_deprecated = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")


def tone_wav(seconds: float, rate: int = 16_000, channels: int = 1, width: int = 2) -> bytes:
    """A 440 Hz tone as a PCM WAV (the stdlib's ``wave``)."""
    scale = (1 << (8 * width - 1)) - 1
    frames = bytearray()
    for i in range(int(seconds * rate)):
        value = int(0.3 * scale * math.sin(2 * math.pi * 440 * i / rate))
        sample = bytes([value + 128]) if width == 1 else value.to_bytes(width, "little",
                                                                           signed=True)
        frames += sample * channels
    buf = BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return buf.getvalue()


@pytest.fixture
def lemonade_traits():
    # Small limits, so that the refusals need small files.
    return {"max_audio_upload_mib": 1, "max_audio_seconds": 60}


@pytest.fixture
def record(tmp_path, monkeypatch) -> Path:
    """The fake engine's record of requests (one JSON line each), and the engine itself."""
    FAKE.chmod(0o755)
    path = tmp_path / "requests.jsonl"
    monkeypatch.setenv("LEMONADE_WHISPER_SERVER", str(FAKE))
    monkeypatch.setenv("FAKE_WHISPER_RECORD", str(path))
    for knob in ("FAKE_WHISPER_DELAY", "FAKE_WHISPER_STATUS"):
        monkeypatch.delenv(knob, raising=False)
    return path


def recorded(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def whisper_model(api, record, tmp_path, jp_asyncio_loop) -> str:
    """A transcription model (recipe whispercpp) whose weights file is only its magic."""
    weights = tmp_path / "ggml-fake.bin"
    weights.write_bytes(GGML_MAGIC + b"\0" * 64)
    answer = jp_asyncio_loop.run_until_complete(api.post(f"{API}/pull", {
        "model_name": MODEL, "checkpoint": str(weights), "recipe": "whispercpp"}))
    assert answer.code == 200, answer.body
    return MODEL


async def post_form(server_url: str, token: str, route: str, files: dict | None,
                    data: dict | None = None, *, headers: dict | None = None,
                    **kwargs) -> httpx.Response:
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(f"{server_url}{API}/audio/{route}", files=files, data=data,
                               headers={"Authorization": f"token {token}", **(headers or {})},
                               **kwargs)


# ---------------------------------------------------------------------------- answers
async def test_audio_routes_every_response_format_with_the_openai_client(
        client, whisper_model, record, server_url, token):
    audio = ("speech.wav", tone_wav(1.0), "audio/wav")
    json_answer = await client.audio.transcriptions.create(model=whisper_model, file=audio)
    assert json_answer.text == TEXT
    verbose = await client.audio.transcriptions.create(
        model=whisper_model, file=audio, response_format="verbose_json", language="en",
        temperature=0.2, prompt="Kennedy")
    assert verbose.text == TEXT and verbose.language == "en"
    assert [s.text.strip() for s in verbose.segments] == [
        "And so my fellow Americans,", "ask not what your country can do for you."]
    assert verbose.segments[0].start == 0.0 and verbose.segments[1].end == 5.0
    text = await client.audio.transcriptions.create(model=whisper_model, file=audio,
                                                    response_format="text")
    assert isinstance(text, str) and text.strip() == TEXT
    srt = await client.audio.transcriptions.create(model=whisper_model, file=audio,
                                                   response_format="srt")
    assert re.match(r"1\n00:00:00,000 --> 00:00:02,500\nAnd so my fellow Americans,\n\n2\n"
                    r"00:00:02,500 --> 00:00:05,000\n", srt), srt
    vtt = await client.audio.transcriptions.create(model=whisper_model, file=audio,
                                                   response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\n"), vtt
    # What the engine was sent: the checked fields, translate off, the audio as it was.
    sent = recorded(record)
    assert [r["response_format"] for r in sent] == ["json", "verbose_json", "text", "srt",
                                                    "vtt"]
    assert {r["translate"] for r in sent} == {"false"}
    assert (sent[1]["language"], sent[1]["temperature"], sent[1]["prompt"]) == (
        "en", "0.2", "Kennedy")
    assert {(r["channels"], r["rate"], r["width"], r["frames"]) for r in sent} == {
        (1, 16_000, 2, 16_000)}


async def test_audio_routes_content_types(whisper_model, server_url, token):
    wav = {"file": ("a.wav", tone_wav(0.5), "audio/wav")}
    for fmt, ctype in (("json", "application/json"), ("verbose_json", "application/json"),
                       ("text", "text/plain"), ("srt", "text/plain"), ("vtt", "text/plain")):
        resp = await post_form(server_url, token, "transcriptions", wav,
                               {"model": whisper_model, "response_format": fmt})
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].split(";")[0] == ctype, (fmt, resp.headers)


@translations_deprecated
async def test_audio_routes_translation_asks_the_engine_to_translate(client, whisper_model,
                                                                    record):
    answer = await client.audio.translations.create(
        model=whisper_model, file=("fr.wav", tone_wav(0.5), "audio/wav"))
    assert answer.text == "Translated: " + TEXT
    srt = await client.audio.translations.create(
        model=whisper_model, file=("fr.wav", tone_wav(0.5), "audio/wav"), response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:05,000\nTranslated: ")
    assert [r["translate"] for r in recorded(record)] == ["true", "true"]


async def test_audio_routes_convert_other_wav_to_16k_mono(client, whisper_model, record):
    """44.1 kHz stereo 24-bit and 8 kHz 8-bit WAV reach the engine as 16 kHz mono 16-bit,
    as long as they were (frames scale with the rate)."""
    await client.audio.transcriptions.create(
        model=whisper_model, file=("cd.wav", tone_wav(0.5, 44_100, 2, 3), "audio/wav"))
    await client.audio.transcriptions.create(
        model=whisper_model, file=("phone.wav", tone_wav(0.75, 8000, 1, 1), "audio/wav"))
    assert [(r["channels"], r["rate"], r["width"], r["frames"]) for r in recorded(record)] == [
        (1, 16_000, 2, 8000), (1, 16_000, 2, 12_000)]


async def test_audio_routes_espeak_speech_reaches_the_engine(client, whisper_model, record,
                                                             tmp_path):
    """Speech made by espeak-ng (22.05 kHz mono) is converted and transcribed."""
    if not os.path.exists("/usr/bin/espeak-ng"):
        pytest.skip("espeak-ng is not installed (scripts/test.sh installs it)")
    out = tmp_path / "hello.wav"
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/espeak-ng", "-w", str(out), "Ask not what your country can do for you")
    assert await proc.wait() == 0
    with wave.open(str(out)) as w:
        rate, frames = w.getframerate(), w.getnframes()
    assert rate != 16_000
    answer = await client.audio.transcriptions.create(model=whisper_model, file=out)
    assert answer.text == TEXT
    (sent,) = recorded(record)
    assert (sent["channels"], sent["rate"], sent["width"]) == (1, 16_000, 2)
    assert sent["frames"] == round(frames * 16_000 / rate)


async def test_audio_routes_engine_error_keeps_its_status(whisper_model, server_url, token,
                                                          monkeypatch):
    monkeypatch.setenv("FAKE_WHISPER_STATUS", "500")  # read by the engine at its start
    resp = await post_form(server_url, token, "transcriptions",
                           {"file": ("a.wav", tone_wav(0.2), "audio/wav")},
                           {"model": whisper_model})
    assert resp.status_code == 500, resp.text
    err = resp.json()["error"]
    assert (err["message"], err["code"]) == ("fake engine failure", "backend_error")
    assert resp.headers["content-type"].startswith("application/json")


# ---------------------------------------------------------------------------- the backend dies
async def test_audio_routes_replayed_once_when_the_backend_is_killed(
        api, lemonade, client, whisper_model, record, monkeypatch):
    """kill -9 of the transcription backend while it works: the request is sent once more, to
    one reloaded backend, and the client gets its answer."""
    monkeypatch.setenv("FAKE_WHISPER_DELAY", "1.5")
    await api.load(whisper_model)
    first = lemonade.router.get_live(whisper_model).backend
    since = lemonade.router.events.recent()[-1].id
    request = asyncio.ensure_future(client.audio.transcriptions.create(
        model=whisper_model, file=("a.wav", tone_wav(0.5), "audio/wav")))
    await wait_until(lambda: len(recorded(record)) == 1, timeout=30,
                     what="the request to reach the engine")
    # The wrapper's native server (the fake) is its child: this test ends it if the kill of
    # its parent did not, so that nothing outlives the test.
    native = psutil.Process(first.pid).children(recursive=True)
    os.kill(first.pid, signal.SIGKILL)
    try:
        answer = await request
    finally:
        for child in native:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    assert answer.text == TEXT
    assert len(recorded(record)) == 2  # sent once more, not twice more
    live = lemonade.router.get_live(whisper_model)
    assert live.backend is not first and live.backend.pid != first.pid
    starts = [e.kind for e in lemonade.router.events.recent(since)
              if e.model == whisper_model and e.kind in ("load", "reload")]
    assert len(starts) == 1, starts


# ---------------------------------------------------------------------------- refusals
async def test_audio_routes_refusals_are_clear_and_change_nothing(
        api, whisper_model, record, server_url, token, default_model_name):
    """Each bad upload is a 4xx in the error envelope naming its field; none reaches an
    engine or loads a model."""
    good = tone_wav(0.2)
    mp3 = b"ID3\x04\x00\x00" + b"\0" * 2000

    async def refused(route: str, files: dict | None, data: dict | None, status: int,
                      param: str | None, code: str | None = None, **kwargs) -> str:
        resp = await post_form(server_url, token, route, files, data, **kwargs)
        assert resp.status_code == status, (data, resp.status_code, resp.text)
        assert resp.headers["content-type"].startswith("application/json")
        err = resp.json()["error"]
        assert err.get("param") == param and err["type"] == "invalid_request_error", err
        assert err.get("code") == code, err
        return err["message"]

    wav = {"file": ("a.wav", good, "audio/wav")}
    ok = {"model": whisper_model}
    message = await refused("transcriptions", {"file": ("a.mp3", mp3, "audio/mpeg")}, ok, 400,
                            "file", "unsupported_audio_format")
    assert "mp3" in message and "WAV (RIFF/WAVE PCM" in message
    message = await refused("translations", {"file": ("a.txt", b"hello", "text/plain")}, ok,
                            400, "file", "unsupported_audio_format")
    assert "WAV" in message
    # A file just over the limit (the body within the room left for the other fields), and
    # a body far over it, refused before it is parsed.
    big = {"file": ("big.wav", good + b"\0" * (1 << 20), "audio/wav")}
    message = await refused("transcriptions", big, ok, 413, "file", "audio_too_large")
    assert "max_audio_upload_mib" in message
    await refused("transcriptions", wav, {**ok, "prompt": "a" * (2 << 20)}, 413, "file",
                  "audio_too_large")
    message = await refused("transcriptions", None, None, 400, None,
                            content=b"--x\r\nnot a form", headers={
                                "Content-Type": "multipart/form-data; boundary=x"})
    assert "Invalid body" in message
    long = {"file": ("long.wav", tone_wav(61, 8000, 1, 1), "audio/wav")}
    message = await refused("transcriptions", long, ok, 400, "file", "audio_too_long")
    assert "61.0 s" in message and "max_audio_seconds" in message
    await refused("transcriptions", None, ok, 400, "file")  # no file at all
    await refused("transcriptions", None, None, 400, "file", json={"model": whisper_model})
    for field, value in (("response_format", "xml"), ("temperature", "1.5"),
                         ("temperature", "warm"), ("language", "klingon"),
                         ("prompt", "a" * 2001)):
        await refused("transcriptions", wav, {**ok, field: value}, 400, field)
    await refused("transcriptions", wav, {}, 400, "model")
    message = await refused("transcriptions", wav, {"model": default_model_name}, 400, "model")
    assert "not a transcription model" in message
    await refused("translations", wav, {"model": "no-such-model"}, 404, "model",
                  "model_not_found")
    assert (await api.health())["all_models_loaded"] == []
    assert recorded(record) == []


async def test_audio_routes_need_a_login(whisper_model, server_url):
    resp = await post_form(server_url, "wrong-token", "transcriptions",
                           {"file": ("a.wav", tone_wav(0.2), "audio/wav")},
                           {"model": whisper_model})
    assert resp.status_code == 403


@translations_deprecated
async def test_audio_routes_openai_client_sees_the_refusals(client, whisper_model):
    with pytest.raises(openai.BadRequestError) as err:
        await client.audio.transcriptions.create(
            model=whisper_model, file=("a.ogg", b"OggS" + b"\0" * 100, "audio/ogg"))
    assert err.value.body["code"] == "unsupported_audio_format"
    with pytest.raises(openai.APIStatusError) as too_big:
        await client.audio.translations.create(
            model=whisper_model, file=("a.wav", b"RIFF" + b"\0" * (2 << 20), "audio/wav"))
    assert too_big.value.status_code == 413
