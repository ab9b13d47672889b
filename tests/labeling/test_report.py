"""Agreement figures of a labeling project (``labeling/report.py``) equal hand-computed values on a fixed
example read through the service as readers read, with the consensus as a reviewer leaves it; undefined
figures are null with their reason; who may see them; the API and the project page with its plots."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset

from radstack.config import Settings
from radstack.errors import BadRequest, Forbidden, NotFound
from radstack.labeling.report import AgreementReport, LabelFigures
from radstack.platform import Platform
from radstack.security.policy import Principal
from tests import authed
from tests.ai.results import ingest, radiograph
from tests.conftest import RunningServer, start_server
from tests.labeling.labeled import (
    OWNER,
    READERS,
    REVIEWER,
    box,
    consensus,
    make_project,
    mask,
    present,
    read,
    skip,
)

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def platform(settings: Settings) -> Iterator[Platform]:
    opened = Platform.open(settings)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def studies(platform: Platform) -> list[Dataset]:
    stored = [radiograph(seed) for seed in range(1, 8)]  # 96 rows × 80 columns each
    ingest(platform.store, *stored)
    return stored


def pair_project(platform: Platform, studies: list[Dataset]) -> None:
    """Two readers on every study (rita listed first, so she is Cohen's reader a); τ = 0.5.

    ============  ==================================  ==============================  ==============
    study         rita                                raj                             consensus
    ============  ==================================  ==============================  ==============
    1             box [10,10,30,30], mask rows 0-9    box [12,10,32,30], mask 5-14     box [11,10,31,30]
    2             box [40,40,60,60]                   nothing                         box [40,40,60,60]
    3             nothing                             nothing                         nothing
    4             boxes [10,10,30,30], [50,50,60,60],  box [20,10,40,30]               box [10,10,30,30]
                  mask rows 0-9
    5             nothing                             fracture (class)                –
    6             nothing                             nothing                         –
    7             fracture (class)                    skipped                         –
    ============  ==================================  ==============================  ==============
    """
    service = platform.labeling
    make_project(service, "pair", studies, ["rita", "raj"], 2)
    s1, s2, s3, s4, s5, s6, s7 = studies
    read(service, "pair", s1, "rita", [box(s1, [10, 10, 30, 30]), mask(s1, slice(0, 10), slice(0, 10))])
    read(service, "pair", s1, "raj", [box(s1, [12, 10, 32, 30]), mask(s1, slice(5, 15), slice(0, 10))])
    read(service, "pair", s2, "rita", [box(s2, [40, 40, 60, 60])])
    read(service, "pair", s2, "raj", [])
    read(service, "pair", s3, "rita", [])
    read(service, "pair", s3, "raj", [present(s3, "fracture", "absent")])  # absent, said explicitly
    read(
        service,
        "pair",
        s4,
        "rita",
        [box(s4, [10, 10, 30, 30]), box(s4, [50, 50, 60, 60]), mask(s4, slice(0, 10), slice(0, 10))],
    )
    read(service, "pair", s4, "raj", [box(s4, [20, 10, 40, 30])])
    read(service, "pair", s5, "rita", [])
    read(service, "pair", s5, "raj", [present(s5)])
    read(service, "pair", s6, "rita", [])
    read(service, "pair", s6, "raj", [])
    read(service, "pair", s7, "rita", [present(s7)])
    skip(service, "pair", s7, "raj")
    consensus(service, "pair", s1, [box(s1, [11, 10, 31, 30])])
    consensus(service, "pair", s2, [box(s2, [40, 40, 60, 60])])
    consensus(service, "pair", s3, [])
    consensus(service, "pair", s4, [box(s4, [10, 10, 30, 30])])


def _label(report: AgreementReport, key: str) -> LabelFigures:
    return next(label for label in report.labels if label.key == key)


def test_two_readers_agreement_equals_the_hand_computed_figures(
    platform: Platform, studies: list[Dataset]
) -> None:
    pair_project(platform, studies)
    report = platform.labeling_agreement.report(OWNER, "pair")
    assert (report.items, report.items_read, report.reads, report.gold_items) == (7, 7, 13, 4)
    fracture = _label(report, "fracture")
    # Presence of a fracture on the six studies both read (study 7's second read is missing):
    #   rita a = [T, T, F, T, F, F], raj b = [T, F, F, T, T, F] (raj's "absent" class on 3 is absence).
    assert (fracture.items, fracture.reads, fracture.positive_reads) == (7, 13, 7)
    # Cohen: p_o = 4/6 (studies 1, 3, 4, 6 agree); each reader says yes 3 of 6 times, so
    #   p_e = ½·½ + ½·½ = ½ and κ = (2/3 − 1/2) / (1 − 1/2) = 1/3.
    assert fracture.cohen_kappa.value == pytest.approx(1 / 3)
    assert fracture.cohen_kappa.n == 6
    # Fleiss with n = 2: P_i = 1 where both agree, 0 otherwise: P̄ = 4/6; p_yes = 6/12, P̄_e = ½:
    #   κ = (2/3 − 1/2) / (1/2) = 1/3.
    assert fracture.fleiss_kappa.value == pytest.approx(1 / 3)
    assert fracture.fleiss_kappa.n == 6
    # Krippendorff (nominal): study 7 has one value and is not pairable. Coincidences, each unit weighing
    #   1/(2 − 1): o_TT = 4 (studies 1, 4), o_FF = 4 (3, 6), o_TF = o_FT = 2 (2, 5); n_T = n_F = 6, n = 12:
    #   α = 1 − (n − 1)·(o_TF + o_FT) / (n_T·n_F·2) = 1 − 11·4/72 = 7/18.
    assert fracture.krippendorff_alpha.value == pytest.approx(7 / 18)
    assert fracture.krippendorff_alpha.n == 6
    # Boxes, rita against raj on each image where either drew one (τ = 0.5):
    #   study 1: [10,10,30,30] vs [12,10,32,30]: overlap 18·20 = 360, union 400 + 400 − 360 = 440,
    #            IoU 9/11 ≥ 0.5: a match;
    #   study 2: one box against none;  study 4: [10,10,30,30] vs [20,10,40,30]: 10·20 = 200 over
    #            600 = 1/3 < 0.5, and [50,50,60,60] overlaps nothing.
    #   Boxes 2 + 1 + 3 = 6, matches 1: F1 = 2·1/6 = 1/3; mean IoU of the matched pairs = 9/11.
    boxes = fracture.boxes
    assert boxes is not None
    assert (boxes.comparisons, boxes.boxes, boxes.matches) == (3, 6, 1)
    assert boxes.f1.value == pytest.approx(1 / 3) and boxes.f1.n == 3
    assert boxes.mean_iou.value == pytest.approx(9 / 11) and boxes.mean_iou.n == 3
    # At any overlap: 9/11 in (0.8, 0.9], 1/3 in (0.3, 0.4]; [50,50,60,60] and study 2's box unmatched.
    assert boxes.iou_histogram == (0, 0, 0, 1, 0, 0, 0, 0, 1, 0)
    assert boxes.unmatched == 2
    # Masks: study 1 rows 0–9 vs 5–14 (10 columns): 50 common of 100 + 100: Dice 0.5; study 4: rita's
    #   100 pixels against nothing: 0. Mean 0.25 over 2 studies.
    assert fracture.dice is not None
    assert fracture.dice.value == pytest.approx(0.25) and fracture.dice.n == 2
    # Against the consensus of studies 1–4 (fracture on 1, 2, 4; none on 3):
    rita, raj = fracture.readers
    assert (rita.reader, rita.items, raj.reader, raj.items) == ("rita", 4, "raj", 4)
    # rita: yes on 1, 2, 4 and no on 3: sensitivity 3/3, specificity 1/1.
    assert (rita.sensitivity.successes, rita.sensitivity.n, rita.sensitivity.value) == (3, 3, 1.0)
    assert (rita.specificity.successes, rita.specificity.n) == (1, 1)
    # raj misses 2: 2/3, Wilson 95 %: z = 1.96, centre (2/3 + z²/6)/(1 + z²/3) = 0.5731,
    #   half-width z·√(2/27 + z²/36)/(1 + z²/3) = 0.3654: (0.2077, 0.9385).
    assert raj.sensitivity.value == pytest.approx(2 / 3)
    assert raj.sensitivity.ci95 == pytest.approx((0.2077, 0.9385), abs=1e-3)
    # Box sensitivity at τ: rita's boxes find all 3 gold boxes ([10,10,30,30] vs [11,10,31,30]: 380/420),
    #   her [50,50,60,60] is a false positive; raj finds study 1's only (study 4's is IoU 1/3), with 1 FP.
    assert rita.box_sensitivity is not None and raj.box_sensitivity is not None
    assert (rita.box_sensitivity.successes, rita.box_sensitivity.n, rita.false_positive_boxes) == (3, 3, 1)
    assert (raj.box_sensitivity.successes, raj.box_sensitivity.n, raj.false_positive_boxes) == (1, 3, 1)
    # Nobody found a dislocation: every chance-corrected figure is undefined, with its reason.
    dislocation = _label(report, "dislocation")
    for figure in (dislocation.cohen_kappa, dislocation.fleiss_kappa, dislocation.krippendorff_alpha):
        assert figure.value is None and figure.reason is not None and "no variation" in figure.reason
    assert dislocation.boxes is None and dislocation.dice is None
    assert dislocation.readers[0].sensitivity.value is None
    assert "none of the items" in (dislocation.readers[0].sensitivity.reason or "")
    # τ is the caller's: at 0.3 study 4's pair matches too, F1 = 2·2/6, mean IoU (9/11 + 1/3)/2.
    loose = _label(platform.labeling_agreement.report(OWNER, "pair", 0.3), "fracture").boxes
    assert loose is not None and loose.f1.value == pytest.approx(2 / 3)
    assert loose.mean_iou.value == pytest.approx((9 / 11 + 1 / 3) / 2)


def test_three_readers_fleiss_and_alpha_with_a_missing_read(
    platform: Platform, studies: list[Dataset]
) -> None:
    """Three readers per study; presence of a fracture:

    study 1: T T T; 2: T T F; 3: F F F; 4: F F F; 5: T T and rex skipped (missing).
    """
    service = platform.labeling
    make_project(service, "triple", studies[:5], ["rita", "raj", "rex"], 3)
    s1, s2, s3, s4, s5 = studies[:5]
    for reader in ("rita", "raj", "rex"):
        read(service, "triple", s1, reader, [present(s1)])
        read(service, "triple", s3, reader, [])
        read(service, "triple", s4, reader, [])
    read(service, "triple", s2, "rita", [present(s2)])
    read(service, "triple", s2, "raj", [box(s2, [1, 1, 9, 9])])
    read(service, "triple", s2, "rex", [])
    read(service, "triple", s5, "rita", [present(s5)])
    read(service, "triple", s5, "raj", [present(s5)])
    skip(service, "triple", s5, "rex")
    fracture = _label(platform.labeling_agreement.report(REVIEWER, "triple"), "fracture")
    assert fracture.cohen_kappa.value is None
    assert "exactly 2 readers per item; this project has 3" in (fracture.cohen_kappa.reason or "")
    # Fleiss on the 4 complete studies, n = 3: P_i = 1, (4 + 1 − 3)/6 = 1/3, 1, 1: P̄ = 5/6;
    #   p_yes = 5/12, p_no = 7/12: P̄_e = (25 + 49)/144 = 37/72; κ = (5/6 − 37/72)/(35/72) = 23/35.
    assert fracture.fleiss_kappa.value == pytest.approx(23 / 35) and fracture.fleiss_kappa.n == 4
    # Krippendorff on all 5 (study 5 has 2 values): units of 3 weigh 1/2, of 2 weigh 1:
    #   o_TT = 3 (study 1) + 1 (2) + 2 (5) = 6, o_TF = o_FT = 1 (2), o_FF = 3 + 3 (3, 4);
    #   n_T = 7, n_F = 7, n = 14: α = 1 − 13·2/(7·7·2) = 36/49.
    assert fracture.krippendorff_alpha.value == pytest.approx(36 / 49)
    assert fracture.krippendorff_alpha.n == 5
    # Only raj drew a box: F1 over pairs (rita, raj) and (raj, rex) on study 2: 0 matches of 2 boxes.
    assert fracture.boxes is not None and fracture.boxes.f1.value == 0.0
    assert fracture.boxes.mean_iou.value is None and "no pair" in (fracture.boxes.mean_iou.reason or "")
    # No consensus yet: each reader's figures say so.
    assert all(r.sensitivity.value is None and r.items == 0 for r in fracture.readers)
    assert "no item this reader read has a consensus" in (fracture.readers[0].sensitivity.reason or "")


def test_one_reader_per_item_has_no_agreement_and_readers_see_no_figures(
    platform: Platform, studies: list[Dataset]
) -> None:
    service = platform.labeling
    make_project(service, "solo", studies[:2], ["rita"], 1)
    read(service, "solo", studies[0], "rita", [box(studies[0], [1, 1, 9, 9])])
    fracture = _label(platform.labeling_agreement.report(OWNER, "solo"), "fracture")
    for figure in (fracture.cohen_kappa, fracture.fleiss_kappa, fracture.krippendorff_alpha, fracture.dice):
        assert figure is not None and figure.value is None
        assert "one reader per item" in (figure.reason or "")
    assert fracture.boxes is not None and fracture.boxes.f1.value is None
    # Readers do not see each other's work, so not the figures either; outsiders not the project.
    with pytest.raises(Forbidden, match="only the owner or reviewer"):
        platform.labeling_agreement.report(READERS["rita"], "solo")
    with pytest.raises(NotFound):
        platform.labeling_agreement.report(Principal("otto", "annotator", "token"), "solo")
    with pytest.raises(BadRequest, match=r"iou 0 must be a number in \(0, 1\]"):
        platform.labeling_agreement.report(OWNER, "solo", 0)


# ----------------------------------------------------------------------------- HTTP
@pytest.fixture
def server(settings: Settings) -> Iterator[RunningServer]:
    yield from start_server(settings)


def _token(server: RunningServer, user: str, role: str) -> dict[str, str]:
    server.platform.accounts.create_user(user, role)
    return {"Authorization": f"Bearer {server.platform.accounts.create_token(user)}"}


def test_the_api_and_the_project_page_show_the_figures_and_plots(server: RunningServer) -> None:
    platform = server.platform
    studies = [radiograph(seed) for seed in range(1, 8)]
    ingest(platform.store, *studies)
    pair_project(platform, studies)
    dana = _token(server, "dana", "data-scientist")
    rita = _token(server, "rita", "annotator")
    answer = authed.get(f"{server.url}/api/v1/labeling/projects/pair/agreement", headers=dana)
    assert answer.status_code == 200, answer.text
    document: dict[str, Any] = answer.json()
    assert document == platform.labeling_agreement.report(OWNER, "pair").to_json()
    fracture = document["labels"][0]
    assert fracture["cohen_kappa"] == {"value": pytest.approx(1 / 3), "n": 6, "reason": None}
    assert fracture["boxes"]["f1"]["value"] == pytest.approx(1 / 3)
    assert document["labels"][1]["cohen_kappa"]["value"] is None
    loose = authed.get(f"{server.url}/api/v1/labeling/projects/pair/agreement?iou=0.3", headers=dana).json()
    assert loose["iou_threshold"] == 0.3 and loose["labels"][0]["boxes"]["matches"] == 2
    bad = authed.get(f"{server.url}/api/v1/labeling/projects/pair/agreement?iou=1.5", headers=dana)
    assert bad.status_code == 400
    refused = authed.get(f"{server.url}/api/v1/labeling/projects/pair/agreement", headers=rita)
    assert refused.status_code == 403 and "owner or reviewer" in refused.json()["detail"]

    # The /labeling page links the project; its page has the figures and the plots, inline.
    listing = authed.get(f"{server.url}/labeling", headers=dana)
    assert 'href="/labeling/projects/pair"' in listing.text
    page = authed.get(f"{server.url}/labeling/projects/pair", headers=dana)
    assert page.status_code == 200
    html = page.text
    assert "0.333 <span" in html and "(n=6)" in html  # Cohen's κ of fracture, with its n
    assert 'title="no variation: every read says absent' in html  # dislocation, undefined, with why
    svgs = [html[start : html.index("</svg>", start) + 6] for start in _starts(html, "<svg")]
    titles = []
    for svg in svgs:
        root = ET.fromstring(svg)
        titles.append(root.findtext(f"{SVG}title") or "")
        assert root.get("role") == "img"
    assert any(t.startswith("Agreement per label. fracture: Cohen's κ 0.33 (n=6)") for t in titles)
    assert any(
        t.startswith("Sensitivity per reader for fracture. rita: 1.00, 95% CI 0.44–1.00") for t in titles
    )
    assert any("0.8–0.9: 1" in t and "0.3–0.4: 1" in t for t in titles)  # the IoU histogram
    assert "http" not in "".join(svgs).replace("http://www.w3.org/2000/svg", "")  # nothing from elsewhere
    # A reader sees the project's page without its figures.
    readers_page = authed.get(f"{server.url}/labeling/projects/pair", headers=rita)
    assert readers_page.status_code == 200 and "<svg" not in readers_page.text
    assert "only the owner or reviewer" in readers_page.text


def _starts(text: str, needle: str) -> list[int]:
    found, at = [], text.find(needle)
    while at >= 0:
        found.append(at)
        at = text.find(needle, at + 1)
    return found
