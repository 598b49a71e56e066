"""Router settings: the one table, the dataclass, ``/internal/set`` validation and the
``c.LemonadeApp`` traits generated from it."""

from __future__ import annotations

import dataclasses
import math

import pytest
from traitlets import Bool, Float, Int, List, TraitError
from traitlets.config import Config

from lemonade_jupyter.core.settings import (
    MAX_EVICTION_GRACE_S,
    PERSISTED_KEYS,
    RUNTIME_KEYS,
    SETTINGS,
    RouterSettings,
    Setting,
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
def test_table_is_the_dataclass():
    """One field per row, in order, with the row's default; nothing else."""
    fields = dataclasses.fields(RouterSettings)
    assert [f.name for f in fields] == [s.name for s in SETTINGS]
    defaults = RouterSettings()
    for s in SETTINGS:
        assert getattr(defaults, s.name) == s.default, s.name
    assert RouterSettings().to_json() == {s.name: s.default for s in SETTINGS}
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)


def test_table_rows_are_consistent():
    for s in SETTINGS:
        assert s.type in (bool, int, float, tuple), s.name  # tuple: a list of strings
        assert s.help.strip(), s.name
        if s.type is bool:
            assert s.minimum is None and s.maximum is None, s.name
        else:  # every default passes its own check (as a config value)
            assert s.check_config(s.config_default) == s.config_default, s.name


def test_derived_key_sets():
    assert RUNTIME_KEYS == tuple(s.name for s in SETTINGS if s.runtime)
    assert PERSISTED_KEYS == (
        "max_loaded_models", "auto_evict", "auto_evict_threshold_pct", "max_queue",
        "restore_on_start", "memory_budget_mib",
    )
    # A persisted value is restored through with_updates(), which takes runtime keys only.
    assert set(PERSISTED_KEYS) <= set(RUNTIME_KEYS)
    assert set(RUNTIME_KEYS) <= set(RouterSettings().to_json())


def test_known_defaults_and_bounds():
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


_TRAIT_TYPES = {bool: Bool, int: Int, float: Float, tuple: List}


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_every_setting_is_a_configurable_trait(setting):
    app_class = _app_class()
    trait = app_class.class_traits(config=True).get(setting.name)
    assert trait is not None, f"c.LemonadeApp.{setting.name} is missing"
    assert type(trait) is _TRAIT_TYPES[setting.type]
    assert trait.default() == setting.config_default
    assert trait.help == setting.help
    assert getattr(app_class(), setting.name) == setting.config_default
    assert f"LemonadeApp.{setting.name}=" in app_class.class_get_help()


def test_traits_that_are_not_settings_stay():
    traits = _app_class().class_traits(config=True)
    for name in ("llama_server_path", "data_dir", "sse_ping_interval_s"):
        assert name in traits and traits[name].help
        assert not hasattr(RouterSettings(), name)


def _other_value(s: Setting) -> object:
    """A valid config value different from the default."""
    if s.type is bool:
        return not s.default
    if s.type is tuple:  # a list of strings; "x" is a host name and a variable name
        return ["/x"] if s.name == "node_model_folders" else ["x"]  # that one takes paths
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


def test_router_settings_carries_every_trait_value():
    values = {s.name: _other_value(s) for s in SETTINGS}
    app = _app_class()(config=Config({"LemonadeApp": values}))
    settings = app.router_settings()
    assert isinstance(settings, RouterSettings)
    defaults = RouterSettings()
    for s in SETTINGS:
        value = values[s.name]
        assert getattr(settings, s.name) == (tuple(value) if s.type is tuple else value), s.name
        assert getattr(settings, s.name) != getattr(defaults, s.name), s.name


def test_router_settings_backend_threads_zero_is_none():
    app_class = _app_class()
    assert app_class().router_settings().backend_threads is None
    assert app_class(backend_threads=3).router_settings().backend_threads == 3
    assert app_class().router_settings() == RouterSettings()


NUMBER_SETTINGS = [s for s in SETTINGS if s.type not in (bool, tuple)]


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
