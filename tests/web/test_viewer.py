"""The OHIF viewer: the pinned build fetched, verified and cached; served at /viewer/ behind auth."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from radstack.ai.results import Finding, fracture_report
from radstack.ai.synthetic import Options, generate, to_dataset
from radstack.cli import main
from radstack.config import Settings
from radstack.security.policy import ActionValues, Principal, RoleDef
from radstack.web.ohif import (
    OHIF_INTEGRITY,
    STAMP,
    ViewerFetchError,
    _npm_pack,
    fetch_viewer,
    installed,
    integrity_of,
    viewer_dir,
)
from radstack.web.viewer import FRAME_ACCEPT, app_config, app_config_js
from tests import authed
from tests.ai.results import radiograph
from tests.conftest import IN_CI, RunningServer, require_binary, server_settings, start_server
from tests.helpers import dicom_body, instance_url, response_parts, stow, synthetic_ct
from tests.web.test_labeling import SCHEMA


def _unavailable(error: ViewerFetchError) -> None:
    if IN_CI:
        pytest.fail(f"the OHIF build could not be fetched: {error}")
    pytest.skip(f"the OHIF build could not be fetched (no npm registry?): {error}")


@pytest.fixture(scope="session")
def ohif_dir() -> Path:
    """The viewer in its cache (RADSTACK_OHIF_DIR or ~/.cache), fetched once if missing."""
    directory = viewer_dir(Settings().ohif_dir)
    try:
        fetch_viewer(directory)
    except ViewerFetchError as error:
        _unavailable(error)
    return directory


@pytest.fixture(scope="session")
def ohif_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned tarball as ``npm pack`` downloads it (from npm's own cache after the first time)."""
    try:
        return _npm_pack("npm", tmp_path_factory.mktemp("ohif-tarball"))
    except ViewerFetchError as error:
        _unavailable(error)
        raise


@pytest.fixture
def viewer_server(tmp_path: Path, ohif_dir: Path) -> Iterator[RunningServer]:
    yield from start_server(server_settings(tmp_path / "data", ohif_dir=ohif_dir))


def _config(server: RunningServer) -> dict[str, object]:
    response = authed.get(f"{server.url}/viewer/app-config.js")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/javascript")
    match = re.search(r"window\.config = (\{.*?\n\});\n", response.text, re.S)
    assert match is not None, response.text
    config: dict[str, object] = json.loads(match.group(1))
    return config


def _bundle(index_html: str) -> str:
    match = re.search(r'src="/viewer/(app\.bundle\.[0-9a-f]{16}\.js)"', index_html)
    assert match is not None, index_html[-2000:]
    return match.group(1)


# ----------------------------------------------------------------------------- fetch
def test_the_fetched_build_is_pinned_verified_and_cached(ohif_dir: Path) -> None:
    assert installed(ohif_dir)
    stamp = json.loads((ohif_dir / STAMP).read_text())
    assert stamp["version"] == "3.13.2" and stamp["integrity"] == OHIF_INTEGRITY
    # A second fetch finds the cache and runs nothing: npm is not even looked up.
    again = fetch_viewer(ohif_dir, npm="/nonexistent/npm")
    assert again.fetched is False


def test_the_pinned_integrity_is_that_of_the_registry_tarball(ohif_tarball: Path, tmp_path: Path) -> None:
    assert integrity_of(ohif_tarball) == OHIF_INTEGRITY
    (tmp_path / "ohif").mkdir()
    (tmp_path / "ohif" / "left-over.js").write_text("an unfinished copy, without a stamp")
    result = fetch_viewer(tmp_path / "ohif", tarball=ohif_tarball)
    assert result.fetched and installed(tmp_path / "ohif")
    index = (tmp_path / "ohif" / "index.html").read_text()
    assert 'window.PUBLIC_URL="/viewer/"' in index and 'PUBLIC_URL="/"' not in index
    assert not re.search(r'(src|href)="/(?!viewer/)', index)
    assert '<link crossorigin="use-credentials" rel="manifest" href="/viewer/manifest.json">' in index
    assert "url(/viewer/" in (tmp_path / "ohif" / "app.bundle.css").read_text()
    assert not re.search(r"url\(/(?!viewer/)", (tmp_path / "ohif" / "app.bundle.css").read_text())
    assert '"src": "/assets/' not in (tmp_path / "ohif" / "manifest.json").read_text()
    scripts = [p.read_text(errors="replace") for p in (tmp_path / "ohif").glob("*.js")]
    assert not any('__webpack_require__.p = "/";' in code for code in scripts)
    assert sum('__webpack_require__.p = "/viewer/";' in code for code in scripts) >= 1
    assert not (tmp_path / "ohif" / "package.json").exists()  # only dist/ is extracted
    assert not (tmp_path / "ohif" / "left-over.js").exists()  # an incomplete cache is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ohif"]  # no work directory left behind


def test_a_corrupted_tarball_is_refused_and_leaves_no_cache(
    ohif_tarball: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "ohif-app-3.13.2.tgz"
    shutil.copyfile(ohif_tarball, bad)
    with bad.open("r+b") as stream:
        stream.seek(bad.stat().st_size // 2)
        byte = stream.read(1)
        stream.seek(-1, 1)
        stream.write(bytes([byte[0] ^ 0xFF]))
    cache = tmp_path / "cache" / "3.13.2"
    assert main(["viewer", "fetch", "--cache", str(cache), "--tarball", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and OHIF_INTEGRITY in err
    assert not cache.exists()
    assert list((tmp_path / "cache").iterdir()) == []  # the temporary extraction is gone too
    with pytest.raises(ViewerFetchError, match="checksum mismatch"):
        fetch_viewer(cache, tarball=bad)


# ----------------------------------------------------------------------------- serving
def test_viewer_serves_index_html_with_rewritten_paths(viewer_server: RunningServer) -> None:
    response = authed.get(f"{viewer_server.url}/viewer/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert 'window.PUBLIC_URL="/viewer/"' in response.text
    assert 'src="/viewer/app-config.js"' in response.text
    _bundle(response.text)
    assert response.headers["x-frame-options"] == "SAMEORIGIN"
    bare = authed.get(f"{viewer_server.url}/viewer", follow_redirects=False)
    assert bare.status_code == 308 and bare.headers["location"] == "/viewer/"


def test_app_config_points_at_same_origin_dicomweb_with_stow_and_htj2k(viewer_server: RunningServer) -> None:
    config = _config(viewer_server)
    assert config["routerBasename"] == "/viewer"
    sources = config["dataSources"]
    assert isinstance(sources, list) and len(sources) == 1
    assert sources[0]["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    assert config["defaultDataSourceName"] == sources[0]["sourceName"]
    source = sources[0]["configuration"]
    root = f"{viewer_server.url}/dicomweb"
    assert (source["qidoRoot"], source["wadoRoot"], source["wadoUriRoot"]) == (root, root, root)
    assert source["supportsStow"] is True
    assert source["imageRendering"] == source["thumbnailRendering"] == "wadors"
    assert source["enableStudyLazyLoad"] is True and source["supportsFuzzyMatching"] is True
    assert source["omitQuotationForMultipartRequest"] is True
    assert "1.2.840.10008.1.2.4.202" in source["acceptHeader"][0]
    assert "transfer-syntax=*" in source["acceptHeader"][-1]


def test_the_first_visit_opens_without_tour_or_investigational_use_dialog(
    viewer_server: RunningServer,
) -> None:
    """What a product bundling OHIF configures (OHIF 3.13.2's own keys; the browser test sees it)."""
    config = _config(viewer_server)
    assert config["investigationalUseDialog"] == {"option": "never"}
    assert config["customizationService"] == {"global": {"ohif.tours": []}}


def naturalized(ds: pydicom.Dataset) -> dict[str, object]:
    """``ds`` keyed by keyword with sequences as lists, as OHIF holds an instance's metadata (dcmjs)."""
    out: dict[str, object] = {}
    for element in ds:
        if element.keyword and element.VR == "SQ":
            out[element.keyword] = [naturalized(item) for item in element.value]
        elif element.keyword and element.keyword != "PixelData":
            out[element.keyword] = str(element.value)
    return out


#: Runs the generated app-config.js in node with stand-ins for OHIF's services and reports what its
#: extensions and customizations do with the display sets given on the command line, on a page whose
#: customizations (a labeling task's ``global`` values, or none) are given too.
_HARNESS = """
global.window = {};
require(process.argv[2]);
const config = window.config;
const displaySets = require(process.argv[3]);
const customizations = require(process.argv[4]);
const extension = config.extensions.find(e => e.id === '@radstack/extension-ai-results');
const attributes = {};
const ohifDefault = {
  id: 'default',
  displaySetSelectors: {defaultDisplaySetId: {seriesMatchingRules: [
    {weight: 10, attribute: 'numImageFrames', constraint: {greaterThan: {value: 0}}},
    {attribute: 'isDisplaySetFromUrl', weight: 20, constraint: {equals: true}},
  ]}},
  stages: [{name: 'default', viewports: [{displaySets: [{id: 'defaultDisplaySetId'}]}]}],
};
let listener = null;
const deleted = [];
const measurements = {m1: {uid: 'm1', referenceSeriesUID: '1.9', label: ''}};
const services = {
  hangingProtocolService: {
    addCustomAttribute: (id, name, callback) => { attributes[id] = callback; },
    getProtocolById: id => (id === 'default' ? ohifDefault : undefined),
  },
  displaySetService: {
    EVENTS: {DISPLAY_SETS_ADDED: 'added'},
    subscribe: (event, callback) => { listener = callback; return {unsubscribe: () => {}}; },
    getDisplaySetByUID: uid => displaySets[uid],
    deleteDisplaySet: uid => deleted.push(uid),
  },
  customizationService: {getCustomization: id => customizations[id]},
  measurementService: {
    getMeasurement: uid => measurements[uid],
    update: (uid, measurement) => { measurements[uid] = measurement; },
  },
};
const commands = [];
const commandsManager = {runCommand: (name, props, context) => {
  commands.push([name, props, context]);
  return {StudyInstanceUID: '1.8', SeriesInstanceUIDs: ['1.9']};
}};
const context = {servicesManager: {services}, commandsManager};
extension.preRegistration({servicesManager: {services}});
const protocols = extension.getHangingProtocolModule({servicesManager: {services}});
const attribute = name => Object.fromEntries(Object.entries(displaySets).map(([k, ds]) => [k, attributes[name](ds)]));
const isAIResult = attribute('radstackAIResult');
const isAIProposal = attribute('radstackAIProposals');
extension.onModeEnter({servicesManager: {services}});
listener({displaySetsAdded: Object.values(displaySets)});
const drawn = Object.fromEntries(Object.entries(displaySets).map(([k, ds]) => [k, ds.isImagingMeasurementReport]));
const everyMode = config.customizationService.mode['*'];
// OHIF's SR hydration as it reads a box of the AI report (a Proxy array of codes as the finding).
const hydrated = everyMode.onBeforeSRHydration.$apply(undefined).value({
  storedMeasurementByAnnotationType: {RectangleROI: [{
    predecessorImageId: 'wadors:report', finding: [{CodeMeaning: 'fracture of bone'}], annotation: {data: {}},
  }]},
  displaySet: displaySets.found,
}).RectangleROI[0];
const asked = [];
const ask = name => (context, machineContext, event) => {
  asked.push([name, event.displaySetInstanceUID || null]);
  if (name === 'label') { measurements.m1 = {...'Fracture of bone'}; }  // what OHIF 3.13.2 does
  return Promise.resolve({userResponse: 'asked'});
};
const prompt = everyMode['measurement.promptHydrateStructuredReport'].$apply(ask('hydrate'));
const begin = everyMode['measurement.promptBeginTracking'].$apply(ask('begin'));
const newSeries = everyMode['measurement.promptTrackNewSeries'].$apply(ask('new series'));
const label = everyMode['measurement.promptLabelAnnotation'].$apply(ask('label'));
const tracking = {data: {StudyInstanceUID: '1.8', SeriesInstanceUID: '1.9', viewportId: 'default'}};
Promise.all([
  ...Object.keys(displaySets).map(uid => prompt(context, {}, {displaySetInstanceUID: uid, viewportId: 'default'})),
  begin(context, {}, tracking),
  newSeries(context, {}, tracking),
  label(context, {}, {measurementId: 'm1', viewportId: 'default'}),
]).then(answers => console.log(JSON.stringify({
    protocols: protocols.map(p => ({name: p.name, rules: p.protocol.displaySetSelectors.defaultDisplaySetId.seriesMatchingRules})),
    unchangedDefault: ohifDefault.displaySetSelectors.defaultDisplaySetId.seriesMatchingRules.length,
    isAIResult, isAIProposal, drawn, deleted, asked, commands,
    answers: answers.map(a => a.userResponse),
    hydrated: {label: hydrated.annotation.data.label ?? null, predecessorImageId: hydrated.predecessorImageId || null},
    measurement: measurements.m1,
    global: config.customizationService.global,
  })));
"""


def _display_sets() -> dict[str, dict[str, object]]:
    """OHIF's display sets of a radiograph's study: an AI result with a box ("found"), one that found
    nothing, a radiologist's own report of the same box (no Algorithm Name) and the image."""
    image = to_dataset(generate(3, 0, Options(scale=0.1, fracture_rate=1.0, rg3_rate=0.0)), 3)
    del image.PixelData
    box = Finding("fracture", 0.7, (2, 3, 20, 30), image.SOPInstanceUID, generate_uid())
    found, nothing = (
        fracture_report(
            [image],
            findings,
            model="fracture",
            version=3,
            probability=0.5,
            series_uid=generate_uid(),
            sop_uid=generate_uid(),
        )
        for findings in ([box], [])
    )
    own = naturalized(found)  # the same report, as if a person had drawn the box: no Algorithm Name
    for item in own["ContentSequence"]:  # type: ignore[attr-defined]
        if item["ConceptNameCodeSequence"][0]["CodeValue"] == "126010":  # Imaging Measurements
            for group in item["ContentSequence"]:
                group["ContentSequence"] = [i for i in group["ContentSequence"] if "Algorithm" not in str(i)]
    report = {"Modality": "SR", "isImagingMeasurementReport": True}
    display_sets: dict[str, dict[str, object]] = {
        "found": {**report, "SeriesInstanceUID": "1.1", "instance": naturalized(found)},
        "nothing": {**report, "SeriesInstanceUID": "1.2", "instance": naturalized(nothing)},
        "own": {**report, "SeriesInstanceUID": "1.3", "instance": own},
        "image": {"Modality": "DX", "numImageFrames": 1},
    }
    for uid, display_set in display_sets.items():
        display_set["displaySetInstanceUID"] = uid
    return display_sets


def _run_app_config(tmp_path: Path, customizations: dict[str, object]) -> dict[str, Any]:
    """What app-config.js does (``_HARNESS``) on a page with ``customizations``."""
    files = {
        "harness.js": _HARNESS,
        "app-config.js": app_config_js("http://127.0.0.1/dicomweb"),
        "display-sets.json": json.dumps(_display_sets()),
        "customizations.json": json.dumps(customizations),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        [require_binary("node"), *(str(tmp_path / name) for name in files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_app_config_js_hangs_ai_results_first_and_loads_them_without_asking(tmp_path: Path) -> None:
    """The extension in app-config.js, run in node against stand-ins for OHIF's services: an AI
    result with a box is what the default hanging protocol prefers and is not asked about; one that
    found nothing is shown as text; a radiologist's own report (no algorithm) is treated as before.
    Outside a labeling task, OHIF's tracking and label prompts are asked as OHIF asks them."""
    result = _run_app_config(tmp_path, {})
    [protocol] = result["protocols"]
    assert protocol["name"] == "default"  # replaces OHIF's default, which stays as it was
    weights = {rule["attribute"]: rule["weight"] for rule in protocol["rules"]}
    assert weights == {
        "numImageFrames": 10,
        "isDisplaySetFromUrl": 40,
        "radstackAIResult": 30,
        "radstackAIProposals": 50,
    }
    assert result["unchangedDefault"] == 2
    assert result["isAIResult"] == {"found": True, "nothing": False, "own": False, "image": False}
    assert not any(result["isAIProposal"].values())
    assert result["drawn"] == {"found": True, "nothing": False, "own": True}  # (the image has none)
    assert result["deleted"] == [] and result["commands"] == []
    assert result["asked"] == [
        ["hydrate", "nothing"],
        ["hydrate", "own"],
        ["hydrate", "image"],
        ["begin", None],
        ["new series", None],
        ["label", None],
    ]
    assert result["answers"] == [0, "asked", "asked", "asked", "asked", "asked", "asked"]
    # OHIF 3.13.2 leaves the labelled measurement as {0: 'F', 1: 'r', …}: it is put back, labelled.
    assert result["measurement"] == {"uid": "m1", "referenceSeriesUID": "1.9", "label": "Fracture of bone"}
    # Outside a task, an AI report is never hydrated, so its boxes keep their report.
    assert result["hydrated"] == {"label": None, "predecessorImageId": "wadors:report"}
    assert result["global"] == {"ohif.tours": []}


def test_a_labeling_task_gives_ohif_its_label_list_and_shows_ai_as_the_project_says(
    server: RunningServer, tmp_path: Path
) -> None:
    """A task's viewer URL names its customization (/viewer/tasks/<id>.jsonc, allowed by the app
    config's only URL prefix): the project's labels as OHIF's forced-choice list, and AI results as
    editable proposals or hidden. Run in node, app-config.js then hydrates an AI result without asking
    (labelled from the list, in a series of the reader's own when saved) or removes it, and tracks the
    reader's measurements without asking."""
    ds = radiograph(41)
    assert stow(server, dicom_body(ds)).status_code == 200
    reader = {"Authorization": f"Bearer {server.token_for('radiologist')}"}
    name = httpx.get(f"{server.url}/api/v1/me", headers=reader).json()["user"]
    owner = Principal("admin", "admin", "password")
    customizations: dict[bool, dict[str, Any]] = {}
    for show_ai in (True, False):
        server.platform.labeling.create(
            owner,
            f"legs-{str(show_ai).lower()}",
            schema=SCHEMA,
            cohort=[str(ds.StudyInstanceUID)],
            readers=[name],
            show_ai=show_ai,
        )
        task = httpx.get(f"{server.url}/api/v1/labeling/tasks/next", headers=reader).json()
        assert task["viewer_url"].endswith(f"&customization=/task/{task['id']}")
        response = httpx.get(f"{server.url}/viewer/tasks/{task['id']}.jsonc", headers=reader)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        module = response.json()
        assert set(module) == {"global"}
        customizations[show_ai] = {key: value["$set"] for key, value in module["global"].items()}
        assert customizations[show_ai]["radstack.labelingTask"]["id"] == task["id"]
        # Done with it (submitted), so the next task is the other project's.
        assert httpx.post(
            f"{server.url}/api/v1/labeling/tasks/{task['id']}/submit", headers=reader
        ).is_success
    assert customizations[True]["measurementLabels"] == {
        "labelOnMeasure": True,
        "exclusive": True,
        "items": [
            {"value": "Fracture of bone", "label": "Fracture of bone"},
            {"value": "Dislocation of joint", "label": "Dislocation of joint"},
        ],
    }
    assert customizations[True]["radstack.aiResults"] == "proposals"
    assert customizations[False]["radstack.aiResults"] == "hidden"
    # Only the task's reader (or a reviewer, the owner) gets it; others are told it does not exist.
    stranger = {"Authorization": f"Bearer {server.token_for('radiologist')}"}
    assert httpx.get(f"{server.url}/viewer/tasks/1.jsonc", headers=stranger).status_code == 404
    assert httpx.get(f"{server.url}/viewer/tasks/1.jsonc").status_code == 401
    assert app_config("http://x/dicomweb")["customizationUrlPrefixes"] == {
        "default": "./customizations/",
        "/task/": "./tasks/",
    }

    shown = _run_app_config(tmp_path, customizations[True])
    assert shown["isAIProposal"] == {"found": True, "nothing": False, "own": False, "image": False}
    assert shown["deleted"] == []
    # The AI result is hydrated at once (what OHIF's HYDRATE_SR runs), the other reports are asked about.
    assert shown["commands"] == [
        ["hydrateStructuredReport", {"displaySetInstanceUID": "found"}, "CORNERSTONE_STRUCTURED_REPORT"]
    ]
    assert [name for name, _uid in shown["asked"]] == ["hydrate", "hydrate", "hydrate", "label"]
    assert shown["answers"] == [5, "asked", "asked", "asked", 3, 2, "asked"]
    assert shown["hydrated"] == {"label": "Fracture of bone", "predecessorImageId": None}

    hidden = _run_app_config(tmp_path, customizations[False])
    assert not any(hidden["isAIResult"].values()) and not any(hidden["isAIProposal"].values())
    assert hidden["deleted"] == ["found"]  # neither hung nor listed
    assert hidden["commands"] == [] and hidden["answers"][0] == 0  # and never loaded
    assert hidden["answers"][-3:-1] == [3, 2]
    assert hidden["hydrated"] == {"label": None, "predecessorImageId": "wadors:report"}


#: src=, href=, url( and @import of an HTML page; each must stay on this server.
_ASSET_REFERENCE = re.compile(
    r"""(?:\b(?:src|href|action)\s*=\s*["']?|url\(\s*["']?|@import\s+["'])([^"' )>]+)""", re.I
)


def test_no_page_loads_anything_from_another_host(viewer_server: RunningServer) -> None:
    """Every HTML page radstack serves (login, worklist, jobs, models, labeling, API docs, viewer)
    refers only to its own origin: nothing is fetched from a CDN or font host."""
    html = {"Accept": "text/html"}
    pages = {"/login": httpx.get(f"{viewer_server.url}/login", headers=html)}
    for path in ("/", "/jobs", "/models", "/labeling", "/api/v1/docs", "/viewer/", "/viewer/viewer"):
        pages[path] = authed.get(f"{viewer_server.url}{path}", headers=html)
    for path, page in pages.items():
        assert page.status_code == 200, (path, page.text[:300])
        assert page.headers["content-type"].startswith("text/html"), path
        references = _ASSET_REFERENCE.findall(page.text)
        assert references, path
        foreign = [
            ref
            for ref in references
            if re.match(r"(?:[a-z][a-z0-9+.-]*:)?//", ref, re.I) or ref.startswith("http")
        ]
        assert not foreign, (path, foreign)


def test_client_side_routes_get_index_html(viewer_server: RunningServer) -> None:
    index = authed.get(f"{viewer_server.url}/viewer/").text
    for path in ("viewer?StudyInstanceUIDs=1.2.3", "segmentation?StudyInstanceUIDs=1.2.3", "local"):
        response = authed.get(f"{viewer_server.url}/viewer/{path}")
        assert response.status_code == 200, path
        assert response.text == index


def test_hashed_assets_are_served_with_their_type_and_cached_for_good(viewer_server: RunningServer) -> None:
    bundle = _bundle(authed.get(f"{viewer_server.url}/viewer/").text)
    response = authed.get(f"{viewer_server.url}/viewer/{bundle}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "immutable" in response.headers["cache-control"]
    assert '__webpack_require__.p = "/viewer/";' in response.text
    wasm = next(p.name for p in viewer_server.platform.settings.ohif_dir.glob("*.wasm"))  # type: ignore[union-attr]
    response = authed.get(f"{viewer_server.url}/viewer/{wasm}")
    assert response.headers["content-type"] == "application/wasm"
    assert response.content[:4] == b"\0asm"
    assert authed.get(f"{viewer_server.url}/viewer/app.bundle.0000000000000000.js").status_code == 404
    assert authed.get(f"{viewer_server.url}/viewer/%2e%2e/%2e%2e/etc/passwd.txt").status_code == 404


def test_the_viewer_needs_credentials(viewer_server: RunningServer) -> None:
    page = httpx.get(
        f"{viewer_server.url}/viewer/viewer?StudyInstanceUIDs=1.2.3", headers={"Accept": "text/html"}
    )
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=/viewer/viewer%3FStudyInstanceUIDs%3D1.2.3"
    for path in ("", "app-config.js", _bundle(authed.get(f"{viewer_server.url}/viewer/").text)):
        response = httpx.get(f"{viewer_server.url}/viewer/{path}")
        assert response.status_code == 401, path


def test_a_logged_in_browser_gets_the_viewer_and_its_data(viewer_server: RunningServer) -> None:
    """The session cookie alone opens the viewer, its files and the DICOMweb requests OHIF makes."""
    viewer_server.platform.accounts.create_user("reader", "radiologist", password="correct horse battery")
    ds = synthetic_ct()
    assert stow(viewer_server, dicom_body(ds)).status_code == 200
    with httpx.Client(base_url=viewer_server.url) as browser:
        login = browser.post(
            "/login", data={"username": "reader", "password": "correct horse battery", "next": "/viewer/"}
        )
        assert login.status_code == 303 and login.headers["location"] == "/viewer/"
        index = browser.get("/viewer/", headers={"Accept": "text/html"})
        assert index.status_code == 200
        assert browser.get(f"/viewer/{_bundle(index.text)}").status_code == 200
        config = browser.get("/viewer/app-config.js")
        assert config.status_code == 200 and f"{viewer_server.url}/dicomweb" in config.text
        # OHIF's study list: QIDO with fuzzy matching and include fields.
        studies = browser.get(
            "/dicomweb/studies",
            params={
                "limit": "101",
                "offset": "0",
                "fuzzymatching": "true",
                "includefield": "00081030,00080060",
            },
        )
        assert studies.status_code == 200, studies.text
        assert [s["0020000D"]["Value"][0] for s in studies.json()] == [ds.StudyInstanceUID]
        # Frames as OHIF asks for them with this configuration: stored HTJ2K comes back as is.
        frame = browser.get(
            instance_url(viewer_server, ds).removeprefix(viewer_server.url) + "/frames/1",
            headers={"Accept": ",".join(FRAME_ACCEPT)},
        )
        assert frame.status_code == 200, frame.text
        [(content_type, data)] = response_parts(frame)
        assert "transfer-syntax=1.2.840.10008.1.2.4.202" in content_type
        assert data[:2] == b"\xff\x4f"  # a JPEG 2000 codestream (SOC marker)


def test_uncompressed_frames_when_the_client_asks_for_them(viewer_server: RunningServer) -> None:
    """OHIF's default Accept (no acceptHeader configured) still gets what it asks for."""
    ds = synthetic_ct()
    assert stow(viewer_server, dicom_body(ds)).status_code == 200
    frame = authed.get(
        instance_url(viewer_server, ds) + "/frames/1",
        headers={
            "Accept": "multipart/related; type=application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
        },
    )
    assert frame.status_code == 200
    [(content_type, data)] = response_parts(frame)
    assert content_type.startswith("application/octet-stream")
    assert len(data) == ds.Rows * ds.Columns * 2


def test_a_role_without_read_pixels_cannot_open_the_viewer(viewer_server: RunningServer) -> None:
    platform = viewer_server.platform
    actions = frozenset({ActionValues.READ_METADATA})
    platform.policy.roles["front-desk"] = RoleDef("front-desk", actions)
    platform.accounts.roles.add("front-desk")
    token = viewer_server.token_for("front-desk")
    headers = {"Authorization": f"Bearer {token}"}
    for path in ("", "viewer?StudyInstanceUIDs=1.2.3", "app-config.js", "index.html"):
        response = httpx.get(f"{viewer_server.url}/viewer/{path}", headers=headers)
        assert response.status_code == 403, (path, response.status_code)
    # The build's static files only need an authenticated caller (they hold no data).
    assert httpx.get(f"{viewer_server.url}/viewer/ohif-logo.svg", headers=headers).status_code == 200


def test_an_unfetched_viewer_answers_503_saying_how_to_fetch_it(tmp_path: Path) -> None:
    settings = server_settings(tmp_path / "data", ohif_dir=tmp_path / "no-viewer")
    for server in start_server(settings):
        for path in ("", "app-config.js", "app.bundle.0f6159c501addfe9.js"):
            response = authed.get(f"{server.url}/viewer/{path}")
            assert response.status_code == 503, path
            assert response.headers["content-type"] == "application/problem+json"
            assert "radstack viewer fetch" in response.json()["detail"]
