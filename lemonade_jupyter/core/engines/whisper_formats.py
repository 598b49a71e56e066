"""The answers of a whisper-server ``/inference``: one transcription in each ``response_format``.

Pure functions over a :class:`Transcript`, so the formats are unit tested without a model. The
shapes follow whisper.cpp's ``whisper-server`` and OpenAI's ``/v1/audio/transcriptions``:

* ``json``: ``{"text": ...}``;
* ``text``: the text, one line per segment;
* ``srt``: numbered cues, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``;
* ``vtt``: ``WEBVTT`` then cues ``HH:MM:SS.mmm --> HH:MM:SS.mmm``;
* ``verbose_json``: ``task``, ``language``, ``duration``, ``text`` and ``segments``, each with
  ``id``, ``seek``, ``start``, ``end``, ``text``, ``tokens``, ``temperature``,
  ``avg_logprob``, ``compression_ratio`` and ``no_speech_prob``, as OpenAI's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

#: The formats ``/inference`` answers in (an allowlist), with their content types.
CONTENT_TYPES = {
    "json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "verbose_json": "application/json",
}
RESPONSE_FORMATS = tuple(CONTENT_TYPES)


@dataclass(frozen=True)
class Segment:
    """One stretch of speech: start and end in seconds, its text and how sure the model was
    (the mean probability of its tokens; NaN when not known)."""

    start: float
    end: float
    text: str
    tokens: tuple[int, ...] = ()
    probability: float = math.nan


@dataclass(frozen=True)
class Transcript:
    """What one run of the model produced for one audio file."""

    task: str  # "transcribe" or "translate"
    language: str
    duration: float  # seconds of audio
    segments: tuple[Segment, ...] = field(default_factory=tuple)
    temperature: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


def timestamp(seconds: float, sep: str) -> str:
    """``HH:MM:SS<sep>mmm`` for ``seconds`` (rounded to the millisecond; never negative)."""
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms:03d}"


def to_srt(t: Transcript) -> str:
    cues = [f"{i}\n{timestamp(s.start, ',')} --> {timestamp(s.end, ',')}\n{s.text.strip()}\n"
            for i, s in enumerate(t.segments, start=1)]
    return "\n".join(cues)


def to_vtt(t: Transcript) -> str:
    cues = [f"{timestamp(s.start, '.')} --> {timestamp(s.end, '.')}\n{s.text.strip()}\n"
            for s in t.segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def to_text(t: Transcript) -> str:
    return "".join(f"{s.text.strip()}\n" for s in t.segments)


def verbose(t: Transcript) -> dict[str, Any]:
    """OpenAI's ``verbose_json`` shape."""
    segments = []
    for i, s in enumerate(t.segments):
        prob = s.probability
        segments.append({
            "id": i,
            "seek": 0,
            "start": round(s.start, 3),
            "end": round(s.end, 3),
            "text": s.text,
            "tokens": list(s.tokens),
            "temperature": t.temperature,
            "avg_logprob": round(math.log(prob), 6) if prob > 0 else None,
            "compression_ratio": None,
            "no_speech_prob": None,
        })
    return {"task": t.task, "language": t.language, "duration": round(t.duration, 3),
            "text": t.text, "segments": segments}


def render(t: Transcript, response_format: str) -> tuple[str, str]:
    """``(body, content type)`` of ``t`` in ``response_format`` (one of
    :data:`RESPONSE_FORMATS`; anything else is a ValueError)."""
    if response_format == "json":
        body = json.dumps({"text": t.text})
    elif response_format == "verbose_json":
        body = json.dumps(verbose(t))
    elif response_format == "text":
        body = to_text(t)
    elif response_format == "srt":
        body = to_srt(t)
    elif response_format == "vtt":
        body = to_vtt(t)
    else:
        raise ValueError(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}")
    return body, CONTENT_TYPES[response_format]
