"""The node's page in headless Debian chromium, through the real Hub, its login and its proxy:
a user sees who owns which model and no buttons; a node admin sees the buttons, and they work.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lemonade_jupyter.core.catalog import DEFAULT_MODEL

from tests.helpers.artifacts import ARTIFACTS
from tests.helpers.http import API, loaded
from tests.helpers.polling import wait_for
from tests.hub_node.hub import PASSWORD, HubNode

CHROMIUM = "/usr/bin/chromium"
A = DEFAULT_MODEL

# Not a skip: a missing browser is a missing install step (scripts/test.sh installs Debian
# chromium), not absent hardware, so the test must fail loudly.
pytestmark = [pytest.mark.browser]


@contextmanager
def _chromium() -> Iterator[Any]:
    assert Path(CHROMIUM).exists(), "Debian chromium is missing: apt-get install chromium"
    from playwright import sync_api
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            yield chromium
        finally:
            chromium.close()


def _open_page(browser: Any, node: HubNode, user: str) -> Any:
    """A fresh browser session: the Hub's login form as ``user``, then the service's address,
    which leads through the node's OAuth login to its page."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_context(viewport={"width": 1300, "height": 900}).new_page()
    page.goto(f"{node.url}/hub/login")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("[type=submit]")
    page.wait_for_url("**/hub/**")
    page.goto(node.service_url)
    try:
        page.wait_for_selector("body[data-ready=true]", timeout=60_000)
    except Exception as exc:
        page.screenshot(path=str(ARTIFACTS / f"node-page-{user}-failure.png"), full_page=True)
        raise AssertionError(f"{page.url}\n{page.content()[:3000]}") from exc
    assert page.url.endswith("/services/lemonade/lemonade/page"), page.url
    return page


def _row(page: Any, model: str) -> Any:
    return page.locator(f"#models tbody tr[data-model='{model}']")


@pytest.mark.timeout(600)
def test_node_page_shows_owners_and_only_admins_get_buttons_that_work(node):
    with node.client("alice") as http:
        resp = http.post(f"{API}/load", json={"model_name": A, "pinned": True})
    assert resp.status_code == 200, resp.text
    with _chromium() as browser:
        _check_pages(browser, node)


def _check_pages(browser: Any, node: HubNode) -> None:
    bob = _open_page(browser, node, "bob")
    try:
        row = _row(bob, A)
        row.wait_for(timeout=30_000)
        assert row.locator(".owner").inner_text() == "alice"
        assert row.locator(".pinned").inner_text() == "pinned"
        assert row.locator(".state").inner_text() == "ready"
        assert bob.locator("#who").inner_text() == "Node router, as bob"
        assert bob.locator("button").count() == 0  # bob is no node admin
        # The recent events name whose request caused them.
        bob.locator("#events tr[data-kind=load] .user", has_text="alice").first.wait_for(
            timeout=30_000)
        bob.screenshot(path=str(ARTIFACTS / "node-page-user.png"), full_page=True)
    finally:
        bob.context.close()

    admin = _open_page(browser, node, "admin")
    try:
        row = _row(admin, A)
        row.wait_for(timeout=30_000)
        assert row.locator(".owner").inner_text() == "alice"
        assert admin.locator("#who").inner_text() == "Node router, as admin (admin)"
        assert row.locator("button.unload").count() == 1
        admin.screenshot(path=str(ARTIFACTS / "node-page-admin.png"), full_page=True)
        row.locator("button.unpin").click()
        wait_for(lambda: loaded(_health(node))[A]["pinned"] is False, 30,
                 what="the admin's unpin")
        assert admin.locator("#message").inner_text() == ""  # no refusal shown
        # ... and the page shows it on its next reading, with a pin button now.
        row.locator("button.pin").wait_for(timeout=30_000)
        assert loaded(_health(node))[A]["owner"] == "alice"
    finally:
        admin.context.close()


def test_node_page_sends_a_browser_without_login_to_the_hub_and_a_program_gets_403(node):
    import httpx
    with httpx.Client(base_url=node.service_url, timeout=30) as http:
        browser_like = http.get("lemonade/page", headers={"Accept": "text/html"})
        assert browser_like.status_code == 302
        assert browser_like.headers["location"].startswith(
            "/services/lemonade/login?next=%2Fservices%2Flemonade%2Flemonade%2Fpage")
        program = http.get("lemonade/page")
        assert program.status_code == 403
        assert program.json()["error"]["type"] == "permission_error"
    # A Hub token without the node's scopes gets no page either.
    nothing = node.make_token("bob", scopes=["read:users:name!user"])
    with node.client("bob", nothing) as http:
        assert http.get("lemonade/page").status_code == 403


def _health(node: HubNode) -> dict[str, Any]:
    with node.client("admin") as http:
        resp = http.get(f"{API}/health")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]
