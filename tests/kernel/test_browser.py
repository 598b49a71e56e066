"""JupyterLab + Debian chromium (headless, Playwright): run the quickstart, use its dashboard.

JupyterLab runs as a subprocess with the extension; the notebook's kernel finds it through
``JPY_PARENT_PID``. The test runs every cell from the Run menu, waits for the dashboard's model
table and pin toggle, saves a screenshot under ``test-artifacts/``, clicks the toggle and checks
on the server, over the REST API, that the pin changed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lemonade_jupyter.kernel.client import RouterClient

from tests.helpers import REPO
from tests.helpers.artifacts import ARTIFACTS
from tests.helpers.http import loaded
from tests.helpers.jupyter import JupyterProcess
from tests.helpers.polling import wait_for

CHROMIUM = "/usr/bin/chromium"
COPY = "user.smollm2-copy"

# Not a skip: a missing browser is a missing install step (scripts/test.sh installs Debian
# chromium), not absent hardware, so the test must fail loudly.
pytestmark = [pytest.mark.browser]


@pytest.fixture
def lab(tmp_path: Path, llama_server_path: str) -> Iterator[JupyterProcess]:
    settings = tmp_path / "lab-settings"
    notification = (
        settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    )
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    server = JupyterProcess(
        tmp_path,
        app="jupyterlab",
        lemonade={"max_loaded_models": 1},
        extra_args=(
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ),
        env={
            "LEMONADE_LLAMA_SERVER": llama_server_path,
            "JUPYTERLAB_SETTINGS_DIR": str(settings),
            "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
        },
    )
    server.start()
    shutil.copy(REPO / "notebooks" / "quickstart.ipynb", server.notebook_dir / "quickstart.ipynb")
    try:
        yield server
    finally:
        try:
            server.router_client.unload()
        finally:
            server.stop()


@pytest.mark.timeout(600)
def test_browser_quickstart_dashboard_pin_toggle(lab: JupyterProcess) -> None:
    assert Path(CHROMIUM).exists(), "Debian chromium is missing: apt-get install chromium"
    from playwright import sync_api
    ARTIFACTS.mkdir(exist_ok=True)
    api = RouterClient(lab.url, lab.token)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{lab.url}lab/tree/quickstart.ipynb?token={lab.token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            # JupyterLab may ask which kernel to start: take the notebook's (Python 3)
            select = page.locator(".jp-Dialog .jp-mod-accept", has_text="Select")
            try:
                select.wait_for(state="visible", timeout=10_000)
                select.click()
            except sync_api.TimeoutError:
                pass
            # wait until the kernel is up, then Run ▸ Run All Cells
            page.wait_for_selector(
                "#jp-main-statusbar >> text=Python 3 (ipykernel) | Idle", timeout=120_000
            )
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()

            table = page.locator(".lemonade-model-table")
            try:
                table.wait_for(state="visible", timeout=300_000)
            except sync_api.TimeoutError:
                page.screenshot(path=str(ARTIFACTS / "browser-failure.png"), full_page=True)
                raise
            toggle = page.locator(".lemonade-pin-toggle").first
            toggle.wait_for(state="visible", timeout=60_000)
            assert COPY in table.inner_text()
            dashboard = page.locator(".lemonade-dashboard").first
            dashboard.scroll_into_view_if_needed()
            page.wait_for_timeout(1500)  # let the poller fill memory bars and events
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
            dashboard.screenshot(path=str(ARTIFACTS / "dashboard-widget.png"))

            assert loaded(api)[COPY]["pinned"] is False
            toggle.click()
            wait_for(lambda: loaded(api)[COPY]["pinned"] is True, timeout=30)
            # and the panel shows the server's value on a later tick
            page.locator(".lemonade-pin-toggle", has_text="pinned").first.wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "dashboard-pinned.png"))
        finally:
            browser.close()
            api.close()
