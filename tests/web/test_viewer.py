"""The OHIF viewer: the pinned build fetched, verified and cached; served at /viewer/ behind auth."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

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
from radstack.web.viewer import FRAME_ACCEPT
from tests import authed
from tests.conftest import IN_CI, RunningServer, server_settings, start_server
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
    match = re.search(r"window\.config = (\{.*\});\s*$", response.text, re.S)
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
    assert config["customizationService"] == {"ohif.tours": []}


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
