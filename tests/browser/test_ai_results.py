"""The AI's result in the bundled OHIF: open a study, see the radiograph with the AI's box and its
score, labelled as AI in the series list, without a click or a prompt.

Three studies hold the same synthetic radiograph (a DX with a fracture) under different UIDs: one
with a fracture report from :func:`radstack.ai.results.fracture_report` (a box around the fracture),
one with a report that found nothing, one with no report. The first must look like the third except
along the box; the second must open on its image as if it had no report. Screenshots are kept in
``test-artifacts/``.
"""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pydicom
import pytest
from numpy.typing import NDArray
from PIL import Image
from playwright.sync_api import Page
from pydicom.uid import generate_uid

from radstack.ai.results import Finding, fracture_report
from radstack.ai.synthetic import Options, generate, to_dataset
from tests import authed
from tests.browser.conftest import ARTIFACTS, IMAGE_SHOWN, log_in, screenshot
from tests.conftest import RunningServer, require_binary, server_settings, start_server
from tests.helpers import dicom_body, stow

pytestmark = pytest.mark.timeout(300)

PASSWORD = "the AI results tester's password"
SCORE_TEXT = "Certainty of Finding: 87.35 %"  # OHIF: "<concept meaning>: <value, 2 decimals> <unit>"
VIEWPORT = "[data-cy=viewport-pane]"


@dataclass
class Site:
    server: RunningServer
    box: tuple[float, float, float, float]
    size: tuple[int, int]  # the radiograph's columns, rows
    studies: dict[str, str] = field(default_factory=dict)  # "finding", "nothing found", "no report"


#: The radiograph: a synthetic lower limb with a fracture, 614 × 750.
RADIOGRAPH = generate(5, 0, Options(scale=0.3, fracture_rate=1.0, rg3_rate=0.0))


def radiograph(name: str) -> pydicom.Dataset:
    """The same synthetic DX with a fracture, as its own study, series and image."""
    ds = to_dataset(RADIOGRAPH, 5)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (generate_uid() for _ in range(3))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.AccessionNumber = name[:16]
    ds.StudyDescription = f"SYNTHETIC AI TEST {name}"
    return ds


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    settings = server_settings(tmp_path_factory.mktemp("ai-results") / "data", dicom_port=0, no_workers=True)
    for server in start_server(settings):
        server.platform.accounts.update_user("admin", password=PASSWORD)
        studies = {}
        for name in ("finding", "nothing found", "no report"):
            image = radiograph(name)
            header = pydicom.Dataset()
            header.update(image)
            del header.PixelData
            datasets = [image]
            if name == "finding":
                # A box around the drawn fracture, wide enough to see at the viewport's scale.
                x0, y0, x1, y1 = RADIOGRAPH.truth["boxes"][0]
                box = (
                    max(0.0, x0 - 40.0),
                    max(0.0, y0 - 40.0),
                    min(image.Columns, x1 + 40.0),
                    min(image.Rows, y1 + 40.0),
                )
                findings = [Finding("fracture", 0.873456, box, image.SOPInstanceUID, generate_uid())]
            else:
                findings = []
            if name != "no report":
                datasets.append(
                    fracture_report(
                        [header],
                        findings,
                        model="fracture",
                        version=3,
                        probability=0.91 if findings else 0.03,
                        series_uid=generate_uid(),
                        sop_uid=generate_uid(),
                    )
                )
            response = stow(server, dicom_body(*datasets))
            assert response.status_code == 200, response.text
            studies[name] = image.StudyInstanceUID
        yield Site(server, box, (image.Columns, image.Rows), studies)


def open_study(page: Page, site: Site, name: str) -> list[str]:
    """Log in, open study ``name`` in OHIF, wait until its image is drawn; the page's uncaught errors."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    log_in(page, site.server.url, "admin", PASSWORD)
    page.goto(f"{site.server.url}/viewer/viewer?StudyInstanceUIDs={site.studies[name]}")
    page.wait_for_function(IMAGE_SHOWN, timeout=120_000)
    return errors


def viewport_pixels(page: Page, name: str) -> NDArray[np.int16]:
    """The viewport as the user sees it (canvas and SVG annotations), saved as a test artifact."""
    ARTIFACTS.mkdir(exist_ok=True)
    png = page.locator(VIEWPORT).first.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.int16)


def drawn_box(page: Page) -> tuple[list[float], list[float]]:
    """Left, top, right, bottom of the box OHIF drew (an SVG polyline over the canvas) and of the
    viewport's canvas, in pixels of the viewport's screenshot."""
    box, canvas = page.evaluate(
        """() => {
          const pane = document.querySelector('[data-cy=viewport-pane]').getBoundingClientRect();
          const line = document.querySelector('[data-cy=viewport-pane] svg polyline');
          const svg = line.ownerSVGElement.getBoundingClientRect();
          const points = line.getAttribute('points').trim().split(/[\\s,]+/).map(Number);
          const xs = points.filter((_, i) => i % 2 === 0), ys = points.filter((_, i) => i % 2 === 1);
          const canvas = document.querySelector('[data-cy=viewport-pane] canvas').getBoundingClientRect();
          return [
            [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)].map(
              (v, i) => v + (i % 2 ? svg.y - pane.y : svg.x - pane.x)),
            [canvas.left - pane.x, canvas.top - pane.y, canvas.right - pane.x, canvas.bottom - pane.y],
          ];
        }"""
    )
    return box, canvas


def test_the_ai_box_and_its_score_are_drawn_when_the_study_opens(page: Page, site: Site) -> None:
    errors = open_study(page, site, "finding")
    score = page.locator("svg text", has_text="Certainty of Finding")
    score.first.wait_for(timeout=60_000)
    page.wait_for_timeout(1500)  # a prompt would have come by now
    with_box = viewport_pixels(page, "viewer-ai-finding")
    screenshot(page, "viewer-ai-finding-page")

    # (b) the score as OHIF writes a NUM next to the box, (c) the series labelled as AI.
    assert SCORE_TEXT in " ".join(score.all_text_contents()).replace("\u00a0", " ")
    assert page.get_by_text("AI fracture v3").count() >= 1
    # No question to answer: neither the SR hydration prompt nor the begin-tracking one.
    body = page.inner_text("body")
    assert "continue tracking measurements" not in body and "track measurements" not in body.lower()
    assert page.locator("[data-cy=yes-hydrate-btn], [data-cy=prompt-begin-tracking-yes-btn]").count() == 0

    # (a) The same radiograph without a report, in the same viewport: the view differs along the
    # drawn box (dashed, so along part of it) and not inside it or just outside it.
    # Where the box should be: OHIF fits the whole image into the canvas, centred. Within a quarter of
    # a screen pixel (OHIF writes the points to 0.1), so a half-pixel error in the convention shows.
    box, canvas = drawn_box(page)
    columns, rows = site.size
    scale = min((canvas[2] - canvas[0]) / columns, (canvas[3] - canvas[1]) / rows)
    x_origin = (canvas[0] + canvas[2] - columns * scale) / 2
    y_origin = (canvas[1] + canvas[3] - rows * scale) / 2
    expected = [x_origin + v * scale if i % 2 == 0 else y_origin + v * scale for i, v in enumerate(site.box)]
    assert box == pytest.approx(expected, abs=0.25), f"drawn at {box}, {site.box} is at {expected}"
    left, top, right, bottom = (round(v) for v in box)
    page.goto(f"{site.server.url}/viewer/viewer?StudyInstanceUIDs={site.studies['no report']}")
    page.wait_for_function(IMAGE_SHOWN, timeout=120_000)
    page.wait_for_timeout(1500)
    without_box = viewport_pixels(page, "viewer-ai-no-report")
    assert with_box.shape == without_box.shape
    difference = np.abs(with_box - without_box)

    def marked(offset: int) -> float:
        """Share of the box's outline, moved ``offset`` pixels outwards, that the report changed."""
        x0, y0, x1, y1 = left - offset, top - offset, right + offset, bottom + offset
        bands = [
            difference[y0 - 1 : y0 + 2, x0 + 3 : x1 - 2].max(axis=0),
            difference[y1 - 1 : y1 + 2, x0 + 3 : x1 - 2].max(axis=0),
            difference[y0 + 3 : y1 - 2, x0 - 1 : x0 + 2].max(axis=1),
            difference[y0 + 3 : y1 - 2, x1 - 1 : x1 + 2].max(axis=1),
        ]
        return float(np.mean(np.concatenate(bands) > 30))

    assert marked(0) > 0.3, f"only {marked(0):.0%} of the box's outline differs from the image without it"
    assert marked(12) < 0.05, f"{marked(12):.0%} of the image around the box differs"
    inside = difference[top + 6 : bottom - 6, left + 6 : right - 6]
    assert inside.mean() < 2, f"the image under the box differs ({inside.mean():.1f})"
    assert errors == [], errors


def test_a_report_that_found_nothing_opens_on_the_image_and_reads_as_text(page: Page, site: Site) -> None:
    errors = open_study(page, site, "nothing found")
    page.wait_for_timeout(1500)
    screenshot(page, "viewer-ai-nothing-found")
    series = page.get_by_text("AI fracture v3")
    assert series.count() >= 1  # the report is listed
    assert page.locator("svg text", has_text="Certainty of Finding").count() == 0  # nothing drawn
    assert "continue tracking measurements" not in page.inner_text("body")
    # Opened, the report reads as text (OHIF's SR viewport would show an error and no image).
    series.first.dblclick()
    page.get_by_text("Qualitative Evaluations").wait_for(timeout=30_000)
    screenshot(page, "viewer-ai-nothing-found-report")
    text = page.locator(VIEWPORT).first.inner_text()
    assert "Fracture of bone: Absent" in " ".join(text.split())
    assert "went wrong" not in page.inner_text("body").lower()
    assert errors == [], errors


def test_a_radiograph_sent_by_c_store_opens_with_the_models_boxes(
    page: Page, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The whole flow: storescu sends a radiograph to a server with the shipped model and its rule; once
    its SR is stored, the study opens in OHIF with the model's boxes and scores drawn, no click."""
    folder = tmp_path_factory.mktemp("c-store")
    path = folder / "radiograph.dcm"
    image = generate(4242, 6)  # a 2500 × 2048 comminuted fracture the shipped model finds
    to_dataset(image, 4242).save_as(path, enforce_file_format=True)
    study = image.truth["study_instance_uid"]
    settings = server_settings(folder / "data", starter_model=True)
    servers = start_server(settings)
    server = next(servers)
    try:
        server.platform.accounts.update_user("admin", password=PASSWORD)
        subprocess.run(
            [
                require_binary("storescu"),
                "-aec",
                settings.ae_title,
                "127.0.0.1",
                str(settings.dicom_port),
                str(path),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while not (results := authed.get(f"{server.url}/api/v1/studies/{study}/ai-results").json()):
            assert time.monotonic() < deadline, "no AI result 30 s after the C-STORE"
            time.sleep(0.1)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        log_in(page, server.url, "admin", PASSWORD)
        page.goto(f"{server.url}/viewer/viewer?StudyInstanceUIDs={study}")
        page.wait_for_function(IMAGE_SHOWN, timeout=120_000)
        scores = page.locator("svg text", has_text="Certainty of Finding")
        scores.first.wait_for(timeout=60_000)
        screenshot(page, "viewer-ai-c-store")
        drawn = sorted(float(text.split(":")[1].split("%")[0]) for text in scores.all_text_contents())
        stored = sorted(round(f["probability"] * 100, 2) for f in results[0]["findings"])
        assert drawn == pytest.approx(stored, abs=0.01)
        assert page.locator("[data-cy=viewport-pane] svg polyline").count() >= len(stored)
        assert page.get_by_text("AI fracture v1").count() >= 1
        assert errors == [], errors
    finally:
        servers.close()
