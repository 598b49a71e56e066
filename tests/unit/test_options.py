"""Load options parsed at the API boundary: types, ranges, reserved llama-server flags; and the
one number validator they share with the settings and the server."""

from __future__ import annotations

import math

import pytest

from lemonade_jupyter.core.engine_flags import ROUTER_SET
from lemonade_jupyter.core.options import LoadOptions, parse_load_options
from lemonade_jupyter.core.settings import validate_setting
from lemonade_jupyter.core.validation import MAX_MAGNITUDE, check_bool, check_number
from lemonade_jupyter.errors import InvalidRequestError


def test_parse_keeps_given_and_ignores_request_keys():
    opts, given = parse_load_options({
        "model_name": "x", "model": "x", "pinned": True, "ctx_size": 4096,
        "llamacpp_args": "--threads 2 --flash-attn on", "auto_evict": False,
        "downsize_idle_timeout": 5, "evict_idle_timeout": 10.5, "evict_weight_factor": 2,
    })
    assert given == {"ctx_size", "llamacpp_args", "auto_evict", "downsize_idle_timeout",
                     "evict_idle_timeout", "evict_weight_factor"}
    assert opts == LoadOptions(ctx_size=4096, llamacpp_args="--threads 2 --flash-attn on",
                               auto_evict=False, downsize_idle_timeout=5.0,
                               evict_idle_timeout=10.5, evict_weight_factor=2.0)


def test_none_resets_to_default():
    opts, given = parse_load_options({"ctx_size": None, "llamacpp_args": None})
    assert given == {"ctx_size", "llamacpp_args"}
    assert opts.ctx_size is None and opts.llamacpp_args == ""


@pytest.mark.parametrize("flag", sorted(ROUTER_SET))
def test_reserved_flags_rejected(flag):
    with pytest.raises(InvalidRequestError) as info:
        parse_load_options({"llamacpp_args": f"--threads 2 {flag} 1"})
    assert info.value.param == "llamacpp_args"
    assert flag in info.value.message


def test_reserved_flag_with_equals_rejected():
    with pytest.raises(InvalidRequestError):
        parse_load_options({"llamacpp_args": "--port=9999"})


BAD = [
    ("ctx_size", "4096"),
    ("ctx_size", 4096.0),
    ("ctx_size", True),
    ("ctx_size", 8),
    ("ctx_size", 1 << 21),
    ("ctx_size", 63),
    ("ctx_size", 10**400),
    ("ctx_size", -(10**400)),
    ("llamacpp_args", ["--threads", "2"]),
    ("llamacpp_args", "--foo 'unterminated"),
    ("llamacpp_args", "x" * 5000),
    ("auto_evict", "yes"),
    ("auto_evict", 1),
    ("downsize_idle_timeout", -1),
    ("downsize_idle_timeout", "60"),
    ("downsize_idle_timeout", 10**400),
    ("downsize_idle_timeout", 1e13),
    ("evict_idle_timeout", float("nan")),
    ("evict_idle_timeout", float("-inf")),
    ("evict_weight_factor", 0),
    ("evict_weight_factor", -1),
    ("evict_weight_factor", False),
    ("evict_weight_factor", float("inf")),
    ("parallel", 0),
    ("parallel", 1.5),
    ("parallel", "2"),
    ("parallel", 257),
    ("max_queue", -2),
    ("max_queue", 0.5),
    ("max_queue", "3"),
    ("no_such_option", 1),
]


@pytest.mark.parametrize("key,value", BAD)
def test_bad_option_values_rejected(key, value):
    with pytest.raises(InvalidRequestError) as info:
        parse_load_options({key: value})
    assert info.value.status_code == 400
    assert info.value.param == key


def test_process_key_changes_only_with_process_options():
    base = LoadOptions(ctx_size=2048)
    evict_only = base.merged(LoadOptions(auto_evict=True), frozenset({"auto_evict"}))
    assert evict_only.process_key() == base.process_key()
    ctx = base.merged(LoadOptions(ctx_size=4096), frozenset({"ctx_size"}))
    assert ctx.process_key() != base.process_key()
    # fields that were not given are kept
    assert base.merged(LoadOptions(), frozenset()) == base


def test_parallel_is_a_process_option_and_max_queue_is_not():
    base = LoadOptions()
    opts, given = parse_load_options({"parallel": 2, "max_queue": 0})
    assert given == {"parallel", "max_queue"} and (opts.parallel, opts.max_queue) == (2, 0)
    assert base.merged(opts, frozenset({"parallel"})).process_key() != base.process_key()
    assert base.merged(opts, frozenset({"max_queue"})).process_key() == base.process_key()
    assert parse_load_options({"max_queue": -1})[0].max_queue == -1  # no bound for this model


def test_ctx_size_bounds_inclusive():
    assert parse_load_options({"ctx_size": 64})[0].ctx_size == 64
    assert parse_load_options({"ctx_size": 1 << 20})[0].ctx_size == 1 << 20
    assert type(parse_load_options({"ctx_size": 4096})[0].ctx_size) is int


EVICTION_SAMPLES = [0, 0.5, 1, 2, -1, -0.5, 1e12, 1e13, math.nan, math.inf, True, False, "1", None]


@pytest.mark.parametrize("key", ["auto_evict", "downsize_idle_timeout", "evict_idle_timeout",
                                 "evict_weight_factor"])
def test_eviction_options_follow_the_setting_they_override(key):
    """A per-model option accepts exactly what the router-wide setting of that name accepts."""
    for value in EVICTION_SAMPLES:
        if value is None:
            continue  # an option's None means "back to the default"
        try:
            expected = validate_setting(key, value)
        except InvalidRequestError:
            with pytest.raises(InvalidRequestError):
                parse_load_options({key: value})
        else:
            assert getattr(parse_load_options({key: value})[0], key) == expected


# ------------------------------------------------------------------- the number validator
def _message(key, value, **bounds):
    with pytest.raises(InvalidRequestError) as info:
        check_number(key, value, **bounds)
    assert info.value.status_code == 400
    assert info.value.param == key
    return info.value.message


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("integer", [False, True])
def test_bool_is_not_a_number(value, integer):
    message = _message("k", value, integer=integer)
    assert message == ("Parameter 'k' must be an integer" if integer
                       else "Parameter 'k' must be a number")


@pytest.mark.parametrize("value", ["1", None, [1], {"a": 1}, b"1", 1j])
def test_non_numbers_are_refused(value):
    assert _message("k", value) == "Parameter 'k' must be a number"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, MAX_MAGNITUDE * 1.0000001,
                                   -MAX_MAGNITUDE * 2, 10**13, 10**400, -(10**400)])
def test_non_finite_and_huge_are_refused(value):
    """Huge ints must not reach float() or math.isfinite() (OverflowError, a 500)."""
    message = _message("k", value)
    assert message == "Parameter 'k' must be a finite number between -1e12 and 1e12"
    with pytest.raises(InvalidRequestError):
        check_number("k", value, integer=isinstance(value, int))


def test_magnitude_limit_is_inclusive():
    assert check_number("k", MAX_MAGNITUDE) == 1e12
    assert check_number("k", -(10**12), integer=True) == -(10**12)
    assert _message("k", 10**12 + 1, integer=True).endswith("between -1e12 and 1e12")


def test_integer_mode():
    assert check_number("k", 3, integer=True) == 3
    assert type(check_number("k", 3, integer=True)) is int
    assert _message("k", 3.0, integer=True) == "Parameter 'k' must be an integer"
    assert type(check_number("k", 3)) is float


@pytest.mark.parametrize(
    "value,bounds,message",
    [
        (-1, {"minimum": 0}, ">= 0"),
        (0.09, {"minimum": 0.1}, ">= 0.1"),
        (0, {"minimum": 0, "exclusive_minimum": True}, "> 0"),
        (6, {"maximum": 5}, "<= 5"),
        (61, {"minimum": 0, "maximum": 60}, "between 0 and 60"),
        (-0.1, {"minimum": 0, "maximum": 60}, "between 0 and 60"),
        (0, {"minimum": 0, "maximum": 1, "exclusive_minimum": True}, "in (0, 1]"),
        (1.5, {"minimum": 0, "maximum": 1, "exclusive_minimum": True}, "in (0, 1]"),
        (63, {"minimum": 64, "maximum": 1 << 20, "integer": True}, "between 64 and 1048576"),
    ],
)
def test_bounds_messages(value, bounds, message):
    assert _message("k", value, **bounds) == f"Parameter 'k' must be {message}"


@pytest.mark.parametrize(
    "value,bounds",
    [
        (0, {"minimum": 0}),
        (60, {"minimum": 0, "maximum": 60}),
        (1, {"minimum": 0, "maximum": 1, "exclusive_minimum": True}),
        (1e-12, {"minimum": 0, "exclusive_minimum": True}),
        (-5, {}),
    ],
)
def test_bounds_accept(value, bounds):
    assert check_number("k", value, **bounds) == value


def test_check_bool():
    assert check_bool("b", True) is True and check_bool("b", False) is False
    for value in (0, 1, "true", None, 1.0):
        with pytest.raises(InvalidRequestError) as info:
            check_bool("b", value)
        assert info.value.message == "Parameter 'b' must be a boolean"
        assert info.value.param == "b"
