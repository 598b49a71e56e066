"""Ollama's ``keep_alive`` and ``options`` mapped onto load options and sampling fields
(``lemonade_jupyter/server/ollama_options.py``), as tables."""

from __future__ import annotations

import pytest

from lemonade_jupyter.errors import InvalidRequestError
from lemonade_jupyter.server.ollama_options import parse_keep_alive, parse_options


@pytest.mark.parametrize("value, seconds", [
    (None, None), (0, 0.0), ("0", 0.0), (300, 300.0), (2.5, 2.5), ("90", 90.0),
    ("5m", 300.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("500ms", 0.5), ("-1", -1.0),
    ("-1m", -60.0), (-1, -1.0), ("10s", 10.0),
])
def test_keep_alive_durations(value, seconds):
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "m", "", True, [], {}, float("inf"),
                                   "1d", "nan"])
def test_keep_alive_junk_is_refused(value):
    with pytest.raises(InvalidRequestError) as caught:
        parse_keep_alive(value)
    assert caught.value.param == "keep_alive"


def test_keep_alive_maps_onto_the_idle_timeouts():
    timed = parse_options(None, "10m")
    assert timed.load.auto_evict is True
    assert timed.load.evict_idle_timeout == timed.load.downsize_idle_timeout == 600
    assert timed.given == {"auto_evict", "evict_idle_timeout", "downsize_idle_timeout"}
    forever = parse_options(None, -1)
    assert forever.load.auto_evict is False and forever.given == {"auto_evict"}
    now = parse_options(None, 0)
    assert now.unload_after and not now.given
    assert not parse_options(None, None).given and not parse_options(None, None).unload_after


def test_options_map_onto_load_options_and_sampling_fields():
    opts = parse_options({"num_ctx": 2048, "num_gpu": 0, "temperature": 0.2, "top_k": 5,
                          "num_predict": 16, "stop": "\n", "seed": 7, "mirostat": None}, None)
    assert opts.load.ctx_size == 2048 and opts.load.gpu_layers == 0
    assert opts.given == {"ctx_size", "gpu_layers"}
    assert opts.sampling == {"temperature": 0.2, "top_k": 5, "max_tokens": 16,
                             "stop": ["\n"], "seed": 7}
    assert parse_options({"num_predict": -1}, None).sampling == {}  # no limit: the engine's
    # Embeddings: sampling options are accepted and dropped.
    assert parse_options({"temperature": 1}, None, sampling=False).sampling == {}


@pytest.mark.parametrize("options, param", [
    ({"num_thread": 4}, "options.num_thread"), ({"mirostat": 1}, "options.mirostat"),
    ({"temperature": "hot"}, "options.temperature"), ({"temperature": True},
                                                      "options.temperature"),
    ({"top_p": 2}, "options.top_p"), ({"num_ctx": 3}, "options.num_ctx"),
    ({"num_ctx": "4096"}, "options.num_ctx"), ({"stop": [1]}, "options.stop"),
    ({"stop": ["x"] * 17}, "options.stop"), ({"num_predict": 1.5}, "options.num_predict"),
    ("fast", "options"),
])
def test_anything_else_is_refused_naming_it(options, param):
    with pytest.raises(InvalidRequestError) as caught:
        parse_options(options, None)
    assert caught.value.param == param
