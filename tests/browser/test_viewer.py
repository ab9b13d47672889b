"""A radiologist's path in a real browser: log in, find the study in the worklist, read it in OHIF.

Chromium (Debian's) loads the bundled OHIF from ``/viewer/``; the tests wait until a viewport canvas
holds an image (pixels that are not all the same) for the demo CT and both radiographs (RG1, RG3),
check that the frames OHIF fetched were served as stored HTJ2K, that a first visit opens without
OHIF's tour or investigational-use dialog, that the API docs render with the network limited to
loopback, and that a role without the right to read pixels cannot open the viewer. Screenshots are
kept in ``test-artifacts/``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from playwright.sync_api import Page, Response

from tests.browser.conftest import IMAGE_SHOWN, log_in, screenshot
from tests.conftest import RunningServer, server_settings, start_server

pytestmark = pytest.mark.timeout(300)


@dataclass
class Site:
    server: RunningServer
    studies: dict[str, str] = field(default_factory=dict)  # modality → StudyInstanceUID

    #: The admin's password, set by the fixture (the first login's forced change is tested in test_login).
    admin_password: str = "the viewer tester's password"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    roles = tmp_path_factory.mktemp("roles") / "roles.json"
    roles.write_text(json.dumps({"scheduler": {"actions": ["read-metadata"]}}))
    settings = server_settings(
        tmp_path_factory.mktemp("browser") / "data",
        dicom_port=0,
        no_workers=True,
        demo=True,
        roles_file=roles,
    )
    for server in start_server(settings):
        server.platform.accounts.update_user("admin", password=Site.admin_password)
        found = httpx.get(f"{server.dicomweb}/studies", headers=server.auth).json()
        studies = {}
        for match in found:
            description = (match.get("00081030", {}).get("Value") or [""])[0]
            if match["00080061"]["Value"] == ["CT"]:
                studies["CT"] = match["0020000D"]["Value"][0]
            elif description == "THORAX":  # pydicom-data's RG1, a chest CR with Pixel Spacing 0\0
                studies["RG1"] = match["0020000D"]["Value"][0]
            elif "tibia" in description:  # pydicom-data's RG3, a lower-leg radiograph
                studies["RG3"] = match["0020000D"]["Value"][0]
        assert set(studies) == {"CT", "RG1", "RG3"}, found
        yield Site(server, studies)


def test_log_in_find_the_study_and_read_it_in_ohif(page: Page, site: Site) -> None:
    log_in(page, site.server.url, "admin", site.admin_password)
    assert page.url.rstrip("/") == site.server.url
    worklist = page.inner_text("table")
    assert "Phantom" in worklist  # the demo CT is listed
    screenshot(page, "worklist")

    frames: list[tuple[str, str]] = []

    def seen(response: Response) -> None:
        if "/frames/" in response.url:
            frames.append((response.url, response.headers.get("content-type", "")))

    page.on("response", seen)
    page.click(f"a[href*='StudyInstanceUIDs={site.studies['CT']}']")
    page.wait_for_function(IMAGE_SHOWN, timeout=120_000)
    screenshot(page, "viewer-ct")
    assert frames, "OHIF fetched no frame"
    assert all("1.2.840.10008.1.2.4.202" in content_type for _url, content_type in frames), frames[:3]


@pytest.mark.parametrize("name", ["RG1", "RG3"])
def test_the_demo_radiographs_render(page: Page, site: Site, name: str) -> None:
    """RG1's Pixel Spacing is 0\\0: served as absent, so OHIF's WebGL path draws it (it was black)."""
    log_in(page, site.server.url, "admin", site.admin_password)
    page.goto(f"{site.server.url}/viewer/viewer?StudyInstanceUIDs={site.studies[name]}")
    page.wait_for_function(IMAGE_SHOWN, timeout=90_000)
    screenshot(page, f"viewer-{name}")


def test_the_first_visit_opens_on_the_images(page: Page, site: Site) -> None:
    """A fresh browser (no localStorage): no onboarding tour, no investigational-use dialog."""
    log_in(page, site.server.url, "admin", site.admin_password)
    assert page.evaluate("localStorage.length") == 0
    page.goto(f"{site.server.url}/viewer/viewer?StudyInstanceUIDs={site.studies['CT']}")
    page.wait_for_function(IMAGE_SHOWN, timeout=120_000)
    page.wait_for_selector("[data-cy=viewport-pane]")
    screenshot(page, "viewer-first-visit")
    assert page.query_selector(".shepherd-element") is None, "the onboarding tour opened"
    assert page.query_selector("[data-cy=confirm-and-hide-button]") is None
    assert "investigational use" not in page.inner_text("body").lower()


def test_the_api_docs_render_offline(page: Page, site: Site) -> None:
    """Swagger UI from this server (the loopback-only page fixture fails on any other host)."""
    log_in(page, site.server.url, "admin", site.admin_password)
    page.goto(f"{site.server.url}/api/v1/docs")
    page.wait_for_selector(".opblock-summary", timeout=30_000)
    operations = page.locator(".opblock-summary-path").all_inner_texts()
    assert any("/dicomweb/studies" in path for path in operations), operations[:10]
    screenshot(page, "api-docs")


def test_a_role_that_may_not_read_pixels_cannot_open_the_viewer(page: Page, site: Site) -> None:
    site.server.platform.accounts.create_user("sam", "scheduler", password="scheduler password")
    log_in(page, site.server.url, "sam", "scheduler password")
    response = page.goto(f"{site.server.url}/viewer/viewer?StudyInstanceUIDs={site.studies['CT']}")
    assert response is not None and response.status == 403
    assert not page.query_selector("canvas")
    screenshot(page, "viewer-refused")


def test_a_length_measurement_is_saved_as_a_structured_report(page: Page, site: Site) -> None:
    """Draw a length in OHIF, create the report: a DICOM SR arrives over STOW-RS and QIDO finds it."""
    log_in(page, site.server.url, "admin", site.admin_password)
    ct = site.studies["CT"]
    page.goto(f"{site.server.url}/viewer/viewer?StudyInstanceUIDs={ct}")
    page.wait_for_function(IMAGE_SHOWN, timeout=120_000)
    page.click("[data-cy=MeasurementTools-split-button-primary]")  # the Length tool
    box = page.query_selector("[data-cy=viewport-pane]").bounding_box()  # type: ignore[union-attr]
    assert box is not None
    x, y = box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.5
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 120, y + 40, steps=8)
    page.mouse.up()
    page.click("[data-cy=prompt-begin-tracking-yes-btn]")
    create = page.locator("text=Create SR")
    if not create.is_visible():
        page.click("[data-cy=trackedMeasurements-btn]")  # open the measurements panel
    create.wait_for()
    screenshot(page, "viewer-measurement")
    with page.expect_response(
        lambda r: r.request.method == "POST" and "/dicomweb/studies" in r.url
    ) as stowed:
        create.click()
        page.fill("[data-cy=dialog-input]", "Length report")
        page.click("button:has-text('Save')")
    assert stowed.value.status == 200, stowed.value.text()
    reports = httpx.get(
        f"{site.server.dicomweb}/studies/{ct}/instances",
        params={"Modality": "SR", "includefield": "all"},
        headers=site.server.auth,
    ).json()
    assert len(reports) == 1
    assert "Length report" in json.dumps(reports[0])


def test_the_worklist_is_usable_from_the_keyboard(page: Page, site: Site) -> None:
    """Tab to the patient filter, type, press Enter, then tab to the study's Open link and press Enter."""
    log_in(page, site.server.url, "admin", site.admin_password)
    page.keyboard.press("Tab")  # the skip link first
    focused = page.evaluate("document.activeElement.textContent")
    assert "skip" in focused.lower()
    page.focus("input[name=patient]")
    page.keyboard.type("Demo")
    with page.expect_navigation():
        page.keyboard.press("Enter")  # submits the filter form
    rows = page.locator("table tbody tr")
    assert rows.count() == 1 and "Phantom" in rows.first.inner_text()
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent").startswith("Open"):
            break
    else:
        pytest.fail("the Open link is not reachable with Tab")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.wait_for_function(IMAGE_SHOWN, timeout=120_000)
    assert "/viewer/" in page.url
