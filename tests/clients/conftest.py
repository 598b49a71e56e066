"""Fixtures of the client tests: the in-process Jupyter server of ``tests/server``."""

from __future__ import annotations

from tests.server.conftest import (  # noqa: F401 - fixtures shared with the server tests
    api, jp_server_config, lemonade, lemonade_data_dir, lemonade_traits, server_url, token,
)
