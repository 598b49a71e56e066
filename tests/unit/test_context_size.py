"""``ctx_size: auto`` (the default, also -1): the trained context from the header, capped to
the room but not below the floor; the option's validation."""

from __future__ import annotations

import pytest

from lemonade_jupyter.core.context_size import (
    AUTO_CTX_FLOOR, CTX_STEP, CPU_ROOM_FRACTION, auto_floor, cpu_room_bytes, is_auto,
    largest_fitting_context, requested_context, requested_label, trained_context,
)
from lemonade_jupyter.core.engines.llamacpp import DEFAULT_CTX_SIZE
from lemonade_jupyter.core.gguf_facts import GgufFacts
from lemonade_jupyter.core.options import MAX_CTX_SIZE, MIN_CTX_SIZE, parse_load_options
from lemonade_jupyter.errors import InvalidRequestError

FACTS = GgufFacts(architecture="llama", weights_bytes=100 << 20, n_layer=30, n_head_kv=3,
                  key_length=64, value_length=64, context_length=8192)


def test_trained_context_comes_from_the_header_within_bounds():
    assert trained_context(FACTS) == 8192
    assert trained_context(None) == DEFAULT_CTX_SIZE
    assert trained_context(GgufFacts("x", 1, 1, 1, 1, 1, 0)) == DEFAULT_CTX_SIZE
    assert trained_context(GgufFacts("x", 1, 1, 1, 1, 1, 1 << 24)) == MAX_CTX_SIZE
    assert requested_context(-1, FACTS) == 8192
    assert requested_context(None, FACTS) == 8192  # absent is auto
    assert requested_context(1024, FACTS) == 1024
    assert requested_context(None, None) == DEFAULT_CTX_SIZE


def test_auto_is_absent_or_minus_one_and_shows_as_auto():
    assert is_auto(None) and is_auto(-1) and not is_auto(2048)
    assert requested_label(None) == requested_label(-1) == "auto"
    assert requested_label(1024) == 1024


def test_auto_floor_is_2048_or_the_trained_context_when_smaller():
    assert AUTO_CTX_FLOOR == 2048
    assert auto_floor(8192) == 2048 and auto_floor(1024) == 1024
    small = GgufFacts("llama", 100 << 20, 30, 3, 64, 64, 1024)
    # A model trained with 1024 keeps 1024 even when nothing fits: the floor is its context.
    assert largest_fitting_context(small, 0, trained_context(small)) == 1024


def test_cpu_room_without_a_budget_is_half_the_available_memory():
    assert CPU_ROOM_FRACTION == 0.5
    assert cpu_room_bytes(8 << 30) == 4 << 30


def test_a_context_that_does_not_fit_is_capped_to_the_largest_that_does():
    assert largest_fitting_context(FACTS, FACTS.estimate_bytes(8192), 8192) == 8192
    per_cell = FACTS.kv_cache_bytes(1)
    room = FACTS.estimate_bytes(4096) + 100 * per_cell  # 4196 cells: rounded down
    capped = largest_fitting_context(FACTS, room, 8192)
    assert capped == 4096 and capped % CTX_STEP == 0
    assert FACTS.estimate_bytes(capped) <= room < FACTS.estimate_bytes(capped + CTX_STEP)
    # Room for 1024 cells only: never below the floor (the fit check then refuses it).
    assert largest_fitting_context(FACTS, FACTS.estimate_bytes(1024), 8192) == AUTO_CTX_FLOOR
    assert largest_fitting_context(FACTS, FACTS.estimate_bytes(0), 8192) == AUTO_CTX_FLOOR
    # Room above the floor: rounded down to a step, not pushed up to the floor.
    room = FACTS.estimate_bytes(2304) + 10 * per_cell
    assert largest_fitting_context(FACTS, room, 8192) == 2304


def test_ctx_size_option_takes_auto_and_minus_one_as_the_default_but_no_other_word():
    for auto in ("auto", -1, None):
        opts, given = parse_load_options({"ctx_size": auto})
        assert opts.ctx_size is None and given == {"ctx_size"}  # one value: no spurious reload
    assert parse_load_options({"ctx_size": MIN_CTX_SIZE})[0].ctx_size == MIN_CTX_SIZE
    for bad in (-2, 0, 63, MAX_CTX_SIZE + 1, True, -1.0, "-1", "AUTO", "auto ", "max", [],
                {"auto": 1}, "8192"):
        with pytest.raises(InvalidRequestError) as info:
            parse_load_options({"ctx_size": bad})
        assert '"auto"' in info.value.message and info.value.param == "ctx_size"
