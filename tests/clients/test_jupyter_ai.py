"""Jupyter AI's ``%%ai`` magic (``jupyter-ai-magics``) answering from the router, in a real
kernel executed by ``nbclient`` beside a real Jupyter server with the extension: its Ollama
provider, pointed at ``lemonade/ollama`` with the Jupyter token, reaches the default model
through the router (auto-loaded there, counted in its request statistics).

The setup cell is the README's snippet, word for word (the test reads it from there)."""

from __future__ import annotations

import os
import re
import time

import nbformat
import pytest
from nbclient import NotebookClient

from lemonade_jupyter.core.catalog import DEFAULT_MODEL
from tests.helpers import REPO
from tests.helpers.http import API, loaded
from tests.helpers.jupyter import repo_first_on_pythonpath

pytest.importorskip("jupyter_ai_magics", reason="the [jupyter-ai] extra is not installed")


def readme_snippet() -> str:
    """The ``%%ai`` set-up cell of the README (the python block after its marker)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- jupyter-ai-setup -->\s*```python\n(.*?)```", text, re.S)
    assert found, "the README has no Jupyter AI set-up snippet"
    return found.group(1)


def test_ai_magic_answers_from_the_default_model_through_the_router(clean, tmp_path,
                                                                     monkeypatch):
    # The kernel finds the server as a kernel of that server would (the variables stand in
    # for the parent-process link nbclient's kernel lacks).
    monkeypatch.setenv("LEMONADE_JUPYTER_URL", clean.url)
    monkeypatch.setenv("LEMONADE_JUPYTER_TOKEN", clean.token)
    for var in ("OLLAMA_HOST", "OLLAMA_API_KEY", "JPY_PARENT_PID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("PYTHONPATH", repo_first_on_pythonpath(dict(os.environ))["PYTHONPATH"])
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(readme_snippet()),
                nbformat.v4.new_code_cell("%%ai\nName three colours.")]
    started = time.time()
    NotebookClient(nb, timeout=240, kernel_name="python3", allow_errors=False,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    (output,) = [o for o in nb.cells[1].outputs
                 if o.get("output_type") in ("display_data", "execute_result")]
    assert output["metadata"]["text/markdown"]["jupyter_ai"] == {
        "provider_id": "ollama", "model_id": DEFAULT_MODEL}
    answer = output["data"]["text/markdown"]
    assert answer.strip(), output
    with clean.client() as c:
        assert loaded(c.get(f"{API}/health").json())[DEFAULT_MODEL]["status"] == "ready"
        stats = c.get(f"{API}/stats").json()
    assert stats["model"] == DEFAULT_MODEL and stats["finished_at"] >= started
    assert stats["output_tokens"] > 0
