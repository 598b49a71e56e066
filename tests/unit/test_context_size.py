"""``ctx_size: -1``: the trained context from the header, capped to the room; the option's
validation."""

from __future__ import annotations

import pytest

from lemonade_jupyter.core.context_size import (
    CTX_STEP, largest_fitting_context, requested_context, trained_context,
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
    assert requested_context(None, FACTS) == DEFAULT_CTX_SIZE
    assert requested_context(1024, FACTS) == 1024


def test_a_context_that_does_not_fit_is_capped_to_the_largest_that_does():
    assert largest_fitting_context(FACTS, FACTS.estimate_bytes(8192), 8192) == 8192
    per_cell = FACTS.kv_cache_bytes(1)
    room = FACTS.estimate_bytes(4096) + 100 * per_cell  # 4196 cells: rounded down
    capped = largest_fitting_context(FACTS, room, 8192)
    assert capped == 4096 and capped % CTX_STEP == 0
    assert FACTS.estimate_bytes(capped) <= room < FACTS.estimate_bytes(capped + CTX_STEP)
    # Not even the smallest context fits: the smallest, and the fit check refuses it.
    assert largest_fitting_context(FACTS, FACTS.estimate_bytes(0), 8192) == MIN_CTX_SIZE


def test_ctx_size_option_takes_minus_one_but_no_other_negative():
    assert parse_load_options({"ctx_size": -1})[0].ctx_size == -1
    for bad in (-2, 0, 63, MAX_CTX_SIZE + 1, True, -1.0, "-1"):
        with pytest.raises(InvalidRequestError) as info:
            parse_load_options({"ctx_size": bad})
        assert "-1" in info.value.message and info.value.param == "ctx_size"
