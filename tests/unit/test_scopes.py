"""The route -> scope table of node mode covers every route, and closes what it does not know."""

from __future__ import annotations

import pytest

from lemonade_jupyter.server.routes import ROUTES
from lemonade_jupyter.server.scopes import (
    ADMIN, PIN, ROUTE_SCOPES, USE, has_scope, route_scope,
)


def test_scopes_table_lists_every_route():
    assert {path for path, _cls, _kw in ROUTES} == set(ROUTE_SCOPES)


@pytest.mark.parametrize(("route", "scope"), [
    ("api/v1/health", USE),
    ("api/v1/chat/completions", USE),
    ("api/v1/audio/transcriptions", USE),
    ("api/v1/audio/translations", USE),
    ("api/v1/logs/user.b", USE),
    ("internal/pin", PIN),
    ("internal/set", ADMIN),
    ("api/v1/pull/cancel", ADMIN),
    ("api/v1/no-such-route", ADMIN),  # closed by default
    ("api/v1/logs/a/b", ADMIN),
])
def test_scopes_route_scope(route, scope):
    assert route_scope(route) == scope


def test_scopes_reading_aliases_is_use_and_changing_them_admin():
    assert route_scope("api/v1/alias", "GET") == USE
    assert route_scope("api/v1/alias", "POST") == ADMIN
    assert route_scope("api/v1/alias", "DELETE") == ADMIN


def test_scopes_admin_holds_every_scope_and_nothing_else_does():
    assert has_scope(frozenset({ADMIN}), PIN) and has_scope(frozenset({ADMIN}), USE)
    assert not has_scope(frozenset({USE}), PIN)
    assert not has_scope(frozenset({PIN, USE}), ADMIN)
    assert not has_scope(frozenset({"access:services"}), USE)


def test_scopes_audio_routes_count_as_inference_requests():
    """Node mode's quota of requests in flight per user counts transcriptions like chats."""
    from lemonade_jupyter.server.node_access import is_inference

    for route in ("api/v1/audio/transcriptions", "api/v1/audio/translations",
                  "api/v1/chat/completions"):
        assert is_inference(route, "POST"), route
    assert not is_inference("api/v1/audio/transcriptions", "GET")
