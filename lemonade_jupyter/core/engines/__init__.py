"""Engines ("recipes"): which backend binary runs, its command line, and how to get one.

* :mod:`.lookup`: which engine the router starts (the order and why), and what ``/health``
  reports about it;
* :mod:`.llamacpp`: llama-server's command line;
* :mod:`.prebuilt_server`: the prebuilt engine (xllamacpp) behind llama-server's command line;
* :mod:`.install`, :mod:`.gpu`, :mod:`.progress`: the native build, per flavour.
* :mod:`.whispercpp`: the ``whispercpp`` recipe (transcription models): which whisper engine,
  and the command line of :mod:`.whisper_server` (``lemonade-whisper-server``), which serves
  whisper-server's API through :mod:`.whisper_model` (pywhispercpp) or, with the key in
  front, a native ``whisper-server`` (:mod:`.whisper_native`, built by
  :mod:`.whisper_install`); :mod:`.whisper_request`, :mod:`.whisper_audio` and
  :mod:`.whisper_formats` check a request, read its WAV and shape its answer.

The names below are imported on first use, so that the prebuilt engine's process
(``python -m lemonade_jupyter.core.engines.prebuilt_server``) does not import the router's
modules before it starts serving.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EngineInfo", "LlamaCppEngine", "find_engine", "find_llama_server"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import llamacpp

        return getattr(llamacpp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
