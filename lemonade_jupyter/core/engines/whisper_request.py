"""The checks of one ``/inference`` request: its multipart form, field by field.

Shared by both ways of serving (:mod:`.whisper_server`'s in-process model and the native
server behind it, :mod:`.whisper_native`), so that whatever reaches whisper.cpp went through
the same allowlists and ranges. Pure but for :func:`read_form`, which reads the request.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from .whisper_formats import RESPONSE_FORMATS

#: The largest upload (about 55 minutes of 16 kHz 16-bit stereo WAV).
MAX_UPLOAD_BYTES = 200 << 20
#: Requests allowed to wait for the one inference thread; more get a 503.
MAX_WAITING = 16
MAX_PROMPT_CHARS = 4096
_LANGUAGE = re.compile(r"^(auto|[a-z]{2,3}|haw)$")
_FIELDS = ("file", "response_format", "temperature", "language", "prompt", "translate")

class BadField(ValueError):
    """A form field that is not allowed; the message names it."""


def error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


def check_fields(fields: dict[str, str], known_language: Callable[[str], bool]) -> dict[str, Any]:
    """The checked decoding choices of one request (pure; raises BadField)."""
    fmt = fields.get("response_format", "json") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise BadField(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}")
    try:
        temperature = float(fields.get("temperature", "0") or "0")
    except ValueError:
        raise BadField("temperature must be a number") from None
    if not math.isfinite(temperature) or not 0.0 <= temperature <= 1.0:
        raise BadField("temperature must be between 0 and 1")
    language = (fields.get("language", "") or "auto").lower()
    if not _LANGUAGE.match(language) or (language != "auto" and not known_language(language)):
        raise BadField("language must be 'auto' or a language code whisper knows (e.g. 'en')")
    prompt = fields.get("prompt", "")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadField(f"prompt must be at most {MAX_PROMPT_CHARS} characters")
    translate = fields.get("translate", "false").lower()
    if translate not in ("true", "false", "1", "0", ""):
        raise BadField("translate must be true or false")
    return {"response_format": fmt, "temperature": temperature, "language": language,
            "prompt": prompt, "translate": translate in ("true", "1")}


async def read_form(request: web.Request) -> tuple[bytes, dict[str, str]]:
    """The uploaded file and the text fields of a multipart form (bounded; BadField)."""
    if not request.content_type.startswith("multipart/"):
        raise BadField("the body must be multipart/form-data with a 'file' field")
    reader = await request.multipart()
    audio: bytes | None = None
    fields: dict[str, str] = {}
    for _ in range(32):
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, aiohttp.BodyPartReader) or part.name not in _FIELDS:
            continue  # unknown fields are ignored, as whisper-server does
        if part.name == "file":
            audio = bytes(await part.read())
        else:
            fields[part.name] = (await part.text())[: MAX_PROMPT_CHARS + 1]
    if not audio:
        raise BadField("the form has no 'file' field (the audio)")
    return audio, fields
