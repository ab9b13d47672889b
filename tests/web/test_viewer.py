"""The OHIF viewer: the pinned build fetched, verified and cached; served at /viewer/ behind auth."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from radstack.ai.results import Finding, fracture_report
from radstack.ai.synthetic import Options, generate, to_dataset
from radstack.cli import main
from radstack.config import Settings
from radstack.security.policy import ActionValues, RoleDef
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
from radstack.web.viewer import FRAME_ACCEPT, app_config_js
from tests import authed
from tests.conftest import IN_CI, RunningServer, require_binary, server_settings, start_server
from tests.helpers import dicom_body, instance_url, response_parts, stow, synthetic_ct


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


#: Runs the generated app-config.js in node with stand-ins for OHIF's services and reports what the
#: AI results extension does with the display sets given on the command line.
_HARNESS = """
global.window = {};
require(process.argv[2]);
const config = window.config;
const displaySets = require(process.argv[3]);
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
const services = {
  hangingProtocolService: {
    addCustomAttribute: (id, name, callback) => { attributes[id] = callback; },
    getProtocolById: id => (id === 'default' ? ohifDefault : undefined),
  },
  displaySetService: {
    EVENTS: {DISPLAY_SETS_ADDED: 'added'},
    subscribe: (event, callback) => { listener = callback; return {unsubscribe: () => {}}; },
    getDisplaySetByUID: uid => displaySets[uid],
  },
};
extension.preRegistration({servicesManager: {services}});
const protocols = extension.getHangingProtocolModule({servicesManager: {services}});
const isAIResult = Object.fromEntries(Object.entries(displaySets).map(([k, ds]) => [k, attributes.radstackAIResult(ds)]));
extension.onModeEnter({servicesManager: {services}});
listener({displaySetsAdded: Object.values(displaySets)});
const drawn = Object.fromEntries(Object.entries(displaySets).map(([k, ds]) => [k, ds.isImagingMeasurementReport]));
const asked = [];
const original = (context, machineContext, event) => { asked.push(event.displaySetInstanceUID); return Promise.resolve({userResponse: 5}); };
const everyMode = config.customizationService.mode['*'];
const prompt = everyMode['measurement.promptHydrateStructuredReport'].$apply(original);
Promise.all(Object.keys(displaySets).map(uid => prompt({servicesManager: {services}}, {}, {displaySetInstanceUID: uid, viewportId: 'default'})))
  .then(answers => console.log(JSON.stringify({
    protocols: protocols.map(p => ({name: p.name, rules: p.protocol.displaySetSelectors.defaultDisplaySetId.seriesMatchingRules})),
    unchangedDefault: ohifDefault.displaySetSelectors.defaultDisplaySetId.seriesMatchingRules.length,
    isAIResult, drawn, asked, answers: answers.map(a => a.userResponse),
    global: config.customizationService.global,
  })));
"""


def test_app_config_js_hangs_ai_results_first_and_loads_them_without_asking(tmp_path: Path) -> None:
    """The extension in app-config.js, run in node against stand-ins for OHIF's services: an AI
    result with a box is what the default hanging protocol prefers and is not asked about; one that
    found nothing is shown as text; a radiologist's own report (no algorithm) is treated as before."""
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
    display_sets = {
        "found": {**report, "SeriesInstanceUID": "1.1", "instance": naturalized(found)},
        "nothing": {**report, "SeriesInstanceUID": "1.2", "instance": naturalized(nothing)},
        "own": {**report, "SeriesInstanceUID": "1.3", "instance": own},
        "image": {"Modality": "DX", "numImageFrames": 1},
    }
    files = {"harness.js": _HARNESS, "app-config.js": app_config_js("http://127.0.0.1/dicomweb")}
    files["display-sets.json"] = json.dumps(display_sets)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        [require_binary("node"), *(str(tmp_path / name) for name in files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    [protocol] = result["protocols"]
    assert protocol["name"] == "default"  # replaces OHIF's default, which stays as it was
    weights = {rule["attribute"]: rule["weight"] for rule in protocol["rules"]}
    assert weights == {"numImageFrames": 10, "isDisplaySetFromUrl": 40, "radstackAIResult": 30}
    assert result["unchangedDefault"] == 2
    assert result["isAIResult"] == {"found": True, "nothing": False, "own": False, "image": False}
    assert result["drawn"] == {"found": True, "nothing": False, "own": True}  # (the image has none)
    assert result["asked"] == ["nothing", "own", "image"] and result["answers"] == [0, 5, 5, 5]
    assert result["global"] == {"ohif.tours": []}


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
