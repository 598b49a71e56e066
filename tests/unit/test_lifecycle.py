"""The model lifecycle: the table of allowed moves, the one writer, derived in_use."""

from __future__ import annotations

import asyncio
import logging

import pytest

from lemonade_jupyter.core import lifecycle
from lemonade_jupyter.core.catalog import ModelSpec
from lemonade_jupyter.core.lifecycle import ALLOWED, ChangeSignal, ModelState
from lemonade_jupyter.core.live_model import LiveModel
from lemonade_jupyter.core.options import LoadOptions
from lemonade_jupyter.core.preferences import ModelPreferences

S = ModelState
#: Every move the router makes, written out by hand (the table must allow exactly these).
EXPECTED_MOVES = {
    (S.LOADING, S.READY), (S.LOADING, S.UNLOADED),
    (S.READY, S.LOADING), (S.READY, S.DOWNSIZING), (S.READY, S.EVICTING),
    (S.READY, S.UNLOADED),
    (S.DOWNSIZING, S.DOWNSIZED), (S.DOWNSIZING, S.UNLOADED),
    (S.DOWNSIZED, S.LOADING), (S.DOWNSIZED, S.EVICTING), (S.DOWNSIZED, S.UNLOADED),
    (S.EVICTING, S.UNLOADED),
}
STORED = [s for s in ModelState if s is not S.IN_USE]


def model(prefs: ModelPreferences | None = None, changes: ChangeSignal | None = None) -> LiveModel:
    return LiveModel(spec=ModelSpec(name="m", checkpoint="/x.gguf", labels=("llm",)),
                     preferences=prefs or ModelPreferences(), changes=changes or ChangeSignal())


def test_lifecycle_table_is_exactly_the_expected_moves():
    table = {(a, b) for a, targets in ALLOWED.items() for b in targets}
    assert table == EXPECTED_MOVES
    assert set(ALLOWED) == set(STORED), "in_use is derived, never stored"


#: Every move between two different stored states (staying in a state is not a move).
MOVES = [(old, new) for old in STORED for new in STORED if old is not new]


@pytest.mark.parametrize(("old", "new"), MOVES, ids=[f"{a.value}-{b.value}" for a, b in MOVES])
def test_lifecycle_every_move_is_checked(old, new, caplog):
    m = model()
    m._state = old
    before = len(lifecycle.illegal_moves)
    with caplog.at_level(logging.ERROR):
        m.set_state(new)
    legal = (old, new) in EXPECTED_MOVES
    assert m.stored_state is new  # taken either way, so the router never wedges
    assert (len(lifecycle.illegal_moves) == before) is legal
    assert ("forbids" in caplog.text) is (not legal)
    del lifecycle.illegal_moves[before:]


def test_in_use_is_derived_from_in_flight():
    m = model()
    m.set_state(S.READY)
    assert m.state is S.READY
    m.in_flight = 2
    assert m.state is S.IN_USE and m.stored_state is S.READY
    m.in_flight = 0
    assert m.state is S.READY
    m.set_state(S.EVICTING)
    m.in_flight = 1  # draining: still evicting, not "in use"
    assert m.state is S.EVICTING


def test_pin_and_options_are_views_of_the_preferences():
    prefs = ModelPreferences()
    m = model(prefs)
    assert not m.pinned and m.options == LoadOptions()
    prefs.set_pinned("m", True)
    prefs.set_options("m", LoadOptions(ctx_size=4096))
    assert m.pinned and m.options.ctx_size == 4096
    m.pending_options = LoadOptions(ctx_size=512)  # a start in progress
    assert m.options.ctx_size == 512 and prefs.options("m").ctx_size == 4096


async def test_change_signal_wakes_every_waiter_without_polling():
    changes = ChangeSignal()
    woke = []

    async def waiter(i):
        await changes.wait()
        woke.append(i)

    tasks = [asyncio.ensure_future(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert woke == []
    m = model(changes=changes)
    m.set_state(S.READY)  # the one writer notifies
    await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
    assert sorted(woke) == [0, 1, 2]
