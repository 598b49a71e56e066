"""What a request may set, the form it comes in and the audio it may carry (no engine)."""

from __future__ import annotations

import asyncio
import io
import wave

import httpx
import numpy as np
import pytest
from aiohttp import web

from lemonade_jupyter.core.engines.whisper_audio import SAMPLE_RATE, AudioError, decode_wav
from lemonade_jupyter.core.engines.whisper_request import (
    MAX_FIELD_BYTES,
    BadField,
    check_fields,
    read_form,
)
from lemonade_jupyter.core.ports import free_port


def wav(samples: np.ndarray, rate: int = SAMPLE_RATE, channels: int = 1, width: int = 2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wf:
        wf.setnchannels(channels)
        wf.setsampwidth(width)
        wf.setframerate(rate)
        wf.writeframes(samples.tobytes())
    return buf.getvalue()


def test_decode_16_bit_mono_as_it_is():
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2")
    out = decode_wav(wav(pcm))
    assert out.dtype == np.float32
    assert np.allclose(out, [0.0, 0.5, -1.0, 32767 / 32768])


def test_decode_averages_channels_and_resamples_to_16k():
    left = np.full(8000, 16384, dtype="<i2")
    right = np.zeros(8000, dtype="<i2")
    stereo = np.stack([left, right], axis=1).reshape(-1)
    out = decode_wav(wav(stereo, rate=8000, channels=2))
    assert len(out) == 16000 and np.allclose(out, 0.25)


@pytest.mark.parametrize(("width", "raw", "expected"), [
    (1, np.array([128, 255, 0], dtype=np.uint8).tobytes(), [0.0, 127 / 128, -1.0]),
    (3, bytes([0, 0, 0x40, 0, 0, 0x80]), [0.5, -1.0]),
    (4, np.array([1 << 30, -(1 << 31)], dtype="<i4").tobytes(), [0.5, -1.0]),
])
def test_decode_other_sample_widths(width, raw, expected):
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(width)
        wf.setframerate(SAMPLE_RATE)
        wf.writeframes(raw)
    assert np.allclose(decode_wav(buf.getvalue()), expected)


@pytest.mark.parametrize("data", [b"", b"ID3\x04mp3 data", b"RIFF\x00\x00\x00\x00WAVEfmt "])
def test_decode_refuses_what_is_not_pcm_wav(data):
    with pytest.raises(AudioError, match="WAV"):
        decode_wav(data)


def test_decode_refuses_audio_longer_than_the_bound():
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(8)  # 100 000 frames at 8 Hz: 3.5 hours, in 200 kB
        wf.writeframes(b"\0\0" * 100_000)
    with pytest.raises(AudioError, match="longer"):
        decode_wav(buf.getvalue())


def known(code: str) -> bool:
    return code in ("en", "de", "haw")


def test_check_fields_defaults():
    assert check_fields({}, known) == {"response_format": "json", "temperature": 0.0,
                                       "language": "auto", "prompt": "", "translate": False}


def test_check_fields_takes_each_allowed_value():
    got = check_fields({"response_format": "srt", "temperature": "0.4", "language": "DE",
                        "prompt": "names: Kennedy", "translate": "true"}, known)
    assert got == {"response_format": "srt", "temperature": 0.4, "language": "de",
                   "prompt": "names: Kennedy", "translate": True}
    assert check_fields({"language": "haw", "translate": "0"}, known)["translate"] is False


@pytest.mark.parametrize("fields", [
    {"response_format": "json; rm -rf"}, {"response_format": "JSON"},
    {"temperature": "-0.1"}, {"temperature": "1.5"}, {"temperature": "inf"},
    {"temperature": "nan"}, {"temperature": "warm"},
    {"language": "xx"}, {"language": "en-US"}, {"language": "../../etc"},
    {"translate": "yes please"}, {"prompt": "p" * 4097},
])
def test_check_fields_refuses_everything_else(fields):
    with pytest.raises(BadField):
        check_fields(fields, known)


def post_forms(cases: list[dict]) -> list[dict]:
    """POST each case (httpx ``files``/``data``/``content``/``headers``) to an in-process
    aiohttp app that runs :func:`read_form` with a 1000-byte file bound."""

    async def handler(request: web.Request) -> web.Response:
        try:
            audio, fields = await read_form(request, max_file_bytes=1000)
        except BadField as exc:
            return web.json_response({"status": exc.status, "error": str(exc)})
        return web.json_response({"status": 200, "audio": len(audio), "fields": fields})

    async def run() -> list[dict]:
        app = web.Application()
        app.router.add_post("/", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with httpx.AsyncClient(timeout=30) as c:
                return [(await c.post(f"http://127.0.0.1:{port}/", **case)).json()
                        for case in cases]
        finally:
            await runner.cleanup()

    return asyncio.run(run())


def test_read_form_bounds_every_part():
    file_ok = {"files": {"file": ("a.wav", b"x" * 1000)}, "data": {"language": "en",
                                                                    "other": "dropped"}}
    too_big = {"files": {"file": ("a.wav", b"x" * 1001)}}
    big_unknown = {"files": {"file": ("a.wav", b"x"), "junk": ("j", b"j" * (MAX_FIELD_BYTES + 1))}}
    many = {"files": [("file", ("a.wav", b"x"))] + [(f"f{i}", ("f", b"1")) for i in range(40)]}
    broken = {"content": b"--nope\r\nnot a part", "headers": {
        "Content-Type": "multipart/form-data; boundary=other"}}
    no_file = {"files": {"language": (None, "en")}}
    got = post_forms([file_ok, too_big, big_unknown, many, broken, no_file])
    assert got[0] == {"status": 200, "audio": 1000, "fields": {"language": "en"}}
    assert got[1]["status"] == 413 and "the file" in got[1]["error"]
    assert got[2]["status"] == 413 and "'junk'" in got[2]["error"]
    assert got[3]["status"] == 400 and "more than 32 parts" in got[3]["error"]
    assert got[4]["status"] == 400
    assert got[5]["status"] == 400 and "no 'file'" in got[5]["error"]
