"""Load options parsed at the API boundary: types, ranges, reserved llama-server flags."""

from __future__ import annotations

import pytest

from lemonade_jupyter.core.options import RESERVED_FLAGS, LoadOptions, parse_load_options
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


@pytest.mark.parametrize("flag", sorted(RESERVED_FLAGS))
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
    ("llamacpp_args", ["--threads", "2"]),
    ("llamacpp_args", "--foo 'unterminated"),
    ("llamacpp_args", "x" * 5000),
    ("auto_evict", "yes"),
    ("auto_evict", 1),
    ("downsize_idle_timeout", -1),
    ("downsize_idle_timeout", "60"),
    ("evict_idle_timeout", float("nan")),
    ("evict_weight_factor", 0),
    ("evict_weight_factor", False),
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
