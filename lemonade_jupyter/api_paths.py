"""Where the extension's HTTP API lives, relative to a Jupyter server's ``base_url``.

A leaf module with no imports, so that every side builds its URLs from it: the server's route
table, the kernel's client, the quickstart and the benchmarks.
"""

from __future__ import annotations

#: Every route of the extension is under ``{base_url}lemonade/``.
ROUTE_PREFIX = "lemonade/"

#: The OpenAI-compatible API and the model management routes (no trailing slash: an OpenAI
#: client's ``base_url``).
API_V1 = ROUTE_PREFIX + "api/v1"

#: OpenAI's audio routes under ``API_V1`` (multipart uploads to a transcription model), and
#: whether each one asks the engine to translate into English.
AUDIO_ROUTES = {"audio/transcriptions": False, "audio/translations": True}
