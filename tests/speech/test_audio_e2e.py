"""OpenAI's audio routes end to end: the official ``openai`` client, a real Jupyter server with
the extension, and the real whisper engine (``lemonade-whisper-server`` through pywhispercpp) on
the synthetic model (``tests/fakes/synthetic_whisper.py``).

The synthetic model's weights are noise, so its words are too: these tests check the shape of
every answer (timestamps, segments, duration, content types), the auto-load and what a
refused request leaves behind, not the words. ``tests/speech/test_audio_routes.py`` checks the
words, the fields sent and the faults, with a stand-in engine.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import wave
from io import BytesIO

import httpx
import openai
import pytest

from tests.helpers.http import API
from tests.helpers.polling import wait_until
from tests.server.conftest import (  # noqa: F401 - fixtures shared with the server tests
    api, client, jp_server_config, lemonade, lemonade_data_dir, lemonade_traits, openai_client,
    server_url, token,
)
from tests.speech.conftest import WHISPER, register_whisper

#: whisper decodes 30 s windows; the noise model's timestamps fall anywhere inside the one
#: window these short files fill (not only inside the speech).
WINDOW_S = 30.0
SRT_CUE = re.compile(r"^\d+\n\d\d:\d\d:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d\n", re.MULTILINE)
VTT_CUE = re.compile(r"^\d\d:\d\d:\d\d\.\d\d\d --> \d\d:\d\d:\d\d\.\d\d\d\n", re.MULTILINE)
#: The openai client marks ``audio.translations.create`` deprecated; it still sends the same
#: request, which the router still serves.
translations_deprecated = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")


def wav_seconds(data: bytes) -> float:
    with wave.open(BytesIO(data)) as w:
        return w.getnframes() / w.getframerate()


@pytest.fixture
def whisper(api, whisper_model_file, monkeypatch, jp_asyncio_loop) -> str:
    """The synthetic model registered as a transcription model, run by the real engine."""
    monkeypatch.delenv("LEMONADE_WHISPER_SERVER", raising=False)
    jp_asyncio_loop.run_until_complete(register_whisper(api, whisper_model_file))
    return WHISPER


def check_srt(srt: str) -> None:
    cues = SRT_CUE.findall(srt)
    assert cues, srt
    ends = re.findall(r"--> (\d\d):(\d\d):(\d\d),(\d\d\d)", srt)
    h, m, s, ms = (int(x) for x in ends[-1])
    assert 0 < h * 3600 + m * 60 + s + ms / 1000 <= WINDOW_S, srt


def check_vtt(vtt: str) -> None:
    assert vtt.startswith("WEBVTT\n\n"), vtt
    assert VTT_CUE.findall(vtt), vtt


async def test_audio_e2e_jfk_in_every_response_format(api, client, whisper, jfk_wav,
                                                      server_url, token):
    """The openai client transcribes jfk.wav in each format; the first request auto-loads the
    model (one backend for all five)."""
    seconds = wav_seconds(jfk_wav)
    audio = ("jfk.wav", jfk_wav, "audio/wav")
    answer = await client.audio.transcriptions.create(model=whisper, file=audio)
    assert isinstance(answer.text, str)
    (live,) = (await api.health())["all_models_loaded"]
    assert (live["model_name"], live["type"], live["recipe"]) == (
        whisper, "transcription", "whispercpp")
    verbose = await client.audio.transcriptions.create(
        model=whisper, file=audio, response_format="verbose_json", language="en",
        temperature=0.0)
    assert verbose.duration == pytest.approx(seconds, abs=0.1)
    assert verbose.language in ("en", "english")
    assert verbose.segments, verbose
    for seg in verbose.segments:
        assert 0 <= seg.start <= seg.end <= WINDOW_S and isinstance(seg.text, str)
    assert "".join(s.text for s in verbose.segments).strip() == verbose.text.strip()
    text = await client.audio.transcriptions.create(model=whisper, file=audio,
                                                    response_format="text")
    assert isinstance(text, str)
    check_srt(await client.audio.transcriptions.create(model=whisper, file=audio,
                                                       response_format="srt"))
    check_vtt(await client.audio.transcriptions.create(model=whisper, file=audio,
                                                       response_format="vtt"))
    # OpenAI's content types: JSON for the JSON formats, plain text for the others.
    async with httpx.AsyncClient(timeout=60) as http:
        for fmt, ctype in (("verbose_json", "application/json"), ("srt", "text/plain")):
            resp = await http.post(f"{server_url}{API}/audio/transcriptions",
                                   headers={"Authorization": f"token {token}"},
                                   files={"file": audio},
                                   data={"model": whisper, "response_format": fmt})
            assert resp.status_code == 200, resp.text
            assert resp.headers["content-type"].split(";")[0] == ctype, resp.headers
    (still,) = (await api.health())["all_models_loaded"]
    assert still["pid"] == live["pid"]  # one backend served all of them


@translations_deprecated
async def test_audio_e2e_translations(client, whisper, jfk_wav):
    audio = ("jfk.wav", jfk_wav, "audio/wav")
    answer = await client.audio.translations.create(model=whisper, file=audio)
    assert isinstance(answer.text, str)
    verbose = await client.audio.translations.create(model=whisper, file=audio,
                                                     response_format="verbose_json")
    assert verbose.segments and verbose.duration == pytest.approx(wav_seconds(jfk_wav),
                                                                  abs=0.1)
    check_vtt(await client.audio.translations.create(model=whisper, file=audio,
                                                     response_format="vtt"))


async def test_audio_e2e_espeak_speech(client, whisper, tmp_path):
    """Speech that espeak-ng writes (22.05 kHz) is converted and transcribed by the engine."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (scripts/test.sh installs it)")
    out = tmp_path / "speech.wav"
    proc = await asyncio.create_subprocess_exec(
        espeak, "-w", str(out), "The quick brown fox jumps over the lazy dog.")
    assert await proc.wait() == 0
    data = out.read_bytes()
    with wave.open(str(out)) as w:
        assert w.getframerate() != 16_000  # so the router converts it
    verbose = await client.audio.transcriptions.create(model=whisper, file=out,
                                                       response_format="verbose_json")
    assert verbose.duration == pytest.approx(wav_seconds(data), abs=0.1)
    assert verbose.segments


async def test_audio_e2e_kill_9_mid_transcription_is_replayed_once(api, lemonade, client, whisper,
                                                                    jfk_wav):
    """kill -9 of the real engine while it transcribes a minute of audio: the router
    reloads it once and sends the request again; the client gets the whole answer."""
    with wave.open(BytesIO(jfk_wav)) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    out = BytesIO()
    with wave.open(out, "wb") as w:
        w.setparams(params)
        w.writeframes(frames * 6)  # about 66 s: three of whisper's windows
    long_wav = out.getvalue()
    await api.load(whisper)
    first = lemonade.router.get_live(whisper).backend
    since = lemonade.router.events.recent()[-1].id
    request = asyncio.ensure_future(client.audio.transcriptions.create(
        model=whisper, file=("long.wav", long_wav, "audio/wav"), response_format="verbose_json"))

    def transcribing() -> bool:
        live = lemonade.router.get_live(whisper)
        return live is not None and live.in_flight > 0

    await wait_until(transcribing, timeout=30, what="the request to reach the engine")
    os.kill(first.pid, signal.SIGKILL)
    answer = await request
    assert answer.duration == pytest.approx(wav_seconds(long_wav), abs=0.1)
    live = lemonade.router.get_live(whisper)
    assert live.backend is not first and live.backend.pid != first.pid
    starts = [e.kind for e in lemonade.router.events.recent(since)
              if e.model == whisper and e.kind in ("load", "reload")]
    assert len(starts) == 1, starts


async def test_audio_e2e_refusals_load_nothing(api, client, whisper, jfk_wav):
    """Refused uploads are 4xx before the engine is started: no model is loaded after them."""
    with pytest.raises(openai.BadRequestError) as bad:
        await client.audio.transcriptions.create(
            model=whisper, file=("a.flac", b"fLaC" + b"\0" * 64, "audio/flac"))
    assert bad.value.body["code"] == "unsupported_audio_format"
    assert "flac" in bad.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        await client.audio.transcriptions.create(
            model=whisper, file=("jfk.wav", jfk_wav, "audio/wav"), language="xx")
    assert bad.value.body["param"] == "language"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.audio.transcriptions.create(
            model=whisper, file=("jfk.wav", jfk_wav, "audio/wav"), temperature=3)
    assert bad.value.body["param"] == "temperature"
    assert (await api.health())["all_models_loaded"] == []
    answer = await api.get(f"{API}/models")
    assert answer.code == 200 and any(m["id"] == whisper for m in answer.json["data"])
