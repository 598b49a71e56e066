#!/usr/bin/env python3
"""A stand-in for whisper.cpp's ``whisper-server`` (stdlib only), for tests of the audio routes.

It takes whisper-server's command line (``-m MODEL --host H --port P -t N``) and answers
``GET /health`` and ``POST /inference`` (a multipart form) in each ``response_format``, with a
fixed transcript; with ``translate=true`` the text says it translated. The router runs it
behind ``lemonade-whisper-server --native`` (``$LEMONADE_WHISPER_SERVER`` names it), so every
request it sees went through the router and the wrapper.

Knobs (environment variables, read at start):

* ``FAKE_WHISPER_RECORD``: a file where each request appends one JSON line: its fields, and
  the uploaded WAV's channels, rate and sample width and its size;
* ``FAKE_WHISPER_DELAY``: seconds to wait before answering (a request in flight, to kill);
* ``FAKE_WHISPER_STATUS``: answer every inference with this status and an error body.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import io
import json
import os
import sys
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TEXT = "And so my fellow Americans, ask not what your country can do for you."
TRANSLATED = "Translated: " + TEXT
#: Two segments, split at the comma (seconds).
SEGMENTS = [(0.0, 2.5, "And so my fellow Americans,"),
            (2.5, 5.0, " ask not what your country can do for you.")]


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def render(fmt: str, text: str, language: str, translate: bool) -> tuple[str, str]:
    segments = SEGMENTS if not translate else [(0.0, 5.0, text)]
    if fmt == "text":
        return text + "\n", "text/plain; charset=utf-8"
    if fmt == "srt":
        return "".join(f"{i}\n{_stamp(a, ',')} --> {_stamp(b, ',')}\n{t.strip()}\n\n"
                       for i, (a, b, t) in enumerate(segments, 1)), "application/x-subrip"
    if fmt == "vtt":
        return "WEBVTT\n\n" + "".join(f"{_stamp(a, '.')} --> {_stamp(b, '.')}\n{t.strip()}\n\n"
                                      for a, b, t in segments), "text/vtt"
    if fmt == "verbose_json":
        return json.dumps({
            "task": "translate" if translate else "transcribe", "language": language,
            "duration": 5.0, "text": text,
            "segments": [{"id": i, "start": a, "end": b, "text": t, "tokens": [1, 2],
                          "temperature": 0.0, "avg_logprob": -0.2,
                          "no_speech_prob": 0.01} for i, (a, b, t) in enumerate(segments)],
        }), "application/json"
    return json.dumps({"text": text}), "application/json"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        sys.stdout.write("request: " + format % args + "\n")
        sys.stdout.flush()

    def _send(self, status: int, body: str, ctype: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path == "/health":
            self._send(200, '{"status":"ok"}', "application/json")
        else:
            self._send(404, '{"error":"not found"}', "application/json")

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path != "/inference":
            self._send(404, '{"error":"not found"}', "application/json")
            return
        fields, audio = _parse_form(self.headers.get("Content-Type", ""), body)
        record = dict(fields)
        try:
            with wave.open(io.BytesIO(audio)) as w:
                record.update(channels=w.getnchannels(), rate=w.getframerate(),
                              width=w.getsampwidth(), frames=w.getnframes())
        except (wave.Error, EOFError) as exc:
            record["wav_error"] = str(exc)
        record["bytes"] = len(audio)
        if os.environ.get("FAKE_WHISPER_RECORD"):
            with open(os.environ["FAKE_WHISPER_RECORD"], "a") as fh:
                fh.write(json.dumps(record) + "\n")
        delay = float(os.environ.get("FAKE_WHISPER_DELAY") or 0)
        if delay:
            time.sleep(delay)
        status = int(os.environ.get("FAKE_WHISPER_STATUS") or 200)
        if status != 200:
            self._send(status, json.dumps({"error": {"message": "fake engine failure",
                                                     "type": "server_error"}}),
                       "application/json")
            return
        translate = fields.get("translate") == "true"
        text, ctype = render(fields.get("response_format", "json"),
                             TRANSLATED if translate else TEXT,
                             fields.get("language", "en"), translate)
        self._send(200, text, ctype)


def _parse_form(content_type: str, body: bytes) -> tuple[dict[str, str], bytes]:
    """The text fields and the file of a multipart form (the stdlib's MIME parser)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields: dict[str, str] = {}
    audio = b""
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "file":
            audio = payload
        elif name:
            fields[str(name)] = payload.decode()
    return fields, audio


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-m", "--model", default="")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("-t", "--threads", type=int, default=1)
    args, _unknown = parser.parse_known_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    print(f"fake whisper-server listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
