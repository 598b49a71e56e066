"""The answers of ``/inference`` in each response format, from a fixed transcript (pure)."""

from __future__ import annotations

import json
import math

import pytest

from lemonade_jupyter.core.engines.whisper_formats import (
    RESPONSE_FORMATS,
    Segment,
    Transcript,
    render,
    timestamp,
)

T = Transcript(task="transcribe", language="en", duration=3725.5, temperature=0.2, segments=(
    Segment(0.0, 1.5, " And so my fellow Americans", (50364, 400), 0.5),
    Segment(61.0456, 3723.999, "ask not", (1029,), math.nan),
))


@pytest.mark.parametrize(("seconds", "srt", "vtt"), [
    (0.0, "00:00:00,000", "00:00:00.000"),
    (1.5, "00:00:01,500", "00:00:01.500"),
    (61.0456, "00:01:01,046", "00:01:01.046"),
    (3723.999, "01:02:03,999", "01:02:03.999"),
    (3723.9996, "01:02:04,000", "01:02:04.000"),
    (-0.2, "00:00:00,000", "00:00:00.000"),
    (360000.0, "100:00:00,000", "100:00:00.000"),
])
def test_timestamp_in_srt_and_vtt_spelling(seconds, srt, vtt):
    assert timestamp(seconds, ",") == srt
    assert timestamp(seconds, ".") == vtt


def test_srt_numbers_its_cues_from_one():
    body, ctype = render(T, "srt")
    assert body == ("1\n00:00:00,000 --> 00:00:01,500\nAnd so my fellow Americans\n\n"
                    "2\n00:01:01,046 --> 01:02:03,999\nask not\n")
    assert ctype.startswith("application/x-subrip")


def test_vtt_has_its_header_and_dotted_milliseconds():
    body, ctype = render(T, "vtt")
    assert body == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nAnd so my fellow Americans\n\n"
                    "00:01:01.046 --> 01:02:03.999\nask not\n")
    assert ctype.startswith("text/vtt")


def test_json_and_text_hold_the_joined_text():
    assert json.loads(render(T, "json")[0]) == {"text": "And so my fellow Americans ask not"}
    assert render(T, "text")[0] == "And so my fellow Americans\nask not\n"


def test_verbose_json_has_openais_shape():
    body = json.loads(render(T, "verbose_json")[0])
    assert body["task"] == "transcribe" and body["language"] == "en"
    assert body["duration"] == 3725.5 and body["text"] == "And so my fellow Americans ask not"
    first, second = body["segments"]
    assert first == {"id": 0, "seek": 0, "start": 0.0, "end": 1.5,
                     "text": " And so my fellow Americans", "tokens": [50364, 400],
                     "temperature": 0.2, "avg_logprob": round(math.log(0.5), 6),
                     "compression_ratio": None, "no_speech_prob": None}
    assert second["id"] == 1 and second["start"] == 61.046 and second["avg_logprob"] is None


def test_an_empty_transcript_renders_in_every_format():
    empty = Transcript(task="translate", language="de", duration=0.0)
    for fmt in RESPONSE_FORMATS:
        body, _ = render(empty, fmt)
        assert isinstance(body, str)
    assert render(empty, "vtt")[0] == "WEBVTT\n\n"
    assert json.loads(render(empty, "verbose_json")[0])["segments"] == []


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="response_format"):
        render(T, "xml")
