"""notebooks/quickstart.ipynb executed end to end with nbclient, failing on any error.

nbclient starts a kernel with no Jupyter server around it, so the notebook runs on the kernel's
embedded router (with real llama-server backends), in private Jupyter dirs. It chats on one line
with a prompt that ends with ``?``, continues the conversation, and uses the OpenAI helper.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.helpers import REPO
from tests.helpers.jupyter import repo_first_on_pythonpath

NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out:
            parts.append(out.data.get("text/plain", ""))
    return "".join(parts)


def test_quickstart_notebook_runs_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, llama_server_path: str
) -> None:
    for var in ("LEMONADE_JUPYTER_URL", "LEMONADE_JUPYTER_TOKEN", "JPY_PARENT_PID",
                "LEMONADE_EMBEDDED_DATA_DIR", "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_SERVICE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("LEMONADE_LLAMA_SERVER", llama_server_path)
    # The kernel is a subprocess: it runs the work tree's package, not an installed copy.
    monkeypatch.setenv("PYTHONPATH", repo_first_on_pythonpath(dict(os.environ))["PYTHONPATH"])
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        timeout=180,
        kernel_name="python3",
        allow_errors=False,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not any(o.output_type == "error" for o in c.outputs) for c in code)

    def cell(start: str) -> nbformat.NotebookNode:
        return next(c for c in code if c.source.startswith(start))

    status = _text(code[0])
    assert "Router: embedded router in this kernel" in status
    assert "Loaded SmolLM2-135M-Instruct-GGUF (pinned)" in _text(code[1])
    assert "user.smollm2-copy" in _text(code[2])
    refused = _text(code[3])
    assert "Warning: every llm slot (1/1) is pinned" in refused
    assert "Refused as expected: HTTP 409 slots_pinned_error" in refused
    assert "user.smollm2-copy" in _text(code[4])  # status after unpin + load of the copy

    # a one-line chat ending with "?": sent (not IPython's help), the reply shown as Markdown
    for start in ("%lemonade chat --max-tokens", "%lemonade chat --continue"):
        chat = cell(start)
        assert chat.source.endswith("?")
        replies = [o.data["text/markdown"] for o in chat.outputs
                   if "data" in o and "text/markdown" in o.data]
        assert replies and replies[-1].strip(), chat.outputs
        assert "not found" not in _text(chat) and "Docstring" not in _text(chat)
    assert _text(cell("%%lemonade chat")).strip()  # the streamed reply of the cell magic
    received = _text(cell("print(f\"{len(reply)}"))
    assert "characters received" in received and not received.startswith("0 ")

    # the OpenAI helper, pointed at the embedded router with its key
    answered = _text(cell("import lemonade_jupyter"))
    assert "http://127.0.0.1:" in answered and "/lemonade/api/v1" in answered
    assert " answered " in answered and " answered 0 characters" not in answered

    widget = [
        o
        for o in cell("dash = %lemonade dashboard").outputs
        if "data" in o and "application/vnd.jupyter.widget-view+json" in o.data
    ]
    assert widget, "the dashboard cell shows a widget"
