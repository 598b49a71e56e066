"""``%lemonade transcribe`` in a real IPython shell against a recording transport (fast).

What the magic sends (a multipart form to the audio route, the file streamed from disk), how it
renders each answer (text, json's text, verbose_json whole, srt/vtt verbatim), ``-o`` writing a
file, and its refusals: a missing file or a folder as output (UsageError, nothing sent), an
unknown format (the parser's), a server refusal (one line). The same magic runs against a real
server in test_transcribe_server.py.
"""

from __future__ import annotations

import json
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import httpx
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from lemonade_jupyter.kernel.client import RouterClient
from lemonade_jupyter.kernel.magics import LemonadeServerError
from lemonade_jupyter.kernel.transcribe import TranscriptText

from .conftest import use_client

TEXT = "And so my fellow Americans, ask not what your country can do for you."
SRT = "1\n00:00:00,000 --> 00:00:02,500\nAnd so my fellow Americans,\n"
AUDIO = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(64))


class AudioRoute:
    """A recording stand-in for the router's audio routes (``httpx.MockTransport``)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
        form = BytesParser(policy=HTTP).parsebytes(head + body)
        fields: dict[str, Any] = {}
        for part in form.iter_parts():
            name = part.get_param("name", header="content-disposition")
            filename = part.get_filename()
            payload = part.get_payload(decode=True)
            fields[name] = (filename, payload) if filename else payload.decode()
        self.requests.append((request.url.path, fields))
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {
                "message": "Model 'nope' is not a transcription model", "type":
                "invalid_request_error", "param": "model", "code": None}})
        fmt = fields.get("response_format")
        if fmt == "json":
            return httpx.Response(200, json={"text": TEXT})
        if fmt == "verbose_json":
            return httpx.Response(200, json={"text": TEXT, "language": "en", "segments": []})
        return httpx.Response(200, text=SRT if fmt == "srt" else TEXT)


@pytest.fixture
def route() -> AudioRoute:
    return AudioRoute()


@pytest.fixture
def magics(ip: InteractiveShell, route: AudioRoute):
    client = RouterClient("http://router.test/", "tok", transport=httpx.MockTransport(route))
    return use_client(ip, client, progress="none")


@pytest.fixture
def speech(tmp_path: Path) -> Path:
    path = tmp_path / "speech.wav"
    path.write_bytes(AUDIO)
    return path


def test_transcribe_posts_the_file_and_fields_as_a_multipart_form(ip, magics, route, speech):
    text = ip.run_line_magic("lemonade", f"transcribe Whisper-Tiny {speech} --language en")
    assert isinstance(text, TranscriptText) and text == TEXT
    [(path, fields)] = route.requests
    assert path == "/lemonade/api/v1/audio/transcriptions"
    assert fields == {"model": "Whisper-Tiny", "language": "en", "response_format": "text",
                      "file": ("speech.wav", AUDIO)}
    assert TEXT in text._repr_html_() and text._repr_html_().startswith("<pre")


def test_transcribe_translate_goes_to_the_translations_route(ip, magics, route, speech):
    ip.run_line_magic("lemonade", f"transcribe Whisper-Tiny {speech} --translate")
    [(path, fields)] = route.requests
    assert path == "/lemonade/api/v1/audio/translations" and "language" not in fields


@pytest.mark.parametrize("fmt,expected", [
    ("json", TEXT),
    ("srt", SRT),
    ("verbose_json", json.dumps({"text": TEXT, "language": "en", "segments": []}, indent=2)),
])
def test_transcribe_formats_render_as_text(ip, magics, route, speech, fmt, expected):
    assert ip.run_line_magic("lemonade", f"transcribe m {speech} --format {fmt}") == expected
    assert route.requests[0][1]["response_format"] == fmt


def test_transcribe_output_goes_to_a_file(ip, magics, route, speech, tmp_path):
    out = tmp_path / "speech.srt"
    message = ip.run_line_magic("lemonade", f"transcribe m {speech} -o {out} --format srt")
    assert out.read_text() == SRT
    assert f"to {out}" in message.text and message.data["text"] == SRT


@pytest.mark.parametrize("line,error", [
    ("transcribe m /no/such/file.wav", "no such audio file: /no/such/file.wav"),
    ("transcribe m {speech} -o {folder}", "-o must name a file, not a folder"),
    ("transcribe m {speech} --format mp3", "invalid choice: 'mp3'"),
    ("transcribe m", "the following arguments are required: FILE"),
])
def test_transcribe_usage_errors_send_nothing(ip, magics, route, speech, tmp_path, line, error):
    with pytest.raises(UsageError, match=error):
        ip.run_line_magic("lemonade", line.format(speech=speech, folder=tmp_path))
    assert route.requests == []


def test_transcribe_server_refusal_is_one_line(ip, magics, route, speech):
    route.status = 400
    with pytest.raises(LemonadeServerError) as caught:
        ip.run_line_magic("lemonade", f"transcribe nope {speech}")
    assert caught.value.one_line() == (
        "lemonade: Model 'nope' is not a transcription model (HTTP 400, invalid_request_error)")


def test_transcribe_is_in_the_magic_help(ip: InteractiveShell) -> None:
    doc = ip.find_line_magic("lemonade").__doc__
    assert "%lemonade transcribe MODEL FILE [-o OUT] [--language L]" in doc
