"""The owner registry learns owners from router events and keeps them across a restart."""

from __future__ import annotations

from lemonade_jupyter.core.events import EventLog, acting_user
from lemonade_jupyter.core.owners import OWNERS_FILE, OwnerRegistry


def _log_with(owners: OwnerRegistry) -> EventLog:
    log = EventLog()
    log.add_listener(owners.on_event)
    log.owner_of = owners.get
    return log


def test_owners_from_load_pin_evict_and_unload(tmp_path):
    owners = OwnerRegistry(tmp_path)
    log = _log_with(owners)
    token = acting_user.set("alice")
    try:
        log.emit("load", "a", "manual")
        log.emit("load", "b", "manual")
    finally:
        acting_user.reset(token)
    assert owners.snapshot() == {"a": "alice", "b": "alice"}

    token = acting_user.set("bob")
    try:
        log.emit("pin", "a", "manual")  # someone else's pin does not take the model over
        evicted = log.emit("evict", "b", "lru")
        log.emit("reload", "a", "crash")
    finally:
        acting_user.reset(token)
    assert evicted.user == "bob" and evicted.detail["owner"] == "alice"
    assert owners.snapshot() == {"a": "alice"}

    log.emit("unload", "a", "manual")  # the router's own work: no user
    assert owners.snapshot() == {}


def test_owners_a_pin_of_an_unowned_model_makes_the_pinner_its_owner(tmp_path):
    owners = OwnerRegistry(tmp_path)
    log = _log_with(owners)
    log.emit("load", "a", "restore")  # nobody's
    token = acting_user.set("carol")
    try:
        log.emit("pin", "a", "manual")
    finally:
        acting_user.reset(token)
    assert owners.get("a") == "carol"


def test_owners_survive_a_restart_and_junk_is_skipped(tmp_path):
    owners = OwnerRegistry(tmp_path)
    log = _log_with(owners)
    token = acting_user.set("alice")
    try:
        log.emit("load", "a", "manual")
    finally:
        acting_user.reset(token)
    assert OwnerRegistry(tmp_path).snapshot() == {"a": "alice"}

    (tmp_path / OWNERS_FILE).write_text('{"a": "alice", "b": 3, "c": ""}')
    assert OwnerRegistry(tmp_path).snapshot() == {"a": "alice"}
    (tmp_path / OWNERS_FILE).write_text("not json")
    assert OwnerRegistry(tmp_path).snapshot() == {}


def test_owners_without_a_data_dir_keep_nothing_on_disk(tmp_path):
    owners = OwnerRegistry(None)
    token = acting_user.set("alice")
    try:
        _log_with(owners).emit("load", "a", "manual")
    finally:
        acting_user.reset(token)
    assert owners.get("a") == "alice" and list(tmp_path.iterdir()) == []


async def _load_as(log: EventLog, user: str, model: str) -> None:
    token = acting_user.set(user)
    try:
        log.emit("load", model, "manual")
    finally:
        acting_user.reset(token)


def test_owners_saves_from_the_loop_land_in_order(tmp_path):
    import asyncio

    owners = OwnerRegistry(tmp_path)
    log = _log_with(owners)

    async def many() -> None:
        for i in range(20):
            await _load_as(log, f"user{i}", "a")

    asyncio.run(many())
    owners.close()
    assert OwnerRegistry(tmp_path).snapshot() == {"a": "user19"}
