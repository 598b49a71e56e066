"""Scenarios shared by the embedded-router and Jupyter-server end-to-end tests."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from lemonade_jupyter.kernel.client import RouterClient
from lemonade_jupyter.kernel.magics import LemonadeServerError
from lemonade_jupyter.kernel.widgets import Dashboard

from tests.helpers.http import loaded
from tests.helpers.polling import wait_for

from .conftest import use_client

COPY = "user.smollm2-copy"


def magics_full_flow(
    ip: InteractiveShell,
    router: RouterClient,
    model: str,
    model_file: str,
    source: str,
    *,
    register: bool = True,
) -> None:
    """Every subcommand in the order a user would try them (quickstart-like), with checks.

    ``router`` is the test's own client for checking server state; with ``register=False`` the
    magics already registered in ``ip`` (e.g. found by discovery) are the ones exercised.
    """
    if register:
        use_client(ip, router)
    # load pinned, with the text progress indicator
    with capture_output() as out:
        msg = ip.run_line_magic("lemonade", f"load {model} --pinned --ctx-size 2048")
    assert repr(msg).startswith(f"Loaded {model} (pinned) in ")
    assert out.stdout.startswith(f"Loading {model} ") and "done" in out.stdout
    assert loaded(router)[model]["pinned"] is True
    assert loaded(router)[model]["recipe_options"].get("ctx_size") == 2048

    # register a second copy of the GGUF and see it in the catalog
    msg = ip.run_line_magic("lemonade", f"pull smollm2-copy {model_file} --labels llm")
    assert repr(msg) == f"Registered {COPY} (llm) from {model_file}"
    models = ip.run_line_magic("lemonade", "models")
    rows = {m["id"]: m for m in models.data}
    assert rows[COPY]["type"] == "llm" and rows[model]["loaded"] and rows[model]["pinned"]

    # every llm slot pinned: warned before trying, then the server's 409 as one line
    with capture_output() as out:
        result = ip.run_cell(f"%lemonade load {COPY}")
    assert out.stderr.startswith("Warning: every llm slot (1/1) is pinned")
    assert isinstance(result.error_in_exec, LemonadeServerError)
    assert result.error_in_exec.status_code == 409
    assert (
        "lemonade: All loaded models of type llm are pinned. Unload a model first. "
        "(HTTP 409, slots_pinned_error)" in out.stdout
    )
    assert "Traceback" not in out.stdout + out.stderr
    assert set(loaded(router)) == {model}  # nothing was evicted

    # a repeat load of the loaded model is not warned about
    with capture_output() as out:
        ip.run_line_magic("lemonade", f"load {model}")
    assert out.stderr == ""

    # unpin: the copy now takes the slot (LRU eviction of the unpinned default)
    assert repr(ip.run_line_magic("lemonade", f"unpin {model}")) == f"Unpinned {model}"
    with capture_output() as out:
        ip.run_line_magic("lemonade", f"load {COPY}")
    assert out.stderr == "" and set(loaded(router)) == {COPY}

    # chat streams the reply; the cell form stores it with -o
    with capture_output() as out:
        ip.run_line_magic("lemonade", f"chat --max-tokens 12 {COPY} Say hello.")
    assert out.stdout.strip()
    with capture_output() as out:
        ip.run_cell_magic("lemonade", f"chat -o reply --max-tokens 12 {COPY}", "Name a fruit.\n")
    assert ip.user_ns["reply"] and out.stdout.strip() == ip.user_ns["reply"].strip()
    # --stats prints the engine's figures of that reply (GET api/v1/stats)
    with capture_output() as out:
        ip.run_line_magic("lemonade", f"chat --stats --max-tokens 5 {COPY} Say hi.")
    stats = router.stats()
    assert stats["model"] == COPY and isinstance(stats["output_tokens"], int)
    last_line = out.stdout.strip().splitlines()[-1]
    assert last_line.startswith(f"time to first token {stats['time_to_first_token']:.3f} s")
    assert f"{stats['output_tokens']} output tokens" in last_line

    # pin/unpin a loaded model, status in both renderings
    ip.run_line_magic("lemonade", f"pin {COPY}")
    status = ip.run_line_magic("lemonade", "status")
    text = repr(status)
    assert text.startswith(f"Router: {source}") and COPY in text
    assert "1/1" in text and "Memory (" in text
    assert "lemonade-loaded" in status._repr_html_() and COPY in status._repr_html_()

    # unload one, then all; delete the user model
    assert repr(ip.run_line_magic("lemonade", f"unload {COPY}")) == f"Unloaded {COPY}"
    assert loaded(router) == {}
    with pytest.raises(LemonadeServerError, match="not loaded|not found"):
        ip.run_line_magic("lemonade", f"unpin {COPY}")
    assert repr(ip.run_line_magic("lemonade", f"delete {COPY}")) == f"Deleted {COPY}"
    assert COPY not in {m["id"] for m in router.models()}


def dashboard_flow(router: RouterClient, model: str) -> None:
    """Refresh, pin toggles, live updates, events, unload button, and stopping on close."""
    router.load(model)
    dash = Dashboard(router, interval=0.2)
    try:
        assert dash.models == [model]
        row = dash.rows[model]
        assert row.pin.value is False and row.state.value == "ready"
        assert row.owner.value and row.owner.value == loaded(router)[model]["owner"]
        row.pin.value = True  # click the toggle
        assert loaded(router)[model]["pinned"] is True
        row.pin.value = False
        assert loaded(router)[model]["pinned"] is False
        # a pin set elsewhere shows up on the next tick, and is not sent back
        router.pin(model, True)
        wait_for(lambda: dash.rows[model].pin.value is True, timeout=10)
        assert loaded(router)[model]["pinned"] is True
        # the event log shows the router's decisions
        wait_for(lambda: "pin" in dash.events.value and model in dash.events.value, timeout=15)
        assert dash.memory_bars  # at least one device bar
        # unload from the button
        dash.rows[model].unload.click()
        dash.wait_actions()
        assert loaded(router) == {}
        wait_for(lambda: dash.models == [], timeout=10)
        thread = dash.poller.thread
    finally:
        dash.close()
    assert thread is not None and not thread.is_alive() and not dash.feed.running
