"""The checks of an audio upload (``core/audio_upload.py``): WAV headers, duration, the
conversion to what the engine reads, and the form's fields, each refusal naming its field."""

from __future__ import annotations

import math
import struct
import wave
from io import BytesIO

import pytest

from lemonade_jupyter.core.audio_upload import (
    ENGINE_RATE, LANGUAGES, MAX_PROMPT_CHARS, RESPONSE_FORMATS, check_duration, check_form,
    parse_wav, to_engine_wav, wav_bytes,
)
from lemonade_jupyter.errors import (
    AudioTooLongError, InvalidRequestError, UnsupportedAudioFormatError,
)


def tone(seconds: float, rate: int, channels: int = 1, width: int = 2,
         freq: float = 440.0) -> bytes:
    """A sine tone as a WAV file written by the stdlib's ``wave`` (integer PCM)."""
    frames = int(seconds * rate)
    scale = (1 << (8 * width - 1)) - 1
    out = bytearray()
    for i in range(frames):
        value = int(0.5 * scale * math.sin(2 * math.pi * freq * i / rate))
        if width == 1:
            sample = bytes([value + 128])
        else:
            sample = value.to_bytes(width, "little", signed=True)
        out += sample * channels
    buf = BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(bytes(out))
    return buf.getvalue()


def float_wav(samples: list[float], rate: int) -> bytes:
    """A 32-bit float WAV (format tag 3), which ``wave`` cannot write."""
    pcm = struct.pack(f"<{len(samples)}f", *samples)
    return (struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 3,
                        1, rate, rate * 4, 4, 32, b"data", len(pcm)) + pcm)


def read_back(data: bytes) -> tuple[int, int, int, list[int]]:
    """channels, rate, width and the samples of a 16-bit WAV, read by the stdlib."""
    with wave.open(BytesIO(data)) as w:
        raw = w.readframes(w.getnframes())
        return (w.getnchannels(), w.getframerate(), w.getsampwidth(),
                list(struct.unpack(f"<{len(raw) // 2}h", raw)))


# -- WAV headers ------------------------------------------------------------------------------
def test_audio_upload_reads_a_wav_header():
    facts = parse_wav(tone(0.5, 22_050, channels=2, width=3))
    assert (facts.channels, facts.sample_rate, facts.sample_width) == (2, 22_050, 3)
    assert facts.frames == 11_025 and facts.duration_s == pytest.approx(0.5)
    assert not facts.is_float and not facts.is_engine_format
    assert parse_wav(tone(0.1, ENGINE_RATE)).is_engine_format


def test_audio_upload_a_file_cut_mid_frame_keeps_whole_frames():
    """An upload cut short (its data chunk claims more than arrived, and ends inside a frame)
    keeps the whole frames it has, and converts."""
    data = tone(0.5, 22_050, channels=2, width=3)[:-1]
    facts = parse_wav(data)
    assert facts.data_len % 6 == 0 and facts.frames == 11_024
    assert read_back(to_engine_wav(data, facts))[1] == ENGINE_RATE


def test_audio_upload_skips_chunks_before_the_data():
    plain = tone(0.25, ENGINE_RATE)
    extra = b"LIST" + struct.pack("<I", 5) + b"abcde" + b"\0"  # odd size: padded
    data = plain[:36] + extra + plain[36:]
    facts = parse_wav(data)
    assert facts.data_start == 44 + len(extra) and facts.frames == 4000


@pytest.mark.parametrize(("data", "named"), [
    (b"ID3\x04\x00" + b"\0" * 100, "mp3"),
    (b"\xff\xfb\x90\x00" + b"\0" * 100, "mp3"),
    (b"fLaC" + b"\0" * 100, "flac"),
    (b"OggS" + b"\0" * 100, "ogg"),
    (b"\0\0\0\x20ftypM4A " + b"\0" * 100, "m4a"),
    (b"\x1a\x45\xdf\xa3" + b"\0" * 100, "webm"),
    (b"hello, this is text", "not a WAV"),
    (b"", "not a WAV"),
])
def test_audio_upload_refuses_other_formats_naming_what_works(data, named):
    with pytest.raises(UnsupportedAudioFormatError) as err:
        parse_wav(data)
    assert err.value.status_code == 400 and err.value.code == "unsupported_audio_format"
    assert err.value.param == "file"
    if named != "not a WAV":
        assert f"looks like {named}" in err.value.message, err.value.message
    assert named in err.value.message and "WAV (RIFF/WAVE PCM" in err.value.message


def test_audio_upload_refuses_broken_or_unsupported_wav():
    good = tone(0.1, ENGINE_RATE)
    cases = {
        "no data chunk": good[:36],
        "fmt chunk is cut": good[:20],
        "not PCM": good[:20] + struct.pack("<H", 2) + good[22:],  # ADPCM's tag
        "channels": good[:22] + struct.pack("<H", 9) + good[24:],
        "sample rate": good[:24] + struct.pack("<I", 4000) + good[28:],
    }
    for why, data in cases.items():
        with pytest.raises(UnsupportedAudioFormatError) as err:
            parse_wav(data)
        assert why in err.value.message, (why, err.value.message)


# -- duration -------------------------------------------------------------------------------
def test_audio_upload_duration_is_bounded():
    facts = parse_wav(tone(1.0, 8000))
    check_duration(facts, 1.0)
    with pytest.raises(AudioTooLongError) as err:
        check_duration(facts, 0.5)
    assert err.value.code == "audio_too_long" and err.value.status_code == 400
    assert "1.0 s" in err.value.message and "max_audio_seconds" in err.value.message
    assert err.value.to_body()["error"]["limit_s"] == 0.5


def test_audio_upload_an_empty_wav_is_refused():
    with pytest.raises(UnsupportedAudioFormatError, match="no samples"):
        check_duration(parse_wav(wav_bytes(b"", 16_000)), 60)


# -- conversion ---------------------------------------------------------------------------------
def test_audio_upload_engine_format_passes_unchanged():
    data = tone(0.2, ENGINE_RATE)
    assert to_engine_wav(data, parse_wav(data)) is data


@pytest.mark.parametrize(("rate", "channels", "width"), [
    (8000, 1, 1), (44_100, 2, 2), (48_000, 1, 3), (22_050, 2, 4), (16_000, 2, 2),
])
def test_audio_upload_converts_pcm_wav_to_16k_mono_16bit(rate, channels, width):
    data = tone(0.5, rate, channels, width)
    channels_out, rate_out, width_out, samples = read_back(to_engine_wav(data, parse_wav(data)))
    assert (channels_out, rate_out, width_out) == (1, ENGINE_RATE, 2)
    assert len(samples) == 8000
    # Still the 440 Hz tone at half scale: its peak and its zero crossings (2 per period).
    assert 0.45 * 32767 < max(samples) < 0.55 * 32767
    crossings = sum(1 for a, b in zip(samples, samples[1:]) if (a < 0) != (b < 0))
    assert 420 <= crossings <= 460


def test_audio_upload_converts_float_wav_and_clips():
    data = float_wav([0.0, 0.5, -0.5, 2.0, -2.0] * 3200, ENGINE_RATE)
    facts = parse_wav(data)
    assert facts.is_float
    _, rate, _, samples = read_back(to_engine_wav(data, facts))
    assert rate == ENGINE_RATE and samples[:5] == [0, 16384, -16384, 32767, -32767]


def test_audio_upload_stereo_is_averaged():
    left_right = struct.pack("<4h", 1000, 3000, -2000, 0)
    data = (struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + 8, b"WAVE", b"fmt ", 16, 1, 2,
                        16_000, 64_000, 4, 16, b"data", 8) + left_right)
    assert read_back(to_engine_wav(data, parse_wav(data)))[3] == [2000, -1000]


# -- the form -----------------------------------------------------------------------------------
AUDIO = {"file": [("a.wav", b"RIFF")]}


def form(**fields: str) -> dict[str, list[bytes]]:
    return {"model": [b"user.whisper"], **{k: [v.encode()] for k, v in fields.items()}}


def test_audio_upload_form_defaults_and_values():
    req = check_form(form(), AUDIO)
    assert (req.model, req.response_format, req.temperature, req.language, req.prompt) == (
        "user.whisper", "json", None, None, None)
    assert req.audio == b"RIFF" and req.answers_json
    req = check_form(form(response_format="srt", temperature="0.2", language="FR",
                          prompt="Ask not"), AUDIO)
    assert (req.response_format, req.temperature, req.language, req.prompt) == (
        "srt", 0.2, "fr", "Ask not")
    assert not req.answers_json
    assert set(RESPONSE_FORMATS) == {"json", "text", "srt", "vtt", "verbose_json"}
    assert {"en", "auto", "yue"} <= LANGUAGES and "xx" not in LANGUAGES


@pytest.mark.parametrize(("fields", "files", "param"), [
    ({}, AUDIO, "model"),
    (form(), {}, "file"),
    (form(), {"file": [("a", b"1"), ("b", b"2")]}, "file"),
    ({**form(), "file": [b"not a file part"]}, {}, "file"),
    (form(response_format="xml"), AUDIO, "response_format"),
    (form(temperature="hot"), AUDIO, "temperature"),
    (form(temperature="1.5"), AUDIO, "temperature"),
    (form(temperature="-0.1"), AUDIO, "temperature"),
    (form(temperature="nan"), AUDIO, "temperature"),
    (form(language="xx"), AUDIO, "language"),
    (form(language="../etc"), AUDIO, "language"),
    (form(prompt="a" * (MAX_PROMPT_CHARS + 1)), AUDIO, "prompt"),
    ({"model": [b"a", b"b"]}, AUDIO, "model"),
    ({"model": [b"\xff\xfe"]}, AUDIO, "model"),
    ({"model": [b"user.x\x00"]}, AUDIO, "model"),
])
def test_audio_upload_form_refusals_name_the_field(fields, files, param):
    with pytest.raises(InvalidRequestError) as err:
        check_form(fields, files)
    assert err.value.status_code == 400 and err.value.param == param, err.value.message
