"""Settings: the one table (router and server rows), the dataclasses, ``/internal/set``
validation, the ``c.LemonadeApp`` traits generated from it, and a default taken from the
environment."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
from traitlets import Bool, Float, Int, List, TraitError, Unicode
from traitlets.config import Config

from lemonade_jupyter.core.settings import (
    MAX_EVICTION_GRACE_S,
    MAX_TEXT_CHARS,
    PERSISTED_KEYS,
    ROUTER,
    ROUTER_SETTINGS,
    RUNTIME_KEYS,
    SERVER,
    SERVER_SETTINGS,
    SETTINGS,
    RouterSettings,
    ServerOptions,
    Setting,
    check_value,
    validate_setting,
)
from lemonade_jupyter.errors import InvalidRequestError

VALID = [
    ("max_loaded_models", 1, 1),
    ("max_loaded_models", 7, 7),
    ("max_loaded_models", -1, -1),
    ("max_loaded_models", 1_000_000, 1_000_000),
    ("auto_evict", True, True),
    ("restore_on_start", False, False),
    ("auto_evict_threshold_pct", 1, 1.0),
    ("auto_evict_threshold_pct", 0.5, 0.5),
    ("auto_evict_threshold_pct", 1e-9, 1e-9),
    ("evict_weight_factor", 2, 2.0),
    ("downsize_idle_timeout", 0, 0.0),
    ("evict_idle_timeout", 30.5, 30.5),
    ("memory_sample_interval_s", 0.1, 0.1),
    ("eviction_interval_s", 0.1, 0.1),
    ("eviction_grace_s", 0, 0.0),
    ("eviction_grace_s", 60, 60.0),
    ("default_n_predict", -1, -1),
    ("default_n_predict", 1, 1),
    ("default_n_predict", 2**31 - 1, 2**31 - 1),
    ("backend_log_max_mib", 1, 1),
    ("backend_log_max_mib", 1024, 1024),
]

INVALID = [
    ("max_loaded_models", 0),
    ("max_loaded_models", -2),
    ("max_loaded_models", -100),
    ("max_loaded_models", 1_000_001),
    ("max_loaded_models", True),  # bool is an int subclass; still not a count
    ("max_loaded_models", 1.0),
    ("max_loaded_models", -1.0),
    ("max_loaded_models", "2"),
    ("max_loaded_models", None),
    ("max_loaded_models", 10**400),
    ("auto_evict", 1),
    ("auto_evict", "true"),
    ("restore_on_start", 0),
    ("auto_evict_threshold_pct", 0),
    ("auto_evict_threshold_pct", -0.1),
    ("auto_evict_threshold_pct", 1.01),
    ("auto_evict_threshold_pct", True),
    ("auto_evict_threshold_pct", math.nan),
    ("auto_evict_threshold_pct", "0.5"),
    ("evict_weight_factor", 0),
    ("evict_weight_factor", math.inf),
    ("downsize_idle_timeout", -1),
    ("downsize_idle_timeout", 10**400),
    ("evict_idle_timeout", 1e13),
    ("memory_sample_interval_s", 0.01),
    ("eviction_interval_s", 0.09),
    ("eviction_grace_s", -0.1),
    ("eviction_grace_s", 60.5),
    ("eviction_grace_s", 1e11),
    ("default_n_predict", 0),
    ("default_n_predict", -2),
    ("default_n_predict", 1.5),
    ("default_n_predict", 2**31),
    ("backend_log_max_mib", 0),
    ("backend_log_max_mib", 0.5),
    ("backend_log_max_mib", -1),
    ("no_such_key", 1),
    ("ready_timeout_s", 5),  # start-up only
    ("crash_loop_window_s", 5.0),  # start-up only
]


@pytest.mark.parametrize("key,value,expected", VALID)
def test_validate_setting_accepts(key, value, expected):
    checked = validate_setting(key, value)
    assert checked == expected
    assert type(checked) is type(expected)


@pytest.mark.parametrize("key,value", INVALID)
def test_validate_setting_rejects(key, value):
    with pytest.raises(InvalidRequestError) as info:
        validate_setting(key, value)
    assert info.value.status_code == 400
    assert info.value.param == key


def test_messages_kept_verbatim():
    """Clients and the kernel's magics show these; the first one is matched by tests too."""
    expected = {
        ("max_loaded_models", 0): "max_loaded_models must be a positive integer or -1 (unlimited)",
        ("max_loaded_models", "2"):
            "max_loaded_models must be a positive integer or -1 (unlimited)",
        ("auto_evict", 1): "Parameter 'auto_evict' must be a boolean",
        ("auto_evict_threshold_pct", 2): "Parameter 'auto_evict_threshold_pct' must be in (0, 1]",
        ("evict_weight_factor", 0): "Parameter 'evict_weight_factor' must be > 0",
        ("eviction_grace_s", 61): "Parameter 'eviction_grace_s' must be between 0 and 60",
        ("memory_sample_interval_s", 0): "Parameter 'memory_sample_interval_s' must be >= 0.1",
        ("downsize_idle_timeout", -1): "Parameter 'downsize_idle_timeout' must be >= 0",
        ("downsize_idle_timeout", "1"): "Parameter 'downsize_idle_timeout' must be a number",
    }
    for (key, value), message in expected.items():
        with pytest.raises(InvalidRequestError) as info:
            validate_setting(key, value)
        assert info.value.message == message
    with pytest.raises(InvalidRequestError, match="^Unknown config key 'nope'; settable keys: "):
        validate_setting("nope", 1)


def test_with_updates_is_all_or_nothing():
    before = RouterSettings()
    with pytest.raises(InvalidRequestError):
        before.with_updates({"max_loaded_models": 3, "auto_evict_threshold_pct": 2})
    assert before.max_loaded_models == 1
    after = before.with_updates({"max_loaded_models": 3, "auto_evict": True})
    assert (after.max_loaded_models, after.auto_evict) == (3, True)
    assert before.max_loaded_models == 1  # frozen: replaced, not mutated
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.max_loaded_models = 2  # type: ignore[misc]


# ---------------------------------------------------------------------------- the table
@pytest.fixture
def no_env_defaults(monkeypatch):
    """The table's own defaults: no variable that a row takes its default from is set."""
    for s in SETTINGS:
        if s.env:
            monkeypatch.delenv(s.env, raising=False)


def test_table_is_the_dataclasses(no_env_defaults):
    """One field per row, in order, with the row's default; nothing else: the router rows make
    RouterSettings, the server rows ServerOptions, and every row is one or the other."""
    assert [f.name for f in dataclasses.fields(RouterSettings)] == [
        s.name for s in SETTINGS if s.scope == ROUTER]
    assert [f.name for f in dataclasses.fields(ServerOptions)] == [
        s.name for s in SETTINGS if s.scope == SERVER]
    assert ROUTER_SETTINGS + SERVER_SETTINGS == tuple(
        sorted(SETTINGS, key=lambda s: s.scope != ROUTER))
    defaults, options = RouterSettings(), ServerOptions()
    for s in SETTINGS:
        assert getattr(options if s.scope == SERVER else defaults, s.name) == s.default, s.name
    assert RouterSettings().to_json() == {s.name: s.default for s in ROUTER_SETTINGS}
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)


def test_server_rows_hold_the_options_of_the_http_side():
    assert {s.name for s in SERVER_SETTINGS} >= {
        "llama_server_path", "data_dir", "remote_ca_bundle", "sse_ping_interval_s",
        "stream_loading_state"}
    for s in SERVER_SETTINGS:  # read once at start, by the HTTP side
        assert not s.runtime and not s.persisted, s.name


def test_table_rows_are_consistent():
    for s in SETTINGS:
        assert s.type in (bool, int, float, str, tuple), s.name  # tuple: a list of strings
        assert s.scope in (ROUTER, SERVER), s.name
        assert s.help.strip(), s.name
        if s.type is bool:
            assert s.minimum is None and s.maximum is None, s.name
        else:  # every default passes its own check (as a config value)
            assert s.check_config(s.config_default) == s.config_default, s.name


def test_derived_key_sets():
    assert RUNTIME_KEYS == tuple(s.name for s in SETTINGS if s.runtime)
    assert PERSISTED_KEYS == (
        "max_loaded_models", "auto_evict", "auto_evict_threshold_pct", "max_queue",
        "restore_on_start", "memory_budget_mib", "node_max_pins_per_user",
        "node_max_pinned_mib_per_user", "node_max_requests_per_user",
    )
    # A persisted value is restored through with_updates(), which takes runtime keys only.
    assert set(PERSISTED_KEYS) <= set(RUNTIME_KEYS)
    assert set(RUNTIME_KEYS) <= set(RouterSettings().to_json())


def test_known_defaults_and_bounds(no_env_defaults):
    defaults = RouterSettings()
    assert defaults.max_loaded_models == 1 and defaults.backend_threads is None
    assert defaults.crash_loop_window_s == 60.0
    assert "crash_loop_window_s" not in RUNTIME_KEYS
    assert MAX_EVICTION_GRACE_S == 60.0
    assert validate_setting("eviction_grace_s", MAX_EVICTION_GRACE_S) == 60.0


def _bad_values(s: Setting) -> list[object]:
    """Values the row must refuse: wrong types, non-finite, too large, out of bounds."""
    # None unsets a nullable setting (one with a config stand-in for None): valid there.
    bad: list[object] = ["1", [1], {"v": 1}] + ([] if s.none_as is not None else [None])
    if s.type is bool:
        return bad + [1, 0]
    bad += [True, False, math.nan, math.inf, -math.inf, 1e13, 10**400, -(10**400)]
    if s.type is int:
        bad.append(float(s.config_default))
    if s.minimum is not None:
        bad.append(s.minimum if s.exclusive_minimum else s.minimum - 0.01)
        if s.type is int:
            bad.append(int(s.minimum) - 1)
    if s.maximum is not None:
        bad.append(s.maximum + 0.01)
        if s.type is int:
            bad.append(int(s.maximum) + 1)
    return [v for v in bad if not (type(v) is int and v == s.special)]


RUNTIME_BAD = [
    (s.name, value) for s in SETTINGS if s.runtime for value in _bad_values(s)
]


@pytest.mark.parametrize("key,value", RUNTIME_BAD)
def test_every_runtime_key_rejects_bad_values_and_changes_nothing(key, value):
    before = RouterSettings()
    with pytest.raises(InvalidRequestError) as info:
        before.with_updates({"auto_evict": True, key: value})
    assert info.value.status_code == 400
    assert info.value.error_type == "invalid_request_error"
    assert info.value.param == key
    assert before == RouterSettings()


# ------------------------------------------------------------------- the LemonadeApp traits
# Imported in the tests, not at module level: the server app pulls in the whole router.
def _app_class():
    from lemonade_jupyter.server.app import LemonadeApp

    return LemonadeApp


_TRAIT_TYPES = {bool: Bool, int: Int, float: Float, str: Unicode, tuple: List}


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_a_configurable_trait(setting, no_env_defaults):
    app_class = _app_class()
    trait = app_class.class_traits(config=True).get(setting.name)
    assert trait is not None, f"c.LemonadeApp.{setting.name} is missing"
    assert type(trait) is _TRAIT_TYPES[setting.type]
    assert trait.default() == setting.config_default
    assert trait.help == setting.help
    assert getattr(app_class(), setting.name) == setting.config_default
    assert f"LemonadeApp.{setting.name}=" in app_class.class_get_help()


def test_every_trait_is_a_setting():
    """No option of the extension lives outside the table."""
    assert set(_app_class().class_own_traits(config=True)) == {s.name for s in SETTINGS}


def _other_value(s: Setting) -> object:
    """A valid config value different from the default."""
    if s.type is bool:
        return not s.default
    if s.type is tuple:  # a list of strings; "x" is a host name and a variable name
        return ["/x"] if s.name == "node_model_folders" else ["x"]  # that one takes paths
    if s.type is str:
        return "/x"
    if s.type is int:
        return s.config_default + 2
    if s.default is None:
        return (s.minimum or 0) + 100.0
    if s.maximum is not None:
        value = (s.maximum + (s.minimum or 0)) / 3
    else:
        value = s.default * 2 + 0.5
    assert value != s.default and s.check(value) == value
    return value


def test_router_settings_and_server_options_carry_every_trait_value(no_env_defaults):
    values = {s.name: _other_value(s) for s in SETTINGS}
    app = _app_class()(config=Config({"LemonadeApp": values}))
    settings, options = app.router_settings(), app.server_options()
    assert isinstance(settings, RouterSettings) and isinstance(options, ServerOptions)
    defaults, default_options = RouterSettings(), ServerOptions()
    for s in SETTINGS:
        got, default = ((options, default_options) if s.scope == SERVER
                        else (settings, defaults))
        value = values[s.name]
        assert getattr(got, s.name) == (tuple(value) if s.type is tuple else value), s.name
        assert getattr(got, s.name) != getattr(default, s.name), s.name


def test_router_settings_backend_threads_zero_is_none(no_env_defaults):
    app_class = _app_class()
    assert app_class().router_settings().backend_threads is None
    assert app_class(backend_threads=3).router_settings().backend_threads == 3
    assert app_class().router_settings() == RouterSettings()
    assert app_class().server_options() == ServerOptions()


@pytest.mark.parametrize("value", [3, "a\nb", "a\0b", "/" * (MAX_TEXT_CHARS + 1)])
def test_text_settings_take_one_line_of_text(value):
    for s in SERVER_SETTINGS:
        if s.type is str:
            with pytest.raises(InvalidRequestError, match=s.name):
                check_value(s.name, value)
            with pytest.raises(TraitError, match=s.name):  # the trait itself refuses a number
                _app_class()(config=Config({"LemonadeApp": {s.name: value}}))


# ------------------------------------------------------ a default from the environment
def test_backend_threads_default_comes_from_its_variable(monkeypatch):
    monkeypatch.setenv("LEMONADE_BACKEND_THREADS", "3")
    assert RouterSettings().backend_threads == 3
    assert RouterSettings(max_queue=2).backend_threads == 3
    app_class = _app_class()
    assert app_class().backend_threads == 3
    assert app_class().router_settings().backend_threads == 3
    # A config value wins, 0 (every core) included.
    assert app_class(backend_threads=2).router_settings().backend_threads == 2
    app = app_class(config=Config({"LemonadeApp": {"backend_threads": 0}}))
    assert app.router_settings().backend_threads is None
    monkeypatch.setenv("LEMONADE_BACKEND_THREADS", "0")
    assert RouterSettings().backend_threads is None
    monkeypatch.setenv("LEMONADE_BACKEND_THREADS", " ")
    assert RouterSettings().backend_threads is None


@pytest.mark.parametrize("raw", ["many", "-1", "1.5", "1e3", "99999999999999999999999"])
def test_a_bad_variable_is_refused_naming_it(monkeypatch, raw):
    monkeypatch.setenv("LEMONADE_BACKEND_THREADS", raw)
    with pytest.raises(InvalidRequestError, match=r"^\$LEMONADE_BACKEND_THREADS=.* is not a "
                       "valid backend_threads"):
        RouterSettings()
    with pytest.raises(TraitError, match=r"^c.LemonadeApp.backend_threads: "
                       r"\$LEMONADE_BACKEND_THREADS="):
        _app_class()().backend_threads  # noqa: B018 - the dynamic default reads it


def test_each_variable_of_a_default_is_read_in_one_place():
    """Only the settings table names, as a string, a variable that gives a setting its
    default: nothing else reads it."""
    from tests.helpers import REPO

    for s in SETTINGS:
        if s.env:
            readers = sorted(
                str(p.relative_to(REPO)) for p in (REPO / "lemonade_jupyter").rglob("*.py")
                if re.search(rf"[\"']{s.env}[\"']", p.read_text(encoding="utf-8"))
                and p.name != "settings.py")
            assert readers == [], f"{s.env} is read outside core/settings.py: {readers}"


NUMBER_SETTINGS = [s for s in SETTINGS if s.type not in (bool, tuple, str)]


@pytest.mark.parametrize("setting", NUMBER_SETTINGS, ids=lambda s: s.name)
def test_bad_config_value_is_a_trait_error_naming_the_trait(setting):
    # Values the trait type itself lets through (an Int trait refuses a float on its own).
    if setting.type is int:
        bad = [v for v in _bad_values(setting) if type(v) is int]
    else:
        bad = [v for v in _bad_values(setting)
               if type(v) is float or (type(v) is int and abs(v) < 1e300)]
    bad = [v for v in bad if v != setting.none_as]  # the config stand-in for "unset"
    assert len(bad) >= 2
    app_class = _app_class()
    for value in bad:
        with pytest.raises(TraitError, match=f"^c.LemonadeApp.{setting.name}: "):
            app_class(config=Config({"LemonadeApp": {setting.name: value}}))


def test_memory_budget_is_unset_by_default_and_null_unsets_it():
    assert RouterSettings().memory_budget_mib is None
    budget = RouterSettings().with_updates({"memory_budget_mib": 256})
    assert budget.memory_budget_mib == 256
    assert budget.with_updates({"memory_budget_mib": None}).memory_budget_mib is None
    with pytest.raises(InvalidRequestError):
        budget.with_updates({"memory_budget_mib": 0})
