"""One whisper.cpp model in this process, through the ``pywhispercpp`` wheel.

Blocking by nature (a load takes a while, a transcription seconds): :mod:`.whisper_server`
calls it from one worker thread, so requests run one at a time and never on the event loop.
"""

from __future__ import annotations

import math
import os
import re
import struct
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

from ..whisper_models import MAGIC
from .whisper_audio import SAMPLE_RATE
from .whisper_formats import Segment, Transcript


class ModelLoadFailed(RuntimeError):
    """whisper.cpp could not load the file (its log says why)."""


#: The magic and the eleven hyperparameters that open a whisper.cpp model file.
HEADER = struct.Struct("<I11i")
#: What whisper.cpp logs when a load returns NULL.
_LOAD_FAILED = re.compile(r"^.*(failed to (load|open|init|allocate)|ERROR).*$", re.M)
_NAMES = ("n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
          "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer", "n_mels")


def check_header(path: str) -> dict[str, int]:
    """The hyperparameters of the model at ``path``, checked before whisper.cpp sees them:
    its loader trusts them, and a file with a right magic and wrong sizes crashed the
    process (SIGSEGV) instead of failing. Raises ModelLoadFailed."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEADER.size)
    except OSError as exc:
        raise ModelLoadFailed(f"cannot read {path}: {exc}") from exc
    if len(head) < HEADER.size or HEADER.unpack(head)[0] != MAGIC:
        raise ModelLoadFailed(f"{path} is not a whisper.cpp ggml model (bad magic)")
    values = HEADER.unpack(head)[1:]
    params = dict(zip(_NAMES, values[:10]))
    params["ftype"] = values[10]
    bad = [k for k, v in params.items() if k != "ftype" and not 0 < v <= 1 << 20]
    if (bad or params["n_audio_state"] != params["n_text_state"]
            or params["n_audio_state"] % params["n_audio_head"]
            or params["n_text_state"] % params["n_text_head"]
            or not 0 <= params["ftype"] % 1000 < 64):
        raise ModelLoadFailed(f"{path} has impossible hyperparameters: {params}")
    return params


@dataclass(frozen=True)
class Decode:
    """The per-request choices, already checked."""

    language: str = "auto"  # a language code, or "auto"
    translate: bool = False
    temperature: float = 0.0
    prompt: str = ""


class WhisperModel:
    """A loaded ggml model and its decoding parameters."""

    def __init__(self, path: str, threads: int) -> None:
        from pywhispercpp.model import Model  # the wheel's library is loaded by engines only

        check_header(path)
        # pywhispercpp hands back a context object even when whisper.cpp returned NULL (and
        # the first call on it then crashes), so the load's own log is what tells: it is
        # caught in a file, copied to our output, and read for whisper.cpp's failure lines.
        fd, log_path = tempfile.mkstemp(prefix="whisper-load-", suffix=".log")
        os.close(fd)
        try:
            self._model = Model(path, n_threads=threads, print_progress=False,
                                print_realtime=False, print_timestamps=False,
                                redirect_whispercpp_logs_to=log_path,
                                # whisper-server's default (pywhispercpp's is 5)
                                greedy={"best_of": 2})
            with open(log_path, encoding="utf-8", errors="replace") as fh:
                load_log = fh.read(1 << 20)
        finally:
            os.unlink(log_path)
        sys.stderr.write(load_log)
        sys.stderr.flush()
        failed = _LOAD_FAILED.search(load_log)
        if failed:
            raise ModelLoadFailed(f"whisper.cpp could not load {path}: {failed.group(0)}")

    @staticmethod
    def known_language(code: str) -> bool:
        """Whether whisper.cpp knows the language code."""
        import _pywhispercpp as pw

        return int(pw.whisper_lang_id(code)) >= 0

    def transcribe(self, samples: np.ndarray, decode: Decode) -> Transcript:
        import _pywhispercpp as pw

        segments = self._model.transcribe(
            samples, language=decode.language, translate=decode.translate,
            temperature=decode.temperature, initial_prompt=decode.prompt,
            extract_probability=True)
        ctx = self._model._ctx
        out = []
        for i, s in enumerate(segments):
            tokens = tuple(int(pw.whisper_full_get_token_id(ctx, i, j))
                           for j in range(int(pw.whisper_full_n_tokens(ctx, i))))
            prob = float(s.probability) if s.probability is not None else math.nan
            out.append(Segment(start=s.t0 / 100.0, end=s.t1 / 100.0, text=s.text,
                               tokens=tokens, probability=prob))
        lang_id = int(pw.whisper_full_lang_id(ctx))
        language = pw.whisper_lang_str(lang_id) if lang_id >= 0 else decode.language
        return Transcript(task="translate" if decode.translate else "transcribe",
                          language=language or "", duration=len(samples) / SAMPLE_RATE,
                          segments=tuple(out), temperature=decode.temperature)
