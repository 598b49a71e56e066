"""The per-user quotas of a node router on a stand-in router: who is charged for a pin, what a
pin adds, and the count of requests in flight."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from lemonade_jupyter.core.quotas import InFlight, check_pin
from lemonade_jupyter.errors import QuotaExceededError, TooManyRequestsError

MIB = 1024 * 1024


@dataclass
class _Model:
    name: str
    pinned: bool
    memory_bytes: int | None = 10 * MIB
    estimate_bytes: int | None = None


@dataclass
class _Router:
    models: list[_Model]
    settings: Any = field(default_factory=lambda: SimpleNamespace(
        node_max_pins_per_user=1, node_max_pinned_mib_per_user=-1))
    catalog: Any = None

    def get_live(self, name: str) -> _Model | None:
        return next((m for m in self.models if m.name == name), None)

    def live_models(self) -> list[_Model]:
        return list(self.models)


class _Owners:
    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    def get(self, name: str) -> str | None:
        return self.table.get(name)


def test_pin_quota_charges_only_the_owner_and_only_new_pins():
    router = _Router([_Model("a", True), _Model("b", False), _Model("c", False),
                      _Model("d", True), _Model("e", True)])
    owners = _Owners({"a": "alice", "b": "alice", "c": "bob", "d": "admin", "e": "alice"})
    with pytest.raises(QuotaExceededError) as err:
        check_pin(router, owners, "alice", "b")  # type: ignore[arg-type]
    assert (err.value.limit, err.value.used, err.value.requested) == (1, 2, 1)
    # Already pinned adds nothing, even for a user over a quota lowered since.
    check_pin(router, owners, "alice", "a")  # type: ignore[arg-type]
    # An admin (at the quota with a pin of their own) pinning bob's model is not charged.
    check_pin(router, owners, "admin", "c")  # type: ignore[arg-type]
    check_pin(router, owners, "bob", "c")  # type: ignore[arg-type]  # bob holds none
    router.settings.node_max_pins_per_user = -1
    check_pin(router, owners, "alice", "b")  # type: ignore[arg-type]  # no limit


def test_pinned_memory_counts_measured_then_estimated_bytes():
    router = _Router([_Model("a", True, memory_bytes=None, estimate_bytes=30 * MIB),
                      _Model("b", False, memory_bytes=20 * MIB)])
    router.settings = SimpleNamespace(node_max_pins_per_user=-1,
                                      node_max_pinned_mib_per_user=49)
    owners = _Owners({"a": "alice", "b": "alice"})
    with pytest.raises(QuotaExceededError) as err:
        check_pin(router, owners, "alice", "b")  # type: ignore[arg-type]
    assert (err.value.quota, err.value.limit, err.value.used, err.value.requested) == (
        "pinned_mib_per_user", 49, 30, 20)
    router.settings.node_max_pinned_mib_per_user = 50
    check_pin(router, owners, "alice", "b")  # type: ignore[arg-type]


def test_in_flight_refuses_beyond_the_limit_without_counting_the_refusal():
    flight = InFlight()
    flight.enter("alice", 2)
    flight.enter("alice", 2)
    with pytest.raises(TooManyRequestsError) as err:
        flight.enter("alice", 2)
    assert err.value.status_code == 429 and err.value.headers() == {"Retry-After": "1"}
    flight.enter("bob", 2)  # another user's count
    assert flight.snapshot() == {"alice": 2, "bob": 1}
    flight.leave("alice")
    flight.enter("alice", 2)
    flight.leave("alice")
    flight.leave("alice")
    flight.leave("bob")
    assert flight.snapshot() == {}  # nobody's entry stays behind
    flight.enter("carol", -1)  # no limit
