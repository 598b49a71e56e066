"""``%lemonade`` and the dashboard against the embedded router with real llama-server backends.

The embedded router is what a kernel without a Jupyter server (plain IPython, nbclient) uses:
the kernel's own ``embedded_client()`` on its thread and loop, in a private data dir.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from lemonade_jupyter.kernel.client import RouterClient
from lemonade_jupyter.kernel.magics import LemonadeMagics, LemonadeServerError

from .conftest import use_client
from .flows import dashboard_flow, magics_full_flow


@pytest.fixture
def router(embedded: RouterClient, clean_router: list[RouterClient]) -> RouterClient:
    clean_router.append(embedded)
    return embedded


def test_embedded_discovered_when_no_server(
    ip: InteractiveShell, router: RouterClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """auto mode, no env, no server info files: the kernel uses its embedded router."""
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    monkeypatch.delenv("JPY_PARENT_PID", raising=False)
    magics = LemonadeMagics(ip, progress="text")
    ip.register_magics(magics)
    status = ip.run_line_magic("lemonade", "status")
    assert magics.client is router and magics.client.kind == "embedded"
    assert repr(status).startswith("Router: embedded router in this kernel at http://127.0.0.1:")
    assert "no model loaded" in repr(status)


def test_embedded_magics_full_flow(
    ip: InteractiveShell, router: RouterClient, default_model_name: str, default_model_file: str
) -> None:
    magics_full_flow(
        ip,
        router,
        default_model_name,
        default_model_file,
        source="embedded router in this kernel at http://127.0.0.1:",
    )


def test_embedded_config_set_and_invalid(ip: InteractiveShell, router: RouterClient) -> None:
    use_client(ip, router)
    shown = ip.run_line_magic("lemonade", "config")
    assert shown.data["max_loaded_models"] == 1
    try:
        changed = ip.run_line_magic(
            "lemonade", "config max_loaded_models=2 auto_evict_threshold_pct=0.8"
        )
        assert changed.data["max_loaded_models"] == 2
        assert changed.data["auto_evict_threshold_pct"] == 0.8
        assert router.health()["max_models"]["llm"] == 2
        with capture_output() as out:
            result = ip.run_cell("%lemonade config max_loaded_models=0")
        assert isinstance(result.error_in_exec, LemonadeServerError)
        assert out.stdout.startswith("lemonade: max_loaded_models must be")
        assert router.config()["max_loaded_models"] == 2  # nothing changed
    finally:
        router.set_config({"max_loaded_models": 1, "auto_evict_threshold_pct": 0.9})


def test_embedded_dashboard_actions_reach_the_server(
    router: RouterClient, default_model_name: str
) -> None:
    dashboard_flow(router, default_model_name)
