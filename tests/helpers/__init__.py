"""Helpers shared by the test suites, one copy each.

* :mod:`tests.helpers.polling`: ``wait_for`` (sync) and ``wait_until`` (async): poll with a deadline.
* :mod:`tests.helpers.processes`: backend processes below a pid, zombies, the leftover check.
* :mod:`tests.helpers.envelope`: assertions on the JSON error envelope.
* :mod:`tests.helpers.http`: the API prefix, auth headers, request bodies, SSE and stream readers.
* :mod:`tests.helpers.jupyter`: a ``jupyter server`` (or JupyterLab) subprocess with the extension.
* :mod:`tests.helpers.memory_app`: the whole app in-process on in-memory backends (no process).
* :mod:`tests.helpers.artifacts`: figures a test saves under ``test-artifacts/``.
* :mod:`tests.helpers.llama_help`: llama-server's flags, as recorded in ``tests/data``.
"""

from __future__ import annotations

from pathlib import Path

#: The repository root (the work tree whose code the tests exercise).
REPO = Path(__file__).resolve().parents[2]
