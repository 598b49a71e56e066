"""What the tests share about the fake backend (``tests/fakes/fake_llama_server.py``).

The fake is a standalone script (it runs as the backend process), so these names are repeated
here rather than imported from it."""

from __future__ import annotations

import pytest

#: The fake's fault knobs: environment variables a backend reads at its start.
FAKE_KNOBS = ("FAKE_LLAMA_READY_AFTER", "FAKE_LLAMA_READY_FILE", "FAKE_LLAMA_FAIL_START",
              "FAKE_LLAMA_CRASH_AFTER_REQUESTS", "FAKE_LLAMA_IGNORE_SIGTERM",
              "FAKE_LLAMA_TOKEN_DELAY", "FAKE_LLAMA_STALE_KEEPALIVE")

#: What the fake logs (its stdout) for a request that arrived on a connection a stream left
#: dead (``FAKE_LLAMA_STALE_KEEPALIVE=1``).
STALE_REQUEST_LINE = "fake: request on a stale keep-alive connection, not answered"


def clear_fake_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """No fault knob from the test's environment reaches the backends it starts."""
    for knob in FAKE_KNOBS:
        monkeypatch.delenv(knob, raising=False)
