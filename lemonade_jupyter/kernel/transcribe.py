"""``%lemonade transcribe``: the text of an audio file, from a transcription model of the router.

Apart from the magics so that they stay "parse, call, render": this module checks the paths,
calls :meth:`.client.RouterClient.transcribe` (a multipart upload to the audio route), and
turns the answer into text: the transcript itself for ``text``, ``json``, ``srt`` and ``vtt``,
and the whole answer as indented JSON for ``verbose_json``. With ``-o OUT`` the text goes to
that file and the magic answers one line; without, it answers the text (a ``str``, so
``text = %lemonade transcribe ...`` keeps it).
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

from IPython.core.error import UsageError

from .client import RouterClient
from .progress import run_with_progress
from .rendering import Message

#: The answers the audio routes give (``response_format``).
FORMATS = ("text", "json", "verbose_json", "srt", "vtt")


class TranscriptText(str):
    """A transcript as the magic answers it: a string, shown verbatim (line breaks kept)."""

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(str(self))

    def _repr_html_(self) -> str:
        return f"<pre class='lemonade-transcript'>{html.escape(str(self))}</pre>"


def as_text(answer: str | dict[str, Any], response_format: str) -> str:
    """The text to show or write for an answer of ``response_format``."""
    if isinstance(answer, dict):
        if response_format == "json":
            return str(answer.get("text", ""))
        return json.dumps(answer, indent=2, ensure_ascii=False)
    return answer.strip() if response_format == "text" else answer  # the engine's line end


def transcribe(client: RouterClient, model: str, path: str, *, output: str | None,
               language: str | None, response_format: str, translate: bool,
               progress_mode: str) -> TranscriptText | Message:
    """Transcribe (or translate) the audio file ``path`` with ``model``; UsageError for a file
    that is not there or an output that is a folder, ClientError for the server's refusals."""
    audio = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(audio):
        raise UsageError(f"no such audio file: {audio}")
    target = os.path.abspath(os.path.expanduser(output)) if output else None
    if target is not None and os.path.isdir(target):
        raise UsageError(f"-o must name a file, not a folder: {target}")
    answer, seconds = run_with_progress(
        f"Transcribing {os.path.basename(audio)} with {model}",
        lambda: client.transcribe(model, audio, language=language,
                                  response_format=response_format, translate=translate),
        mode=progress_mode,
    )
    text = as_text(answer, response_format)
    if target is None:
        return TranscriptText(text)
    with open(target, "w", encoding="utf-8") as fh:
        fh.write(text if text.endswith("\n") else text + "\n")
    return Message(f"Wrote the {response_format} transcript of {os.path.basename(audio)} "
                   f"({len(text)} characters, {seconds:.1f} s) to {target}",
                   data={"path": target, "text": text, "seconds": seconds})
