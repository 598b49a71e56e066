"""Runtime settings validation (``/internal/set``): bad values are refused, nothing changes."""

from __future__ import annotations

import math

import pytest

from lemonade_jupyter.core.settings import RUNTIME_KEYS, RouterSettings, validate_setting
from lemonade_jupyter.errors import InvalidRequestError

VALID = [
    ("max_loaded_models", 1, 1),
    ("max_loaded_models", 7, 7),
    ("max_loaded_models", -1, -1),
    ("auto_evict", True, True),
    ("restore_on_start", False, False),
    ("auto_evict_threshold_pct", 1, 1.0),
    ("auto_evict_threshold_pct", 0.5, 0.5),
    ("auto_evict_threshold_pct", 1e-9, 1e-9),
    ("evict_weight_factor", 2, 2.0),
    ("downsize_idle_timeout", 0, 0.0),
    ("evict_idle_timeout", 30.5, 30.5),
    ("memory_sample_interval_s", 0.1, 0.1),
    ("eviction_grace_s", 0, 0.0),
    ("eviction_grace_s", 60, 60.0),
]

INVALID = [
    ("max_loaded_models", 0),
    ("max_loaded_models", -2),
    ("max_loaded_models", -100),
    ("max_loaded_models", True),  # bool is an int subclass; still not a count
    ("max_loaded_models", 1.0),
    ("max_loaded_models", "2"),
    ("max_loaded_models", None),
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
    ("memory_sample_interval_s", 0.01),
    ("eviction_grace_s", -0.1),
    ("eviction_grace_s", 60.5),
    ("eviction_grace_s", 1e11),
    ("no_such_key", 1),
    ("ready_timeout_s", 5),  # start-up only
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


def test_with_updates_is_all_or_nothing():
    before = RouterSettings()
    with pytest.raises(InvalidRequestError):
        before.with_updates({"max_loaded_models": 3, "auto_evict_threshold_pct": 2})
    assert before.max_loaded_models == 1
    after = before.with_updates({"max_loaded_models": 3, "auto_evict": True})
    assert (after.max_loaded_models, after.auto_evict) == (3, True)
    assert before.max_loaded_models == 1  # frozen: replaced, not mutated


def test_runtime_keys_are_settings():
    fields = set(RouterSettings().to_json())
    assert set(RUNTIME_KEYS) <= fields
