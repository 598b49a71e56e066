"""OpenAI's audio routes: ``POST lemonade/api/v1/audio/transcriptions`` and ``translations``.

``openai.OpenAI(base_url=".../lemonade/api/v1").audio.transcriptions.create(model=..., file=...)``
works through the router: the request is a multipart form, answered by a transcription model
(a model labelled ``transcription``, run by its engine, whisper.cpp's server) on its
``POST /inference`` route, with ``translate=true`` for a translation into English.

Form fields (each checked before anything loads, ``core/audio_upload.py``):

* ``file`` (required): the audio, a PCM WAV file (8/16/24/32-bit integer or 32-bit float
  samples, 8–192 kHz, 1–8 channels; converted to 16 kHz mono 16-bit for the engine). Other
  formats (mp3, flac, ogg, m4a, webm...): **400** ``unsupported_audio_format``, whose message
  lists the formats that work. No samples: the same 400.
* ``model`` (required): a transcription model of the catalog (or an alias of one); unknown:
  **404** ``model_not_found``; another type of model: **400** (``param`` ``model``).
* ``response_format``: ``json`` (default) or ``verbose_json`` (answered as
  ``application/json``: ``{"text"}``, or with ``language``, ``duration`` and ``segments``),
  ``text``, ``srt`` or ``vtt`` (answered as ``text/plain``: the client gets a string).
* ``temperature``: a number from 0 to 1. ``language``: an ISO 639-1 code whisper knows, or
  ``auto``. ``prompt``: at most 2000 characters. Each bad value: **400** naming the field.

Limits: the body may be ``max_audio_upload_mib`` (25 MiB by default) plus 64 KiB for the other
fields, the file ``max_audio_upload_mib``: larger, **413** ``audio_too_large`` before the form
is read. A multipart body that does not parse: **400** ``Invalid body``. The audio may last
``max_audio_seconds`` (1800 s by default): longer, **400** ``audio_too_long``. A refused
request never loads or evicts a model.

Everything else is the chat routes' path: the model is auto-loaded by the router (``409`` when
its pool is all pinned, ``503`` while it cools down after crashes, ``429`` when its queue is
full), the request holds a lease and one of its backend's slots while the engine works, and a
backend that dies mid-request is reloaded and the request replayed once (``Router.call``);
after a second failure, **502** ``upstream_error``. An engine's own error answer keeps its
status, in our envelope. Remote models do not serve these routes (**400**).
"""

from __future__ import annotations

import asyncio

import aiohttp
from jupyter_server.auth.decorator import authorized
from tornado import web

from ..core.audio_upload import (
    AudioRequest, WavFacts, check_duration, check_form, parse_wav, to_engine_wav,
)
from ..core.remote import RemoteModel
from ..core.router import Lease
from ..errors import AudioTooLargeError, InvalidRequestError
from .answers import upstream_error
from .base import LemonadeHandler
from .relay import STATS_TAIL_BYTES
from .upstream import UpstreamPool, UpstreamResponse

#: whisper.cpp server's route for both transcriptions and translations.
ENGINE_PATH = "/inference"
#: Room in a body for the form's other fields and the multipart framing.
FORM_OVERHEAD_BYTES = 64 * 1024
_MIB = 1 << 20


class AudioHandler(LemonadeHandler):
    """Transcribes (or translates) one uploaded audio file with a transcription model."""

    translate: bool

    def initialize(self, translate: bool) -> None:
        self.translate = translate

    @property
    def upstream(self) -> UpstreamPool:
        return self.settings["lemonade_upstream"]  # type: ignore[no-any-return]

    def _max_file_bytes(self) -> int:
        return int(self.router.settings.max_audio_upload_mib * _MIB)

    def check_body_size(self) -> None:
        """A body over the upload limit is a 413 ``audio_too_large``, before the form is read
        (tornado has the body in memory by then, within the Jupyter server's own
        ``max_body_size``)."""
        size = self.body_size()
        if size > self._max_file_bytes() + FORM_OVERHEAD_BYTES:
            raise self._too_large(size)

    def _too_large(self, size: int) -> AudioTooLargeError:
        limit = self.router.settings.max_audio_upload_mib
        return AudioTooLargeError(
            f"The upload is {size / _MIB:.1f} MiB; audio files of at most {limit:g} MiB "
            "(max_audio_upload_mib) are accepted", param="file", limit_mib=limit)

    @web.authenticated
    @authorized
    async def post(self) -> None:
        form = self._form()
        facts = parse_wav(form.audio)
        check_duration(facts, self.router.settings.max_audio_seconds)
        target = self.router.target(form.model)
        if isinstance(target, RemoteModel):
            raise InvalidRequestError(
                f"Model '{form.model}' is a remote model; the audio routes serve local "
                "transcription models", param="model")
        spec = self.router.catalog.get(target.name)  # 404 for an unknown model
        if spec.type != "transcription":
            raise InvalidRequestError(
                f"Model '{form.model}' is a {spec.type} model, not a transcription model; "
                "the audio routes need a model registered with the label 'transcription'",
                param="model")
        audio = await self._engine_audio(form.audio, facts)
        body, content_type = await _engine_form(form, audio, self.translate)

        async def send(lease: Lease) -> UpstreamResponse:
            return await self.upstream.post(
                *lease.address, ENGINE_PATH, body,
                {**lease.headers(), "Content-Type": content_type})

        resp = await self.router.call(form.model, send)
        if resp.code < 400:  # an engine that reports its timings feeds the statistics
            self.router.stats.record(form.model, ENGINE_PATH, resp.body[-STATS_TAIL_BYTES:])
        self._answer(resp, form)

    def _form(self) -> AudioRequest:
        """The multipart form, checked; 400 otherwise.

        Tornado parsed it before :meth:`prepare` (``parse_body_arguments``, with its bound on
        the number of parts and the size of their headers); a body it could not parse was
        a 400 ``Invalid body`` already."""
        content_type = self.request.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            raise InvalidRequestError(
                "The audio routes take a multipart/form-data body with a 'file' part",
                param="file")
        uploads = {name: [(f.filename, f.body) for f in parts]
                   for name, parts in self.request.files.items()}
        for _filename, data in uploads.get("file", []):
            if len(data) > self._max_file_bytes():
                raise self._too_large(len(data))
        return check_form(self.request.body_arguments, uploads)

    async def _engine_audio(self, audio: bytes, facts: WavFacts) -> bytes:
        """The audio in the engine's format; a conversion runs off the event loop."""
        if facts.is_engine_format:
            return audio
        return await asyncio.to_thread(to_engine_wav, audio, facts)

    def _answer(self, resp: UpstreamResponse, form: AudioRequest) -> None:
        """The engine's answer as OpenAI gives it: JSON, or plain text (text, srt, vtt)."""
        if resp.code >= 400:
            status, err = upstream_error(resp.code, resp.body)
            self.write_json(err, status)
            return
        self.set_status(resp.code)
        self.finish(resp.body, set_content_type="application/json" if form.answers_json
                    else "text/plain; charset=utf-8")


async def _engine_form(form: AudioRequest, audio: bytes, translate: bool) -> tuple[bytes, str]:
    """The multipart body of the engine's ``/inference`` and its content type: only the
    checked fields, the file renamed (the client's file name reaches nothing)."""
    data = aiohttp.FormData()
    data.add_field("file", audio, filename="audio.wav", content_type="audio/wav")
    data.add_field("response_format", form.response_format)
    data.add_field("translate", "true" if translate else "false")
    if form.temperature is not None:
        data.add_field("temperature", f"{form.temperature:g}")
    if form.language is not None:
        data.add_field("language", form.language)
    if form.prompt is not None:
        data.add_field("prompt", form.prompt)
    payload = data()
    return await payload.as_bytes(), payload.content_type
