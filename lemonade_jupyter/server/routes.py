"""The route table: every URL of the extension, relative to ``{base_url}lemonade/``."""

from __future__ import annotations

from typing import Any

from jupyter_server.utils import url_path_join

from ..api_paths import AUDIO_ROUTES, ROUTE_PREFIX
from . import aliases, audio, logs, model_detail, node_page, observe, ollama, ollama_models, pull, rest
from .engine_routes import PROXIED
from .proxy import OpenAIProxyHandler

#: (path under lemonade/, handler, init kwargs). Every handler here requires Jupyter auth;
#: ``tests/server/test_security.py`` walks this table to prove it.
ROUTES: list[tuple[str, type, dict[str, Any]]] = [
    ("api/v1/health", rest.HealthHandler, {}),
    ("api/v1/models", rest.ModelsHandler, {}),
    ("api/v1/models/(?P<model>[^/]+)", model_detail.ModelDetailHandler, {}),
    ("api/v1/load", rest.LoadHandler, {}),
    ("api/v1/unload", rest.UnloadHandler, {}),
    ("api/v1/pull", pull.PullHandler, {}),
    ("api/v1/pull/cancel", pull.PullCancelHandler, {}),
    ("api/v1/delete", rest.DeleteHandler, {}),
    ("api/v1/alias", aliases.AliasHandler, {}),
    ("api/v1/alias/remove", aliases.AliasRemoveHandler, {}),
    ("internal/pin", rest.PinHandler, {}),
    ("internal/config", rest.ConfigHandler, {}),
    ("internal/set", rest.SetHandler, {}),
    ("internal/simulate-vram-pressure", observe.SimulatePressureHandler, {}),
    ("api/v1/events", observe.EventsHandler, {}),
    ("api/v1/logs/(?P<model>[^/]+)", logs.LogsHandler, {}),
    ("api/v1/memory/history", observe.MemoryHistoryHandler, {}),
    ("metrics", observe.MetricsHandler, {}),
    ("api/v1/stats", observe.StatsHandler, {}),
    # The router's page for people (node_page.py): the above, read by a browser.
    ("page", node_page.RouterPageHandler, {}),
    # Ollama's API (ollama.py, ollama_models.py): ollama.Client(host=".../lemonade/ollama").
    ("ollama/api/chat", ollama.ChatHandler, {}),
    ("ollama/api/generate", ollama.GenerateHandler, {}),
    ("ollama/api/embed", ollama.EmbedHandler, {}),
    ("ollama/api/embeddings", ollama.EmbedHandler, {"legacy": True}),
    ("ollama/api/tags", ollama_models.TagsHandler, {}),
    ("ollama/api/ps", ollama_models.PsHandler, {}),
    ("ollama/api/show", ollama_models.ShowHandler, {}),
    ("ollama/api/pull", ollama_models.PullHandler, {}),
    ("ollama/api/delete", ollama_models.DeleteHandler, {}),
    ("ollama/api/version", ollama_models.VersionHandler, {}),
    # The engine's inference routes, one handler (engine_routes.py says how each behaves).
    *((f"api/v1/{path}", OpenAIProxyHandler, {"route": route})
      for path, route in PROXIED.items()),
    # OpenAI's audio routes, served by a transcription model (audio.py).
    *((f"api/v1/{path}", audio.AudioHandler, {"translate": translate})
      for path, translate in AUDIO_ROUTES.items()),
]


def handlers(base_url: str = "/") -> list[tuple[str, type, dict[str, Any]]]:
    """Tornado handler specs with absolute paths under ``base_url``."""
    return [(url_path_join(base_url, ROUTE_PREFIX, path), cls, kw) for path, cls, kw in ROUTES]
