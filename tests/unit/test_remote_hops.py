"""The hop guard without a network: our own id refused, other routers' ids passed on (ours
added), a chain too long refused, anything that is not an id ignored."""

from __future__ import annotations

import pytest

from lemonade_jupyter.core.remote_hops import HOP_HEADER, MAX_HOPS, HopGuard
from lemonade_jupyter.errors import RemoteLoopError

OURS = "0123456789abcdef"
OTHER = "fedcba9876543210"


def test_a_request_with_our_own_id_is_refused_wherever_it_is_in_the_chain():
    guard = HopGuard(OURS)
    for header in (OURS, f"{OTHER},{OURS}", f" {OURS} , {OTHER}"):
        with pytest.raises(RemoteLoopError) as info:
            guard.check(header)
        assert info.value.status_code == 508 and "came back" in info.value.message


def test_requests_from_clients_and_other_routers_pass_and_carry_the_chain_on():
    guard = HopGuard(OURS)
    for header in (None, "", OTHER, "not-an-id", "x" * 10_000):
        guard.check(header)
    assert guard.outgoing() == {HOP_HEADER: OURS}
    assert guard.outgoing(OTHER) == {HOP_HEADER: f"{OTHER},{OURS}"}
    assert guard.outgoing("junk, <script>") == {HOP_HEADER: OURS}


def test_a_chain_of_too_many_routers_is_refused_like_a_loop():
    chain = ",".join(f"{i:016x}" for i in range(1, MAX_HOPS + 1))
    with pytest.raises(RemoteLoopError) as info:
        HopGuard(OURS).check(chain)
    assert f"{MAX_HOPS} lemonade routers" in info.value.message
    HopGuard(OURS).check(chain.split(",", 1)[1])  # one fewer passes


def test_each_router_draws_its_own_id():
    assert HopGuard().router_id != HopGuard().router_id
    assert len(HopGuard().router_id) == 16
