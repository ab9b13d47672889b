"""A reader's labeling task in the bundled OHIF (issue 14 items 2 and 5), in Chromium.

The reader opens their task from the /labeling page (or its viewer URL): OHIF shows the study with
the project's label list on every measurement. They draw a rectangle on the radiograph (pydicom-data's
RG3, a real CR), pick a label, and "Create SR" stores an Enhanced SR in this server: found by QIDO,
read back by WADO, its measurement a closed 5-point polyline whose label
:func:`radstack.labeling.labels.labels_of_sr` reads and the project's schema knows. A project that shows
AI proposals opens with the AI's box as the reader's own editable measurement, labelled from the list,
saved in the reader's report; one that does not shows nothing of the AI. Screenshots are kept in each
test's temporary directory.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from playwright.sync_api import Page
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from radstack.ai.results import Finding, fracture_report
from radstack.labeling.labels import DrawnLabel, labels_of_seg, labels_of_sr
from radstack.labeling.schema import LabelSchema
from radstack.security.policy import Principal
from tests.browser.conftest import IMAGE_SHOWN, log_in
from tests.conftest import RunningServer, server_settings, start_server
from tests.helpers import dicom_body, response_parts, stow

pytestmark = pytest.mark.timeout(300)

PASSWORD = "the reader's own password"
READER = "rita"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.7"
VIEWPORT = "[data-cy=viewport-pane]"
#: What Cornerstone draws of an annotation (a box, its handles, its text) over the viewport.
DRAWN = f"{VIEWPORT} svg [data-id]"
SCHEMA: dict[str, Any] = {
    "labels": [
        {
            "key": "fracture",
            "code": {"value": "125605004", "scheme": "SCT", "meaning": "Fracture of bone"},
            "geometry": ["box", "point", "mask", "class"],
            "laterality": True,
            "site": True,
        },
        {
            "key": "dislocation",
            "code": {"value": "87642003", "scheme": "SCT", "meaning": "Dislocation of joint"},
            "geometry": ["box", "class"],
        },
    ]
}
#: The label list OHIF must offer: the schema's code meanings, in its order.
LABEL_LIST = ["Fracture of bone", "Dislocation of joint"]
#: The AI's box on RG3 (pixel edges: x0, y0, x1, y1).
AI_BOX = (700.0, 800.0, 1000.0, 1100.0)


@dataclass
class Site:
    server: RunningServer
    #: Project name → its study's radiograph (project "legs": no AI result; "legs-ai": an AI result,
    #: proposals shown; "legs-blind": an AI result, not shown; "legs-labelmap", "legs-bitmap": masks).
    images: dict[str, pydicom.Dataset] = field(default_factory=dict)
    ai_series: dict[str, str] = field(default_factory=dict)


def rg3() -> pydicom.Dataset:
    """pydicom-data's RG3 (a lower-leg CR, 1760²) as a study of its own."""
    path = get_testdata_file("RG3_UNCI.dcm")
    assert isinstance(path, str), "pydicom-data's RG3 is missing"
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (generate_uid() for _ in range(3))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    settings = server_settings(
        tmp_path_factory.mktemp("labeling-ohif") / "data", dicom_port=0, no_workers=True
    )
    for server in start_server(settings):
        platform = server.platform
        # An annotator: a reader who may store (STOW) only the label objects of her tasks.
        platform.accounts.create_user(READER, "annotator", password=PASSWORD)
        built = Site(server)
        for project, show_ai, with_ai in (
            ("legs", False, False),
            ("legs-ai", True, True),
            ("legs-blind", False, True),
            ("legs-labelmap", False, False),
            ("legs-bitmap", False, False),
        ):
            image = rg3()
            datasets = [image]
            if with_ai:
                header = pydicom.Dataset()
                header.update(image)
                del header.PixelData
                finding = Finding("fracture", 0.87, AI_BOX, image.SOPInstanceUID, generate_uid())
                built.ai_series[project] = generate_uid()
                report = fracture_report(
                    [header],
                    [finding],
                    model="fracture",
                    version=3,
                    probability=0.9,
                    series_uid=built.ai_series[project],
                    sop_uid=generate_uid(),
                )
                datasets.append(report)
            response = stow(server, dicom_body(*datasets))
            assert response.status_code == 200, response.text
            platform.labeling.create(
                Principal("admin", "admin", "password"),
                project,
                schema=SCHEMA,
                cohort=[str(image.StudyInstanceUID)],
                readers=[READER],
                show_ai=show_ai,
            )
            built.images[project] = image
        yield built


def task_of(site: Site, project: str) -> dict[str, Any]:
    """The reader's task in ``project`` (as the API gives it to them)."""
    token = site.server.platform.accounts.create_token(READER)
    tasks = httpx.get(
        f"{site.server.url}/api/v1/labeling/tasks",
        params={"project": project},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    [task] = tasks
    return dict(task)


def task_labels(site: Site, task_id: int) -> list[dict[str, Any]]:
    """The task's current labels, as its reader gets them from the API."""
    token = site.server.platform.accounts.create_token(READER)
    response = httpx.get(
        f"{site.server.url}/api/v1/labeling/tasks/{task_id}/labels",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    labels: list[dict[str, Any]] = response.json()["labels"]
    return labels


def open_in_ohif(page: Page, site: Site, viewer_url: str | None = None) -> list[str]:
    """Log in as the reader and open a task (the /labeling page's next case, or ``viewer_url``); wait
    until the image is drawn. The page's uncaught errors."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    log_in(page, site.server.url, READER, PASSWORD)
    if viewer_url is None:
        page.goto(f"{site.server.url}/labeling")
        page.click("a.next-case")
    else:
        page.goto(f"{site.server.url}{viewer_url}")
    page.wait_for_function(IMAGE_SHOWN, timeout=120_000)
    page.wait_for_timeout(1500)  # the hanging protocol, a hydration, a prompt would have come by now
    return errors


def draw_rectangle(page: Page) -> None:
    """Choose OHIF's Rectangle tool and drag a box on the image."""
    page.click("[data-cy=MeasurementTools-split-button-secondary]")
    page.click("[data-cy=RectangleROI]")
    box = page.locator(VIEWPORT).bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.3
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 150, y + 120, steps=10)
    page.mouse.up()


def measurements_panel(page: Page, expected: list[str]) -> list[str]:
    """Open OHIF's measurements panel; the labels of the measurements it lists, once they are
    ``expected`` (or after 10 s)."""
    create = page.locator("text=Create SR")
    if not create.is_visible():
        page.click("[data-cy=trackedMeasurements-btn]")
    if expected:
        create.wait_for(timeout=30_000)
    titles: list[str] = []
    for _ in range(50):
        titles = [text.strip() for text in page.locator("[data-cy=data-row-title]").all_inner_texts()]
        if titles == expected:
            break
        page.wait_for_timeout(200)
    return titles


def create_sr(page: Page, name: str) -> None:
    """OHIF's "Create SR": a new series named ``name``, stored over STOW-RS into this server."""
    with page.expect_response(
        lambda r: r.request.method == "POST" and "/dicomweb/studies" in r.url, timeout=60_000
    ) as stowed:
        page.locator("text=Create SR").click()
        page.fill("[data-cy=dialog-input]", name)
        page.click("button:has-text('Save')")
    assert stowed.value.status == 200, stowed.value.text()


def stored_report(
    site: Site, study: str, series_description: str | None, modality: str = "SR"
) -> pydicom.Dataset:
    """The one SR (or ``modality``) of ``study`` named ``series_description`` (None: the one of that
    modality): found by QIDO, retrieved by WADO-RS."""
    server = site.server
    found = httpx.get(
        f"{server.dicomweb}/studies/{study}/instances",
        params={"Modality": modality, "includefield": "0008103E"},
        headers=server.auth,
    ).json()
    named = [
        m
        for m in found
        if series_description is None or m.get("0008103E", {}).get("Value") == [series_description]
    ]
    assert len(named) == 1, found
    series, sop = named[0]["0020000E"]["Value"][0], named[0]["00080018"]["Value"][0]
    response = httpx.get(
        f"{server.dicomweb}/studies/{study}/series/{series}/instances/{sop}",
        headers={**server.auth, "Accept": 'multipart/related; type="application/dicom"'},
    )
    assert response.status_code == 200, response.text
    [(_content_type, body)] = response_parts(response)
    return pydicom.dcmread(io.BytesIO(body))


def polylines(ds: pydicom.Dataset) -> list[list[float]]:
    """GraphicData of every POLYLINE SCOORD in the report's content tree."""
    found: list[list[float]] = []
    for item in ds.get("ContentSequence", []):
        if item.ValueType == "SCOORD" and item.GraphicType == "POLYLINE":
            found.append([float(v) for v in item.GraphicData])
        found += polylines(item)
    return found


def schema_keys(labels: list[DrawnLabel]) -> list[str | None]:
    schema = LabelSchema.from_json(SCHEMA)
    return [(label.key if (label := schema.find(drawn.text)) else None) for drawn in labels]


def test_a_reader_labels_a_box_from_the_list_and_saves_an_enhanced_sr(
    page: Page, site: Site, tmp_path: Path
) -> None:
    task = task_of(site, "legs")
    errors = open_in_ohif(page, site)  # the /labeling page's "Next case"
    assert f"customization=/task/{task['id']}" in page.url
    draw_rectangle(page)
    # Every new measurement asks for a label, from the project's list only.
    items = page.locator("[role=dialog] [cmdk-item]")
    items.first.wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "label-list.png"))
    assert [text.strip() for text in items.all_inner_texts()] == LABEL_LIST
    page.click("[role=dialog] [cmdk-item][data-value='Fracture of bone']")
    # No "track measurements?" question; the labelled box is in the report's measurements.
    assert page.locator("[data-cy=prompt-begin-tracking-yes-btn]").count() == 0
    assert measurements_panel(page, ["Fracture of bone"]) == ["Fracture of bone"]
    page.screenshot(path=str(tmp_path / "labelled-box.png"))
    create_sr(page, "Reader labels")
    page.screenshot(path=str(tmp_path / "saved.png"))

    image = site.images["legs"]
    report = stored_report(site, str(image.StudyInstanceUID), "Reader labels")
    assert report.SOPClassUID == ENHANCED_SR
    [polyline] = polylines(report)
    assert len(polyline) == 10 and polyline[:2] == polyline[-2:]  # a closed 5-point polyline
    [drawn] = labels_of_sr(report)
    assert drawn.geometry == "box" and drawn.sop_uid == image.SOPInstanceUID
    x0, y0, x1, y1 = drawn.data["box"]
    assert 0 <= x0 < x1 <= image.Columns and 0 <= y0 < y1 <= image.Rows and x1 - x0 > 100
    assert schema_keys([drawn]) == ["fracture"]
    # The SR became the labels of the reader's task (the intake), with the box where it was drawn.
    [on_task] = task_labels(site, task["id"])
    assert (on_task["label"], on_task["geometry"], on_task["source"]) == ("fracture", "box", "sr")
    assert on_task["data"]["box"] == [x0, y0, x1, y1] and on_task["source_uid"] == report.SOPInstanceUID
    assert errors == [], errors


def test_ai_proposals_open_as_the_readers_own_editable_boxes(page: Page, site: Site, tmp_path: Path) -> None:
    """show_ai: the AI's box is loaded without a question as a measurement labelled from the list;
    kept, it is saved with the reader's own box in the reader's report (a series of its own)."""
    task = task_of(site, "legs-ai")
    errors = open_in_ohif(page, site, task["viewer_url"])
    assert page.locator("[data-cy=yes-hydrate-btn]").count() == 0  # not asked
    assert page.locator(DRAWN).count() > 0
    assert measurements_panel(page, ["Fracture of bone"]) == ["Fracture of bone"]
    page.screenshot(path=str(tmp_path / "ai-proposal.png"))
    draw_rectangle(page)
    page.click("[role=dialog] [cmdk-item][data-value='Dislocation of joint']")
    both = ["Fracture of bone", "Dislocation of joint"]
    assert measurements_panel(page, both) == both
    page.screenshot(path=str(tmp_path / "ai-proposal-and-own-box.png"))
    create_sr(page, "Reader labels with AI")

    image = site.images["legs-ai"]
    report = stored_report(site, str(image.StudyInstanceUID), "Reader labels with AI")
    assert report.SOPClassUID == ENHANCED_SR
    assert report.SeriesInstanceUID != site.ai_series["legs-ai"]
    assert "PredecessorDocumentsSequence" not in report  # not a new version of the AI's report
    labels = labels_of_sr(report)
    assert schema_keys(labels) == ["fracture", "dislocation"]
    assert labels[0].data == {"box": list(AI_BOX)}  # the AI's box, unchanged
    assert all(len(line) == 10 and line[:2] == line[-2:] for line in polylines(report))
    assert errors == [], errors


def test_without_ai_proposals_nothing_of_the_ai_is_shown(page: Page, site: Site, tmp_path: Path) -> None:
    task = task_of(site, "legs-blind")
    errors = open_in_ohif(page, site, task["viewer_url"])
    page.screenshot(path=str(tmp_path / "no-ai.png"))
    assert page.get_by_text("AI fracture v3").count() == 0  # not listed
    assert page.locator(DRAWN).count() == 0  # nothing drawn
    assert measurements_panel(page, []) == []
    assert errors == [], errors


@pytest.mark.parametrize(
    ("project", "customization", "sop_class"),
    [
        ("legs-labelmap", "", LABEL_MAP_SEGMENTATION),  # OHIF's default: Label Map, RLE
        # Bitmap, as OHIF's own URL customizations make it; uncompressed, because OHIF 3.13.2 writes a
        # 1-bit RLE that nothing decodes (this server refuses it: docs/viewer.md).
        ("legs-bitmap", ",segmentation/binary,segmentation/uncompressed", SEGMENTATION),
    ],
)
def test_a_mask_painted_on_the_radiograph_is_stored_as_a_seg(
    page: Page, site: Site, tmp_path: Path, project: str, customization: str, sop_class: str
) -> None:
    """OHIF's segmentation mode on a single-frame CR (OHIF issue 5406 doubted it): the reader adds a
    segmentation, paints with the brush, names the segment after a label of the project, and
    "Export > DICOM SEG > Save" stores a SEG of that image here, which labels_of_seg reads as a mask."""
    task = task_of(site, project)
    url = task["viewer_url"].replace("/viewer/viewer?", "/viewer/segmentation?") + customization
    errors = open_in_ohif(page, site, url)
    page.click("[data-cy=addSegmentation]")
    page.click("[data-cy=Brush]")
    box = page.locator(VIEWPORT).bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.4
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(30):
        page.mouse.move(x + 3 * step, y + 2 * step)
    page.mouse.up()
    segment = page.locator("[data-cy=data-row]").first
    segment.hover()
    segment.locator("[data-cy=actionsMenuTrigger]").click()
    page.locator("[role=menuitem]", has_text="Rename").first.click()
    page.fill("[role=dialog] input", "Fracture of bone")
    page.locator("[role=dialog] button", has_text="Save").first.click()
    page.screenshot(path=str(tmp_path / "painted.png"))
    page.click("[data-cy=segmentation-collapsed-more-btn-Labelmap]")
    page.locator("[role=menuitem]", has_text="Export").first.hover()
    page.locator("[role=menuitem]", has_text="DICOM SEG").first.click()
    with page.expect_response(
        lambda r: r.request.method == "POST" and "/dicomweb/studies" in r.url, timeout=60_000
    ) as stowed:
        page.locator("[role=dialog] button", has_text="Save").first.click()
    assert stowed.value.status == 200, stowed.value.text()
    page.screenshot(path=str(tmp_path / "stored.png"))

    image = site.images[project]
    seg = stored_report(site, str(image.StudyInstanceUID), None, modality="SEG")
    assert seg.SOPClassUID == sop_class
    [mask] = labels_of_seg(seg)
    assert mask.geometry == "mask" and mask.sop_uid == image.SOPInstanceUID and (mask.frame or 1) == 1
    assert schema_keys([mask]) == ["fracture"]
    rle = mask.data["mask"]["rle"]
    assert rle["size"] == [image.Rows, image.Columns]
    assert sum(rle["counts"][1::2]) > 1000  # the painted stroke
    # The SEG became the mask label of the reader's task (the intake).
    [on_task] = task_labels(site, task["id"])
    assert (on_task["label"], on_task["geometry"], on_task["source"]) == ("fracture", "mask", "seg")
    assert on_task["data"]["mask"]["rle"] == rle
    assert errors == [], errors
