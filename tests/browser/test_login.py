"""The first hour in a real browser: the first administrator logs in with the generated password, is
made to choose a new one (a refused one is explained on the page), lands on the worklist, and the
initial password no longer opens a session. The login page wears the UI's layout and favicon."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page

from radstack.security.authn import CREDENTIAL_FILE
from tests.browser.conftest import screenshot
from tests.conftest import RunningServer, server_settings, start_server

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = server_settings(tmp_path_factory.mktemp("login") / "data", dicom_port=0, no_workers=True)
    yield from start_server(settings)


def _initial_password(server: RunningServer) -> str:
    text = (server.platform.settings.data_dir / CREDENTIAL_FILE).read_text()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)["password"]


def _log_in(page: Page, username: str, password: str) -> None:
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("main button[type=submit]")
    page.wait_for_load_state()


def test_first_login_forces_a_new_password(page: Page, fresh: RunningServer) -> None:
    initial = _initial_password(fresh)
    page.goto(f"{fresh.url}/")
    assert "/login" in page.url and page.title() == "Log in · radstack"
    icon = page.get_attribute("link[rel=icon][type='image/svg+xml']", "href")
    assert icon is not None and httpx.get(f"{fresh.url}{icon}").status_code == 200
    _log_in(page, "admin", "not the password")
    assert page.inner_text("[role=alert]") == "Wrong user name or password."
    _log_in(page, "admin", initial)
    assert "/account/password" in page.url
    assert "Set a new password before you go on" in page.inner_text("main")
    screenshot(page, "change-password")
    # The worklist is out of reach until the password is changed.
    page.goto(f"{fresh.url}/")
    assert "/account/password" in page.url
    page.fill("input[name=current]", initial)
    page.fill("input[name=new]", "password1234")
    page.fill("input[name=confirm]", "password1234")
    page.click("main button[type=submit]")
    page.wait_for_load_state()
    assert "most common passwords" in page.inner_text("[role=alert]")
    new = "a radiology department's own secret"
    page.fill("input[name=current]", initial)
    page.fill("input[name=new]", new)
    page.fill("input[name=confirm]", new)
    page.click("main button[type=submit]")
    page.wait_for_load_state()
    assert page.url.rstrip("/") == fresh.url
    assert page.is_visible("nav >> text=Worklist")
    page.click("button:has-text('Log out')")
    page.wait_for_load_state()
    _log_in(page, "admin", initial)
    assert "Wrong user name or password." in page.inner_text("main")
    _log_in(page, "admin", new)
    assert page.url.rstrip("/") == fresh.url
