"""The OHIF viewer's pinned build: fetched once from the npm package ``@ohif/app``, verified, cached.

``radstack viewer fetch`` (and ``make run``) calls :func:`fetch_viewer`: ``npm pack`` downloads the
pinned tarball, its SHA-512 must equal the npm ``dist.integrity`` pinned here (Subresource Integrity
form, ``sha512-<base64>``), and only ``package/dist/`` is extracted, into a temporary directory next
to the cache that is renamed into place at the end, so a failed or refused fetch leaves no partial
cache. A second run finds the stamp file and needs no network.

OHIF's ``dist/`` is built for the server root: ``index.html`` names ``/app.bundle…js`` and sets
``window.PUBLIC_URL = "/"``, and each webpack runtime loads its chunks from ``__webpack_require__.p
= "/"``; its stylesheet loads fonts from ``url(/…)`` and ``manifest.json`` names ``/assets/…``
icons. Those absolute paths are rewritten to :data:`VIEWER_PREFIX` after extraction;
``routerBasename`` is set by the generated ``app-config.js`` (:mod:`radstack.web.viewer`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "OHIF_INTEGRITY",
    "OHIF_PACKAGE",
    "OHIF_VERSION",
    "VIEWER_PREFIX",
    "FetchResult",
    "ViewerFetchError",
    "default_viewer_dir",
    "fetch_viewer",
    "installed",
    "integrity_of",
    "viewer_dir",
]

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
#: ``npm view @ohif/app@3.13.2 dist.integrity``, checked against the tarball ``npm pack`` fetched.
OHIF_INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
)
#: Where the viewer is served; the dist's absolute paths are rewritten to it.
VIEWER_PREFIX = "/viewer/"
#: Written last into a complete cache: what it holds (its absence means "not fetched").
STAMP = ".radstack-ohif.json"
#: Bumped when the rewrites change, so an older cache is rebuilt.
_REWRITES = "2"

_DIST = "package/dist/"
_INDEX_PATHS = re.compile(r'\b(src|href)="/(?!/)')
_PUBLIC_URL = 'window.PUBLIC_URL="/"'
_CSS_URLS = re.compile(r"\burl\(/(?!/)")
_MANIFEST_SRC = re.compile(r'"src": "/(?!/)')
#: The browser fetches the manifest without cookies unless told to; every path here needs a login.
_MANIFEST_LINK = f'<link rel="manifest" href="{VIEWER_PREFIX}manifest.json">'
_WEBPACK_PUBLIC_PATH = '__webpack_require__.p = "/";'


class ViewerFetchError(Exception):
    """The viewer could not be fetched, or what was fetched is not the pinned build."""


@dataclass(frozen=True)
class FetchResult:
    """Where the viewer is and whether this call fetched it (``False``: it was cached already)."""

    directory: Path
    fetched: bool


def default_viewer_dir(version: str = OHIF_VERSION) -> Path:
    """``$XDG_CACHE_HOME/radstack/ohif/<version>`` (``~/.cache`` when unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "radstack" / "ohif" / version


def viewer_dir(configured: Path | None) -> Path:
    """The cache directory: ``configured`` (``RADSTACK_OHIF_DIR``) or :func:`default_viewer_dir`."""
    return configured if configured is not None else default_viewer_dir()


def _stamp() -> dict[str, str]:
    return {
        "rewrites": _REWRITES,
        "package": OHIF_PACKAGE,
        "version": OHIF_VERSION,
        "integrity": OHIF_INTEGRITY,
        "prefix": VIEWER_PREFIX,
    }


def installed(directory: Path) -> bool:
    """Whether ``directory`` holds the pinned build, complete and rewritten for :data:`VIEWER_PREFIX`."""
    try:
        stamp = json.loads((directory / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return bool(stamp == _stamp() and (directory / "index.html").is_file())


def integrity_of(path: Path) -> str:
    """The Subresource Integrity string (``sha512-<base64>``) of the file at ``path``."""
    digest = hashlib.sha512()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def fetch_viewer(directory: Path, *, tarball: Path | None = None, npm: str = "npm") -> FetchResult:
    """Install the pinned OHIF build into ``directory`` unless it is there already.

    Parameters
    ----------
    directory
        The cache directory; it receives the contents of the package's ``dist/``.
    tarball
        An already downloaded ``@ohif/app`` tarball to install instead of running ``npm pack``
        (an offline install); it is verified like a download.
    npm
        The npm executable.

    Returns
    -------
    FetchResult
        The directory and whether anything was fetched.

    Raises
    ------
    ViewerFetchError
        npm failed, or the tarball's SHA-512 is not the pinned one; nothing is left in ``directory``.
    """
    if installed(directory):
        return FetchResult(directory, fetched=False)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # The work directory sits next to the cache, so the final rename stays on one file system.
    with tempfile.TemporaryDirectory(prefix=f".{directory.name}.", dir=directory.parent) as work_name:
        work = Path(work_name)
        source = tarball if tarball is not None else _npm_pack(npm, work)
        actual = integrity_of(source)
        if actual != OHIF_INTEGRITY:
            raise ViewerFetchError(
                f"checksum mismatch: {source.name} has {actual}, but {OHIF_PACKAGE} {OHIF_VERSION} is pinned "
                f"to {OHIF_INTEGRITY}; refusing to install it (a corrupted download or a changed package)"
            )
        dist = work / "dist"
        _extract_dist(source, dist)
        _rewrite_paths(dist)
        (dist / STAMP).write_text(json.dumps(_stamp(), indent=2) + "\n")
        if directory.exists():
            stale = work / "stale"
            directory.rename(stale)  # an older or unfinished copy; removed with the work directory
        dist.rename(directory)
    return FetchResult(directory, fetched=True)


def _npm_pack(npm: str, work: Path) -> Path:
    """Download the pinned tarball into ``work`` with ``npm pack`` (the registry npm is set up for)."""
    spec = f"{OHIF_PACKAGE}@{OHIF_VERSION}"
    try:
        completed = subprocess.run(
            [npm, "pack", spec, "--silent", "--pack-destination", str(work)],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ViewerFetchError(f"could not run '{npm} pack {spec}': {error}") from error
    tarballs = sorted(work.glob("*.tgz"))
    if completed.returncode != 0 or len(tarballs) != 1:
        detail = (completed.stderr or completed.stdout).strip()[-2000:]
        raise ViewerFetchError(f"'{npm} pack {spec}' failed (exit status {completed.returncode}): {detail}")
    return tarballs[0]


def _extract_dist(source: Path, target: Path) -> None:
    """Extract the regular files and directories under ``package/dist/`` into ``target``."""
    target.mkdir()
    try:
        with tarfile.open(source, "r:gz") as archive:
            for member in archive:
                if not member.name.startswith(_DIST) or not (member.isfile() or member.isdir()):
                    continue
                member.name = member.name[len(_DIST) :]
                if member.name:
                    # The "data" filter refuses absolute paths, "..", links out of the tree, devices.
                    archive.extract(member, target, filter="data")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ViewerFetchError(f"{source.name} is not a readable {OHIF_PACKAGE} tarball: {error}") from error
    if not (target / "index.html").is_file():
        raise ViewerFetchError(f"{source.name} has no package/dist/index.html; it is not an OHIF build")


def _rewrite_paths(dist: Path) -> None:
    """Point the build's absolute paths at :data:`VIEWER_PREFIX` (see the module docstring)."""
    index = dist / "index.html"
    text = index.read_text(encoding="utf-8")
    if _PUBLIC_URL not in text:
        raise ViewerFetchError(f"index.html of {OHIF_PACKAGE} {OHIF_VERSION} does not set {_PUBLIC_URL!r}")
    text = text.replace(_PUBLIC_URL, f'window.PUBLIC_URL="{VIEWER_PREFIX}"')
    text = _INDEX_PATHS.sub(rf'\1="{VIEWER_PREFIX}', text)
    text = text.replace(
        _MANIFEST_LINK, _MANIFEST_LINK.replace("<link ", '<link crossorigin="use-credentials" ')
    )
    index.write_text(text, encoding="utf-8")
    for stylesheet in dist.glob("*.css"):  # fonts: url(/a34f9d1faa5f3315.woff2)
        css = stylesheet.read_text(encoding="utf-8", errors="surrogateescape")
        stylesheet.write_text(
            _CSS_URLS.sub(f"url({VIEWER_PREFIX}", css), encoding="utf-8", errors="surrogateescape"
        )
    manifest = dist / "manifest.json"
    if manifest.is_file():
        manifest.write_text(
            _MANIFEST_SRC.sub(f'"src": "{VIEWER_PREFIX}', manifest.read_text(encoding="utf-8"))
        )
    rewritten = 0
    for script in dist.glob("*.js"):
        code = script.read_text(encoding="utf-8", errors="surrogateescape")
        if _WEBPACK_PUBLIC_PATH in code:
            script.write_text(
                code.replace(_WEBPACK_PUBLIC_PATH, f'__webpack_require__.p = "{VIEWER_PREFIX}";'),
                encoding="utf-8",
                errors="surrogateescape",
            )
            rewritten += 1
    if not any(dist.glob("app.bundle.*.js")) or rewritten == 0:
        raise ViewerFetchError(f"no webpack public path found to rewrite in {OHIF_PACKAGE} {OHIF_VERSION}")
