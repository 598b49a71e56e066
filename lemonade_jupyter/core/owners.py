"""Who owns each model: the user whose load brought it in, remembered by model name.

A router shared by the users of a JupyterHub (node mode) must say whose model is whose: an
unpinned model is shared and may be evicted by anyone's load, but a pinned one yields only to
its owner or an admin, and only they may read its logs. In a single-user server the owner is
the Jupyter user (or nobody) and changes nothing.

The registry learns owners from the router's events (:meth:`OwnerRegistry.on_event`, a
listener of ``EventLog``), so no router code has to know about users:

* ``load`` (a fresh load) makes the event's user the owner;
* ``pin`` of a model nobody owns makes the pinner its owner;
* ``unload`` and ``evict`` forget it (the next load is someone's fresh load);
* reloads, restores, downsizes and crashes keep it, like the pin.

Kept apart from the live model on purpose: a model evicted and reloaded by the watchdog, or
restored at a restart, keeps its owner without anything copying it. Saved as ``owners.json``
in the data folder beside the router's state file, so owners survive a restart with the pins.
Owned by the router's event loop (listeners run there). Saves are atomic and leave the loop
for one worker thread, which writes them in order (a later table never loses to an earlier).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .events import Event
from .state_files import read_json_or_quarantine, write_json_atomic

log = logging.getLogger(__name__)

#: The file in the data folder.
OWNERS_FILE = "owners.json"

#: Longest user name kept (JupyterHub's names are far shorter).
MAX_USER_LENGTH = 255


class OwnerRegistry:
    """Model name -> owning user, fed by router events, persisted in ``data_dir`` (or not,
    with ``None``: a router that keeps no state)."""

    def __init__(self, data_dir: Path | None) -> None:
        self._path = data_dir / OWNERS_FILE if data_dir is not None else None
        self._by_model: dict[str, str] = {}
        self._writer: ThreadPoolExecutor | None = None
        if self._path is not None:
            saved = read_json_or_quarantine(self._path, dict) or {}
            self._by_model = {name: user for name, user in saved.items()
                              if isinstance(name, str) and isinstance(user, str)
                              and 0 < len(user) <= MAX_USER_LENGTH}

    def get(self, model: str) -> str | None:
        """The owner of ``model``, or None when nobody is known."""
        return self._by_model.get(model)

    def snapshot(self) -> dict[str, str]:
        """A copy of the whole table."""
        return dict(self._by_model)

    def on_event(self, event: Event) -> None:
        """Update the table from one router event (an ``EventLog`` listener)."""
        model = event.model
        if model is None:
            return
        if event.kind == "load" and event.user:
            self._set(model, event.user)
        elif event.kind == "pin" and event.user and model not in self._by_model:
            self._set(model, event.user)
        elif event.kind in ("unload", "evict") and model in self._by_model:
            del self._by_model[model]
            self._save()

    def _set(self, model: str, user: str) -> None:
        if self._by_model.get(model) == user:
            return
        self._by_model[model] = user[:MAX_USER_LENGTH]
        self._save()

    def _save(self) -> None:
        """Write the table: on the worker thread from the loop, at once without one."""
        if self._path is None:
            return
        table = dict(self._by_model)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script, a unit test): write now
            self._write(table)
            return
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="lemonade-owners")
        self._writer.submit(self._write, table)

    def close(self) -> None:
        """Wait for the saves under way; later ones write at once."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)

    def _write(self, table: dict[str, str]) -> None:
        assert self._path is not None
        try:
            write_json_atomic(self._path, table)
        except OSError as exc:  # a full or read-only disk must not break a load
            log.warning("Could not save model owners to %s: %s", self._path, exc)
