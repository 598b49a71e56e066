"""Checks of a transcription upload, made before the router loads a model for it.

OpenAI's audio routes take a multipart form: ``file``, ``model``, ``language``, ``prompt``,
``temperature``, ``response_format``. Whatever in it reaches the engine is checked here against
an allowlist, so that a request that cannot succeed is refused (400, the field named) before it
auto-loads a model or evicts another one. These are pure functions over bytes and strings; the
HTTP side parses the form (``server/audio.py``) and hands the parts here.

The engine (whisper.cpp's server) reads 16 kHz mono 16-bit PCM WAV. Any PCM WAV (8, 16, 24 or
32-bit integers, 32-bit floats, any channel count and rate) is accepted and converted to that
here, with numpy (already a dependency, through ``gguf``); compressed formats (mp3, flac, ogg,
m4a, webm...) are refused with ``unsupported_audio_format``, whose message says what works.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import AudioTooLongError, InvalidRequestError, UnsupportedAudioFormatError
from .validation import check_number

#: ``response_format`` values, as OpenAI names them; the engine renders each one.
RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
#: Formats answered as JSON; the others are plain text.
JSON_FORMATS = frozenset({"json", "verbose_json"})
#: Longest ``prompt`` (characters): whisper reads at most 224 tokens of it anyway.
MAX_PROMPT_CHARS = 2000
#: What the engine reads: 16 kHz, mono, 16-bit signed PCM.
ENGINE_RATE = 16_000
#: Sample rates a WAV may have (telephone to studio); channel counts likewise.
MIN_RATE, MAX_RATE = 8_000, 192_000
MAX_CHANNELS = 8
#: What the refusal of another format says works.
SUPPORTED_TEXT = ("WAV (RIFF/WAVE PCM: 8, 16, 24 or 32-bit integer or 32-bit float samples, "
                  f"any sample rate from {MIN_RATE} to {MAX_RATE} Hz, 1 to {MAX_CHANNELS} "
                  "channels)")
#: Languages whisper knows (ISO 639-1, and the two it names otherwise: haw, yue), or ``auto``.
LANGUAGES = frozenset("""
    en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no
    th ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw
    gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl
    mg as tt haw ln ha ba jw su yue auto""".split())

#: The first bytes of formats people send instead of WAV, to name them in the refusal.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"ID3", 0, "mp3"), (b"\xff\xfb", 0, "mp3"), (b"\xff\xf3", 0, "mp3"),
    (b"\xff\xf2", 0, "mp3"), (b"fLaC", 0, "flac"), (b"OggS", 0, "ogg"),
    (b"ftyp", 4, "m4a/mp4"), (b"\x1a\x45\xdf\xa3", 0, "webm/mkv"),
    (b"FORM", 0, "aiff"), (b"RF64", 0, "rf64"),
)
#: WAVE format tags: integer PCM, IEEE floats, and the extensible header that wraps either.
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


@dataclass(frozen=True)
class WavFacts:
    """What a WAV file's header says about its samples."""

    channels: int
    sample_rate: int
    #: Bytes per sample of one channel (1, 2, 3 or 4).
    sample_width: int
    #: Samples are IEEE floats (else integers; 8-bit ones unsigned, as WAV has them).
    is_float: bool
    #: Where the sample data starts and how many bytes it has (whole frames only).
    data_start: int
    data_len: int

    @property
    def frames(self) -> int:
        return self.data_len // (self.channels * self.sample_width)

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    @property
    def is_engine_format(self) -> bool:
        """Already what the engine reads: no conversion needed."""
        return (self.channels == 1 and self.sample_rate == ENGINE_RATE
                and self.sample_width == 2 and not self.is_float)


@dataclass(frozen=True)
class AudioRequest:
    """A checked transcription or translation form."""

    model: str
    audio: bytes
    filename: str
    response_format: str = "json"
    temperature: float | None = None
    language: str | None = None
    prompt: str | None = None

    @property
    def answers_json(self) -> bool:
        return self.response_format in JSON_FORMATS


def unsupported(data: bytes, why: str = "") -> UnsupportedAudioFormatError:
    """The refusal of a file that is no WAV this router reads, naming what it looks like."""
    found = next((name for magic, at, name in _MAGIC if data[at:at + len(magic)] == magic),
                 None)
    what = f"This looks like {found}, which the router does not convert" if found else (
        why or "The file is not a WAV file")
    return UnsupportedAudioFormatError(
        f"{what}. Supported audio formats: {SUPPORTED_TEXT}; convert other formats first "
        "(e.g. ffmpeg -i in.mp3 -ar 16000 -ac 1 out.wav).", param="file")


def parse_wav(data: bytes) -> WavFacts:
    """Read a RIFF/WAVE header: its ``fmt`` chunk and where its ``data`` chunk is.

    Raises UnsupportedAudioFormatError for anything else, or a WAV whose samples are not
    integer PCM or floats, or whose rate or channel count is outside what is supported. The
    chunk walk is bounded by the file's length (each step moves forward)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise unsupported(data)
    fmt: tuple[int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + size > len(data):
                raise unsupported(data, "The WAV file's fmt chunk is cut short")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == _EXTENSIBLE and size >= 40:
                tag = struct.unpack_from("<H", data, body + 24)[0]  # the sub-format's tag
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise unsupported(data, "The WAV file has no fmt chunk before its data")
            return _facts(data, fmt, body, min(size, len(data) - body))
        pos = body + size + (size & 1)  # chunks are padded to an even length
    raise unsupported(data, "The WAV file has no data chunk")


def _facts(data: bytes, fmt: tuple[int, int, int, int], start: int, size: int) -> WavFacts:
    tag, channels, rate, bits = fmt
    integer = tag == _PCM and bits in (8, 16, 24, 32)
    floating = tag == _FLOAT and bits == 32
    if not (integer or floating):
        raise unsupported(data, f"The WAV file's samples (format tag {tag}, {bits} bits) are "
                          "not PCM")
    if not 1 <= channels <= MAX_CHANNELS:
        raise unsupported(data, f"The WAV file has {channels} channels")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise unsupported(data, f"The WAV file's sample rate is {rate} Hz")
    width = bits // 8
    frame = channels * width
    return WavFacts(channels, rate, width, floating, start, size - size % frame)


def check_duration(facts: WavFacts, max_seconds: float) -> None:
    """Raise AudioTooLongError (400) when the audio lasts longer than ``max_seconds``, and
    UnsupportedAudioFormatError when it has no sample at all (nothing to transcribe)."""
    if facts.frames == 0:
        raise UnsupportedAudioFormatError("The WAV file has no samples", param="file")
    if facts.duration_s > max_seconds:
        raise AudioTooLongError(
            f"The audio lasts {facts.duration_s:.1f} s; at most {max_seconds:g} s "
            "(max_audio_seconds) are transcribed in one request: split the file",
            param="file", duration_s=round(facts.duration_s, 3), limit_s=max_seconds)


def to_engine_wav(data: bytes, facts: WavFacts) -> bytes:
    """The audio as the engine reads it: 16 kHz mono 16-bit PCM WAV.

    A file already in that format is returned as it is, else its samples are scaled to
    [-1, 1], the channels averaged and the rate changed by linear interpolation (whisper's
    own front end does no better). CPU work proportional to the file (bounded by the upload
    limit): the HTTP side runs it off the event loop."""
    if facts.is_engine_format:
        return data
    import numpy as np  # only for conversions

    raw = data[facts.data_start:facts.data_start + facts.data_len]
    width = facts.sample_width
    if facts.is_float:
        samples = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    elif width == 1:  # unsigned 8-bit
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    elif width == 3:  # 24-bit little-endian: widen each sample to 32 bits
        triples = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        joined = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        samples = np.where(joined >= 1 << 23, joined - (1 << 24), joined) / float(1 << 23)
    else:
        kind = "<i2" if width == 2 else "<i4"
        samples = np.frombuffer(raw, dtype=kind).astype(np.float64) / float(1 << (8 * width - 1))
    mono = samples.reshape(-1, facts.channels).mean(axis=1)
    if facts.sample_rate != ENGINE_RATE:
        count = max(1, round(len(mono) * ENGINE_RATE / facts.sample_rate))
        at = np.arange(count) * (facts.sample_rate / ENGINE_RATE)
        mono = np.interp(at, np.arange(len(mono)), mono)
    pcm = (np.clip(mono, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
    return wav_bytes(pcm, ENGINE_RATE)


def wav_bytes(pcm: bytes, rate: int, channels: int = 1, width: int = 2) -> bytes:
    """A RIFF/WAVE file around integer PCM samples (a 44-byte header, then ``pcm``)."""
    frame = channels * width
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16,
                         _PCM, channels, rate, rate * frame, frame, width * 8, b"data",
                         len(pcm))
    return header + pcm


def check_form(fields: Mapping[str, Sequence[bytes]],
               files: Mapping[str, Sequence[tuple[str, bytes]]]) -> AudioRequest:
    """The form's fields checked: ``model`` and ``file`` required, the others optional.

    ``fields`` maps a field name to its values, ``files`` a file field to its (filename,
    bytes). Raises InvalidRequestError (400) naming the field; the audio itself is checked
    by :func:`parse_wav` and :func:`check_duration`."""
    uploads = files.get("file") or []
    if len(uploads) != 1 or "file" in fields:
        raise InvalidRequestError(
            "Parameter 'file' is required: one audio file, sent as a multipart file part",
            param="file")
    filename, audio = uploads[0]
    model = _text(fields, "model")
    if not model:
        raise InvalidRequestError("Parameter 'model' is required", param="model")
    response_format = _text(fields, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise InvalidRequestError(
            f"Parameter 'response_format' must be one of {', '.join(RESPONSE_FORMATS)}",
            param="response_format")
    temperature: float | None = None
    raw_temperature = _text(fields, "temperature")
    if raw_temperature is not None:
        try:
            number = float(raw_temperature)
        except ValueError:
            raise InvalidRequestError("Parameter 'temperature' must be a number",
                                      param="temperature") from None
        temperature = float(check_number("temperature", number, minimum=0, maximum=1))
    language = _text(fields, "language")
    if language is not None and language.lower() not in LANGUAGES:
        raise InvalidRequestError(
            "Parameter 'language' must be an ISO 639-1 code whisper knows (en, fr, de, "
            "es, ja, zh...) or 'auto'", param="language")
    prompt = _text(fields, "prompt")
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequestError(
            f"Parameter 'prompt' must be at most {MAX_PROMPT_CHARS} characters",
            param="prompt")
    return AudioRequest(model=model, audio=audio, filename=filename,
                        response_format=response_format, temperature=temperature,
                        language=language.lower() if language else None,
                        prompt=prompt or None)


def _text(fields: Mapping[str, Sequence[bytes]], name: str) -> str | None:
    """One text field as a string (None when absent or empty); a repeated field, bytes
    that are not UTF-8, or control characters other than line breaks and tabs are a 400."""
    values = fields.get(name) or []
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequestError(f"Parameter '{name}' is given more than once", param=name)
    try:
        text = values[0].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidRequestError(f"Parameter '{name}' must be UTF-8 text",
                                  param=name) from None
    if any(ord(c) < 32 and c not in "\n\t" for c in text) or "\x7f" in text:
        raise InvalidRequestError(f"Parameter '{name}' holds control characters", param=name)
    return text or None
