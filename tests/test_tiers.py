"""The suite's two tiers: a plain ``pytest`` leaves out the soak tests (marked ``slow``), and
``scripts/test.sh`` (what CI runs) runs the slow tier after the main one, so CI runs them all."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers import REPO

#: Soak tests: every test of these modules belongs to the slow tier.
SOAK_MODULES = ("tests/reliability/test_load.py",)


def _collect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *args],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False)


def _ids(run: subprocess.CompletedProcess[str]) -> set[str]:
    return {line for line in run.stdout.splitlines() if "::" in line}


def test_a_plain_run_leaves_out_the_slow_tier():
    """One collection of a soak module and of a module with both tiers (a subprocess: the
    tiers come from setup.cfg, which this run read already)."""
    mixed = "tests/reliability/test_faults.py"
    plain = _collect(*SOAK_MODULES, mixed)
    assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-2000:]
    ids = _ids(plain)
    for module in SOAK_MODULES:
        assert not [i for i in ids if i.startswith(module)], module
    assert [i for i in ids if i.startswith(mixed)], "the main tier keeps the quick fault tests"
    assert not [i for i in ids if "test_sigkill_backends_under_8_clients" in i]
    assert re.search(r"\b\d+ deselected\b", plain.stdout), plain.stdout[-500:]


def test_the_ci_script_runs_the_slow_tier_after_the_main_one():
    script = (REPO / "scripts" / "test.sh").read_text(encoding="utf-8")
    runs = [line for line in script.splitlines()
            if re.match(r'^"\$VENV/bin/python" -m pytest ', line)]
    assert len(runs) == 2, runs
    assert " -m " not in runs[0].split("pytest", 1)[1]  # the config's default: not slow
    assert " -m slow " in runs[1]
    # The main tier on a worker per core, a file per worker (its module-scoped servers start
    # once); the slow tier's load runs alone.
    assert ' -n "$WORKERS" --dist loadfile ' in runs[0]
    assert " -n " not in runs[1]
    assert "bash scripts/test.sh" in (REPO / ".ci" / "run").read_text(encoding="utf-8")
