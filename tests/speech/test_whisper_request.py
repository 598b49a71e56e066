"""What a request may set, and the audio it may carry (pure: no engine)."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from lemonade_jupyter.core.engines.whisper_audio import SAMPLE_RATE, AudioError, decode_wav
from lemonade_jupyter.core.engines.whisper_request import BadField, check_fields


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
