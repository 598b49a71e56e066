"""``scripts/curated_figures.py`` reads the curated files' figures from a hub's listing.

Run here against the fake hub, whose listing carries each file's true size and sha256 (as the
real hub's does for LFS files): the figures it writes are the served file's, and a pull of the
entry then passes its check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import CURATED, SMOL, curated_files

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "curated_figures.py"


def test_the_figures_are_the_served_files(fake_hub, tmp_path, model_figures):
    listed = tmp_path / "curated.json"
    repo, files = curated_files(CURATED, "")
    listed.write_text(json.dumps([
        {"model_name": CURATED, "checkpoint": f"{repo}:Q8_0", "labels": ["llm"], "size": 0.1},
        {"model_name": "vision-GGUF", "checkpoint": f"{SMOL}:Q4_1",
         "mmproj": "mmproj-SmolLM2-f16.gguf", "labels": ["llm", "vision"], "size": 0.2},
        {"model_name": "gone-GGUF", "checkpoint": "test/no-such-GGUF:Q4_0", "size": 0.1},
    ]))
    run = subprocess.run([sys.executable, str(SCRIPT), "--write", "--list", str(listed)],
                         capture_output=True, text=True, timeout=120,
                         env={"HF_ENDPOINT": fake_hub.url, "PATH": "/usr/bin:/bin"})
    assert run.returncode == 1, run.stderr  # one entry could not be established
    assert "gone-GGUF: not established" in run.stderr
    written = {e["model_name"]: e for e in json.loads(listed.read_text())}
    assert written[CURATED]["files"] == {next(iter(files)): model_figures}
    assert written["vision-GGUF"]["files"] == {
        "SmolLM2-135M-Instruct-Q4_1.gguf": model_figures, "mmproj-SmolLM2-f16.gguf": model_figures}
    assert "files" not in written["gone-GGUF"]
    assert listed.read_text().startswith('[\n {"model_name": ')  # one entry per line, as kept
