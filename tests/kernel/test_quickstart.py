"""notebooks/quickstart.ipynb executed end to end with nbclient, failing on any error.

nbclient starts a kernel with no Jupyter server around it, so the notebook runs on the kernel's
embedded router (with real llama-server backends), in private Jupyter dirs.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
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
    for var in ("LEMONADE_JUPYTER_URL", "LEMONADE_JUPYTER_TOKEN", "JPY_PARENT_PID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("LEMONADE_LLAMA_SERVER", llama_server_path)
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
    status = _text(code[0])
    assert "Router: embedded router in this kernel" in status
    assert "Loaded SmolLM2-135M-Instruct-GGUF (pinned)" in _text(code[1])
    assert "user.smollm2-copy" in _text(code[2])
    refused = _text(code[3])
    assert "Warning: every llm slot (1/1) is pinned" in refused
    assert "Refused as expected: HTTP 409 slots_pinned_error" in refused
    assert "user.smollm2-copy" in _text(code[4])  # status after unpin + load of the copy
    assert _text(code[5]).strip()  # the streamed reply
    assert "characters received" in _text(code[6]) and not _text(code[6]).startswith("0 ")
    widget = [
        o
        for o in code[7].outputs
        if "data" in o and "application/vnd.jupyter.widget-view+json" in o.data
    ]
    assert widget, "the dashboard cell shows a widget"
