"""WAV bytes to the 16 kHz mono float samples whisper.cpp reads.

whisper.cpp's own server takes WAV (and, with ``--convert``, anything ffmpeg reads). Ours
takes PCM WAV: 8, 16, 24 or 32-bit integers, mono or several channels (averaged), any sample
rate (resampled linearly to 16 kHz, which is what whisper.cpp's models were trained on).
Everything else is a :class:`AudioError` with a sentence the client can act on.
"""

from __future__ import annotations

import io
import wave

import numpy as np

SAMPLE_RATE = 16_000
#: The longest audio one request may carry (whisper.cpp handles any length in 30 s windows;
#: this bounds the memory and the time of one request).
MAX_SECONDS = 2 * 3600


class AudioError(ValueError):
    """The upload is not audio this engine reads; the message says why."""


def decode_wav(data: bytes) -> np.ndarray:
    """The samples of a PCM WAV file as float32 in [-1, 1] at 16 kHz, mono."""
    try:
        with wave.open(io.BytesIO(data), "rb") as wf:
            channels = wf.getnchannels()
            width = wf.getsampwidth()
            rate = wf.getframerate()
            frames = wf.getnframes()
            if rate <= 0 or frames / rate > MAX_SECONDS:
                raise AudioError(f"audio longer than {MAX_SECONDS} s (or no sample rate)")
            raw = wf.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise AudioError(f"not a PCM WAV file ({exc})") from exc
    if width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw[: len(raw) // 3 * 3], dtype=np.uint8).reshape(-1, 3)
        ints = (b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8)
                | (b[:, 2].astype(np.int32) << 16))
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        samples = ints.astype(np.float32) / float(1 << 23)
    elif width == 4:
        samples = np.frombuffer(raw, dtype="<i4").astype(np.float32) / float(1 << 31)
    else:
        raise AudioError(f"{width * 8}-bit samples are not supported")
    if channels > 1:
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(1)
    if rate != SAMPLE_RATE and len(samples):
        n_out = max(1, round(len(samples) * SAMPLE_RATE / rate))
        positions = np.linspace(0, len(samples) - 1, n_out)
        samples = np.interp(positions, np.arange(len(samples)), samples).astype(np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32)
