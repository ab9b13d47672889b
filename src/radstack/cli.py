"""The ``radstack`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from radstack import __version__
from radstack.config import Settings

if TYPE_CHECKING:
    from radstack.ai.datasets import DatasetVersion
    from radstack.security.authn import Accounts
    from radstack.security.crypto import EncryptedBlobStore

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from radstack.security.tls import TLSConfigurationError, server_ssl_context
    from radstack.web.app import create_app
    from radstack.web.connections import uvicorn_connection_options
    from radstack.web.transport import uvicorn_tls_options

    overrides = {
        name: value
        for name, value in {
            "data_dir": args.data_dir,
            "host": args.host,
            "http_port": args.http_port,
            "dicom_port": args.dicom_port,
            "ae_title": args.ae_title,
            "no_workers": args.no_workers or None,
            "demo": args.demo or None,
            "tls_cert_file": args.tls_cert_file,
            "tls_key_file": args.tls_key_file,
            "dicom_tls_port": args.dicom_tls_port,
        }.items()
        if value is not None
    }
    settings = Settings(**overrides)
    try:
        tls = uvicorn_tls_options(settings)
        if settings.dicom_tls_port:
            server_ssl_context(settings, verify_clients=True)  # the client CA too, before anything starts
    except TLSConfigurationError as exc:
        print(f"radstack serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings)
    dicom = f", DICOM {settings.ae_title} on port {settings.dicom_port}" if settings.dicom_port else ""
    if settings.dicom_tls_port:
        dicom += f", DICOM TLS on port {settings.dicom_tls_port}"
    print(
        f"radstack {__version__}: data in {settings.data_dir.resolve()}, "
        f"{'https' if tls else 'http'}://{settings.host}:{settings.http_port}/{dicom}"
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.http_port,
        log_level="warning",
        access_log=False,
        **tls,
        **uvicorn_connection_options(settings),
    )
    return 0


def _gc(args: argparse.Namespace) -> int:
    from radstack.platform import Platform
    from radstack.store.gc import collect_garbage

    platform = Platform.open(_settings(args))
    try:
        report = collect_garbage(platform.store, grace_seconds=args.grace_seconds)
    finally:
        platform.close()
    print(f"examined {report.examined} blobs, removed {report.removed} unreferenced")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from radstack.errors import RadstackError
    from radstack.security.audit import load_audit_key, verify
    from radstack.security.crypto import open_key_provider
    from radstack.security.index_key import open_index_engine
    from radstack.store.index import migrate

    settings = _settings(args)
    try:
        engine = open_index_engine(settings, open_key_provider(settings.resolved_key_url, create=False))
    except RadstackError as exc:
        print(f"radstack: {exc.message}", file=sys.stderr)
        return 2
    try:
        migrate(engine)
        report = verify(engine, load_audit_key(settings.data_dir, create=False))
    finally:
        engine.dispose()
    print(report.summary())
    for problem in report.problems[1:]:
        print(f"  sequence {problem.seq}: {problem.message}")
    return 0 if report.ok else 1


def _with_accounts(args: argparse.Namespace, action: Callable[[Accounts], int]) -> int:
    """Run ``action`` on the accounts of the data dir's index (made, with its first admin, if new)."""
    from radstack.errors import RadstackError
    from radstack.security.authn import Accounts
    from radstack.security.index_key import open_index_engine
    from radstack.security.policy import load_roles
    from radstack.store.index import migrate

    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        engine = open_index_engine(settings)
    except RadstackError as exc:
        print(f"radstack: {exc.message}", file=sys.stderr)
        return 2
    try:
        migrate(engine)
        accounts = Accounts(engine, set(load_roles(settings.roles_file)))
        created = accounts.bootstrap(settings.data_dir)
        if created is not None:
            print(f"created the first administrator 'admin'; its password is in {created}", file=sys.stderr)
        return action(accounts)
    except RadstackError as exc:
        print(f"radstack: {exc.message}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()


def _user_create(args: argparse.Namespace) -> int:
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None

    def create(accounts: Accounts) -> int:
        user = accounts.create_user(
            args.username,
            args.role,
            password=password,
            referring_name=args.referring_name,
            institutions=args.institution or [],
            ae_title=args.ae_title,
        )
        print(f"user {user.username} ({user.role}) created")
        return 0

    return _with_accounts(args, create)


def _user_list(args: argparse.Namespace) -> int:
    def show(accounts: Accounts) -> int:
        rows = [("USER", "ROLE", "STATE", "PASSWORD", "AE TITLE")]
        for user in accounts.users():
            password = (
                "must change" if user.must_change_password else "set" if user.password_changed_at else "-"
            )
            state = "disabled" if user.disabled else "enabled"
            rows.append((user.username, user.role, state, password, user.ae_title or "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        return 0

    return _with_accounts(args, show)


def _read_new_password(use_stdin: bool) -> str | None:
    """A new password: typed twice at a terminal, else one line of stdin (None: the two differ)."""
    import getpass

    if use_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("New password: ")
    if getpass.getpass("New password again: ") != first:
        return None
    return first


def _user_passwd(args: argparse.Namespace) -> int:
    password = _read_new_password(args.password_stdin)
    if password is None:
        print("radstack: the two passwords differ; nothing changed", file=sys.stderr)
        return 2

    def change(accounts: Accounts) -> int:
        accounts.update_user(args.username, password=password, must_change_password=args.must_change)
        later = "; it must be changed at the next login" if args.must_change else ""
        print(f"password of {args.username} changed{later}")
        return 0

    return _with_accounts(args, change)


def _user_state(args: argparse.Namespace) -> int:
    disabled = args.user_command == "disable"

    def change(accounts: Accounts) -> int:
        accounts.update_user(args.username, disabled=disabled)
        print(f"user {args.username} {'disabled' if disabled else 'enabled'}")
        return 0

    return _with_accounts(args, change)


def _user_role(args: argparse.Namespace) -> int:
    def change(accounts: Accounts) -> int:
        user = accounts.update_user(args.username, role=args.role)
        print(f"user {user.username} now has the role {user.role}")
        return 0

    return _with_accounts(args, change)


def _token_create(args: argparse.Namespace) -> int:
    from datetime import timedelta

    def create(accounts: Accounts) -> int:
        expires = timedelta(days=args.expires_days) if args.expires_days > 0 else None
        print(accounts.create_token(args.user, role=args.role, label=args.label, expires_in=expires))
        return 0

    return _with_accounts(args, create)


def _token_revoke(args: argparse.Namespace) -> int:
    def revoke(accounts: Accounts) -> int:
        accounts.revoke_token(args.token_id)
        print(f"token {args.token_id} revoked")
        return 0

    return _with_accounts(args, revoke)


def _open_encrypted_blobs(args: argparse.Namespace) -> EncryptedBlobStore:
    """The data dir's blob store under encryption, for the ``keys`` commands (no index needed)."""
    from radstack.security.crypto import EncryptedBlobStore, open_key_provider
    from radstack.store.blobs import open_blob_store

    settings = _settings(args)
    return EncryptedBlobStore(
        open_blob_store(settings.resolved_blob_url),
        open_key_provider(settings.resolved_key_url, create=False),
        allow_plaintext=True,
    )


def _keys_rotate(args: argparse.Namespace) -> int:
    from radstack.errors import RadstackError
    from radstack.security.crypto import RewrapOutcome, RotationReport, rotate_keys
    from radstack.security.index_key import rewrap_index_key

    last = 0.0

    def show(report: RotationReport) -> None:
        nonlocal last
        if report.done == report.total or time.monotonic() - last > 0.2:
            last = time.monotonic()
            line = f"\rre-wrapping blob keys: {report.done}/{report.total}"
            print(line, end="", file=sys.stderr, flush=True)

    try:
        store = _open_encrypted_blobs(args)
        print(f"rotating the key-encryption key ({store.provider.describe()})", file=sys.stderr)
        report = rotate_keys(store, grace_seconds=args.grace_seconds, workers=args.workers, on_progress=show)
        if rewrap_index_key(_settings(args).data_dir, store.provider):
            print(
                f"\rthe index database key is now wrapped by {store.provider.current_id()}", file=sys.stderr
            )
    except RadstackError as exc:
        print(f"radstack: {exc.message}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    counts = report.outcomes
    print(
        f"{report.total} blobs now under {report.target}: {counts[RewrapOutcome.REWRAPPED]} re-wrapped, "
        f"{counts[RewrapOutcome.ENCRYPTED]} encrypted (written before encryption), "
        f"{counts[RewrapOutcome.CURRENT]} already current, {counts[RewrapOutcome.MISSING]} deleted meanwhile, "
        f"{counts[RewrapOutcome.FAILED]} failed"
    )
    for key, message in report.failures:
        print(f"  {key}: {message}", file=sys.stderr)
    if not report.ok:
        print("the rotation is unfinished; run 'radstack keys rotate' again to resume it", file=sys.stderr)
    return 0 if report.ok else 1


def _keys_status(args: argparse.Namespace) -> int:
    from radstack.errors import RadstackError
    from radstack.security.crypto import key_usage

    try:
        store = _open_encrypted_blobs(args)
        usage = key_usage(store)
    except RadstackError as exc:
        print(f"radstack: {exc.message}", file=sys.stderr)
        return 2
    print(f"keys: {store.provider.describe()}; current KEK {usage.current}")
    for kek, count in sorted(usage.by_kek.items()):
        print(f"  {kek}: {count} blobs{' (current)' if kek == usage.current else ''}")
    print(f"  not encrypted: {usage.plaintext} blobs")
    for key, message in usage.damaged:
        print(f"  damaged {key}: {message}")
    stale = sum(count for kek, count in usage.by_kek.items() if kek != usage.current)
    return 0 if not (stale or usage.plaintext or usage.damaged) else 1


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))


#: Refused files ``radstack import`` lists with their reasons; the rest are counted.
REFUSED_LISTED = 10


def _import(args: argparse.Namespace) -> int:
    """Run an import job here, with a progress bar; exit 0 when every file was stored (or was
    already), 1 when some were refused (listed with their reasons), 2 when the job could not run."""
    from radstack.errors import RadstackError
    from radstack.ingest.importjobs import IMPORT_KIND, check_source
    from radstack.jobs.records import FINAL_STATES, JobState
    from radstack.platform import Platform

    platform = Platform.open(_settings(args))
    bar = _ProgressBar(sys.stderr)
    try:
        given = str(args.source)
        source = check_source(given if given.startswith("s3://") else str(Path(given).resolve()))
        records = platform.jobs.records
        # The job is recorded like one the API makes, then run here with a progress bar. If this
        # process dies, a server's or worker's sweep resumes the job where its records end.
        job, _created = records.create(IMPORT_KIND, {"source": source}, client_token=args.client_token)
        print(f"import job {job.id}: {source}", file=sys.stderr)
        with bar.attached(logging.getLogger()):
            platform.jobs.execute(job.id, on_progress=bar.show)
        job = records.get(job.id)
        refused = records.import_items(job.id, failed=True, limit=REFUSED_LISTED)
    except RadstackError as exc:
        print(f"radstack import: {exc.message}", file=sys.stderr)
        return 2
    finally:
        platform.close()
    progress = job.progress
    count = int(progress.get("refused", 0))
    print(
        f"{job.state}: {progress.get('files_done', 0)} of {progress.get('files_total', 0)} files "
        f"({_size(progress.get('bytes_done', 0))}); {progress.get('stored', 0)} stored, "
        f"{progress.get('duplicate', 0)} already stored, {progress.get('replaced', 0)} replaced, "
        f"{count} refused"
    )
    if refused:
        print("refused files:")
        for item in refused:
            status = f" (status 0x{item.status:04X})" if item.status is not None else ""
            print(f"  {item.path}: {item.reason}{status}")
        if count > len(refused):
            print(f"  … and {count - len(refused)} more")
        print(
            f"all refused files and their reasons: GET /api/v1/import-jobs/{job.id}/failure.ndjson, "
            f"or the Jobs page /jobs/{job.id}/refused"
        )
    if job.state not in FINAL_STATES:
        print(f"import job {job.id} is {job.state} on another worker; it was not run here", file=sys.stderr)
        return 2
    if job.state is JobState.DONE_WITH_ERRORS:
        total = progress.get("files_total", 0)
        print(f"radstack import: {count} of {total} files refused", file=sys.stderr)
        return 1
    if job.state is not JobState.SUCCEEDED:
        print(f"radstack import: the job is {job.state}: {job.last_error}", file=sys.stderr)
        return 2
    return 0


def _size(count: int) -> str:
    """A byte count for people: ``300 B``, ``88.3 kB``, ``7.2 MB`` (SI units)."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


class _ProgressBar:
    """Files and bytes done of the total, on ``stream`` (stderr).

    On a terminal it is one self-rewriting line, and log records are written through
    :meth:`attached`'s handler, which erases the bar first and draws it again after, so a log line
    never runs into the bar. Elsewhere (a pipe, a log file) it is a whole line now and then.
    """

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self.every = 0.1 if self.tty else 10.0
        self.line = ""
        self.drawn = False
        self.last = 0.0
        self.lock = threading.RLock()

    def show(self, progress: dict[str, int]) -> None:
        total, done = int(progress.get("bytes_total", 0)), int(progress.get("bytes_done", 0))
        files, files_total = progress.get("files_done", 0), progress.get("files_total", 0)
        filled = min(self.width, self.width * done // total) if total else self.width
        refused = progress.get("refused", 0)
        with self.lock:
            self.line = (
                f"[{'#' * filled}{'.' * (self.width - filled)}] {files}/{files_total} files, "
                f"{_size(done)} of {_size(total)}, {refused} refused"
            )
            now = time.monotonic()
            if files == files_total or now - self.last >= self.every:
                self.last = now
                self._draw()

    def _draw(self) -> None:
        if self.tty:
            self.stream.write(f"\r{self.line}\x1b[K")
            self.drawn = True
        else:
            self.stream.write(self.line + "\n")
        self.stream.flush()

    def _erase(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False

    @contextmanager
    def attached(self, logger: logging.Logger) -> Iterator[None]:
        """Route ``logger``'s handlers through the bar while the block runs; end with a whole line."""
        originals = list(logger.handlers)
        wrapped = [_AroundBar(handler, self) for handler in originals]
        for handler, wrapper in zip(originals, wrapped, strict=True):
            logger.removeHandler(handler)
            logger.addHandler(wrapper)
        try:
            yield
        finally:
            for handler, wrapper in zip(originals, wrapped, strict=True):
                logger.removeHandler(wrapper)
                logger.addHandler(handler)
            with self.lock:
                if self.drawn:  # the last state stays on screen, on a line of its own
                    self.stream.write("\n")
                    self.stream.flush()
                    self.drawn = False


class _AroundBar(logging.Handler):
    """A log handler that erases the progress bar, lets ``inner`` write the record, then redraws it."""

    def __init__(self, inner: logging.Handler, bar: _ProgressBar) -> None:
        super().__init__(inner.level)
        self.inner = inner
        self.bar = bar

    def emit(self, record: logging.LogRecord) -> None:
        with self.bar.lock:
            was_drawn = self.bar.drawn
            self.bar._erase()
            self.inner.handle(record)
            if was_drawn:
                self.bar._draw()


def _datasets_create(args: argparse.Namespace) -> int:
    """Make a data set version from a demo-data folder: a ``dataset`` job run here with a progress
    bar (its files are imported first); exit 0 when made, 2 when refused (the reason on stderr)."""
    from dataclasses import replace

    from radstack.ai.datasets import DATASET_KIND, folder_job_params, parse_ratios
    from radstack.errors import RadstackError
    from radstack.jobs.records import JobState
    from radstack.platform import Platform
    from radstack.security.policy import SYSTEM

    platform = Platform.open(_settings(args))
    bar = _ProgressBar(sys.stderr)
    try:
        folder = Path(args.from_folder).resolve()
        ratios = parse_ratios(args.split)
        # Refused here, before a job is recorded, with the errors the job would give.
        platform.datasets.preview_from_folder(args.name, folder, SYSTEM, seed=args.seed, ratios=ratios)
        params = folder_job_params(
            args.name, folder, SYSTEM, seed=args.seed, ratios=ratios, description=args.description
        )
        records = platform.jobs.records
        # Recorded like one the API makes, then run here: if this process dies, a worker resumes it.
        job, _created = records.create(DATASET_KIND, params)
        print(f"data set job {job.id}: {folder}", file=sys.stderr)
        with bar.attached(logging.getLogger()):
            platform.jobs.execute(job.id, on_progress=bar.show)
        job = records.get(job.id)
        if job.state is not JobState.SUCCEEDED:
            print(f"radstack datasets create: the job is {job.state}: {job.last_error}", file=sys.stderr)
            return 2
        made = platform.datasets.version(SYSTEM, args.name, int(job.progress["version"]))
        version = replace(made, created=bool(job.progress["created"]))
    except RadstackError as exc:
        print(f"radstack datasets create: {exc.message}", file=sys.stderr)
        return 2
    finally:
        platform.close()
    _print_version(version)
    return 0


def _datasets_list(args: argparse.Namespace) -> int:
    from radstack.platform import Platform
    from radstack.security.policy import SYSTEM

    platform = Platform.open(_settings(args))
    try:
        summaries = platform.datasets.list_datasets(SYSTEM)
    finally:
        platform.close()
    print(f"{'name':<32} {'latest':>6} {'versions':>8}  created")
    for summary in summaries:
        print(
            f"{summary.name:<32} {summary.latest_version:>6} {summary.versions:>8}  "
            f"{summary.created_at:%Y-%m-%d %H:%M} by {summary.created_by}"
        )
    return 0


def _datasets_show(args: argparse.Namespace) -> int:
    from radstack.errors import RadstackError
    from radstack.platform import Platform
    from radstack.security.policy import SYSTEM

    platform = Platform.open(_settings(args))
    try:
        version = platform.datasets.version(SYSTEM, args.name, args.version)
    except RadstackError as exc:
        print(f"radstack datasets show: {exc.message}", file=sys.stderr)
        return 2
    finally:
        platform.close()
    _print_version(version)
    return 0


def _print_version(version: DatasetVersion) -> None:
    """A version's identity and its counts per split and class, as a table."""
    state = "" if version.created else " (already made: the same content)"
    shares = "/".join(f"{100 * r:g}" for r in version.ratios)
    print(
        f"data set {version.name} version {version.version}{state}: {version.item_count} images, "
        f"seed {version.seed}, split {shares}, content {version.content_hash[:16]}"
    )
    print(f"  {'split':<12} {'patients':>8} {'images':>7} {'positive':>9} {'negative':>9}  types")
    for split in ("train", "validation", "test", "all"):
        entry = version.counts[split]
        types = ", ".join(f"{kind} {count}" for kind, count in sorted(entry["types"].items()))
        print(
            f"  {split:<12} {entry['patients']:>8} {entry['images']:>7} {entry['positive']:>9} "
            f"{entry['negative']:>9}  {types}"
        )
    total = version.counts["all"]
    print(f"  {total['positive']} positive and {total['negative']} negative images in all")


def _worker(args: argparse.Namespace) -> int:
    from radstack.platform import Platform

    settings = _settings(args)
    platform = Platform.open(settings)
    print(f"radstack worker: queue {settings.queue_url or 'sqlite (data dir)'}", file=sys.stderr)
    try:
        platform.run_worker()
    finally:
        platform.close()
    return 0


def _viewer_fetch(args: argparse.Namespace) -> int:
    from radstack.web.ohif import OHIF_VERSION, ViewerFetchError, fetch_viewer, viewer_dir

    directory = args.cache or viewer_dir(Settings().ohif_dir)
    try:
        result = fetch_viewer(directory, tarball=args.tarball)
    except ViewerFetchError as exc:
        print(f"radstack viewer fetch: {exc}", file=sys.stderr)
        return 1
    state = "fetched and verified" if result.fetched else "already cached"
    print(f"OHIF {OHIF_VERSION} {state} in {result.directory}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radstack", description="Open-source medical imaging platform.")
    parser.add_argument("--version", action="version", version=f"radstack {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP (DICOMweb, API) service")
    serve.add_argument("--data-dir", type=Path, help="where the index and blobs live (RADSTACK_DATA_DIR)")
    serve.add_argument("--host", help="address to listen on (RADSTACK_HOST, default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, help="HTTP port (RADSTACK_HTTP_PORT, default 8080)")
    serve.add_argument(
        "--dicom-port", type=int, help="DICOM port (RADSTACK_DICOM_PORT, default 11112; 0: no DICOM service)"
    )
    serve.add_argument("--ae-title", help="DICOM AE title (RADSTACK_AE_TITLE, default RADSTACK)")
    serve.add_argument("--no-workers", action="store_true", help="do not run queue workers in this process")
    serve.add_argument(
        "--demo", action="store_true", help="load demo studies when the index holds none (RADSTACK_DEMO)"
    )
    serve.add_argument(
        "--tls-cert-file", type=Path, help="PEM certificate chain: serve HTTPS (RADSTACK_TLS_CERT_FILE)"
    )
    serve.add_argument("--tls-key-file", type=Path, help="its PEM private key (RADSTACK_TLS_KEY_FILE)")
    serve.add_argument(
        "--dicom-tls-port", type=int, help="DICOM over TLS port (RADSTACK_DICOM_TLS_PORT, default 0: none)"
    )
    serve.set_defaults(func=_serve)
    gc = commands.add_parser(
        "gc", help="remove blobs no index row refers to (left by crashes, old documents)"
    )
    gc.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    gc.add_argument("--grace-seconds", type=float, default=3600.0, help="keep blobs younger than this")
    gc.set_defaults(func=_gc)
    imp = commands.add_parser(
        "import",
        help="import every DICOM file under a directory or bucket prefix (an import job); exit 1 when "
        "some files were refused",
    )
    imp.add_argument("source", help="directory to import recursively, or s3://bucket/prefix")
    imp.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    imp.add_argument("--client-token", help="idempotency token: the same token resumes the same job")
    imp.set_defaults(func=_import)
    audit = commands.add_parser("audit", help="the tamper-evident audit trail")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    audit_verify = audit_commands.add_parser(
        "verify", help="check the audit chain; exit 1 if a record was edited, inserted or deleted"
    )
    audit_verify.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    audit_verify.set_defaults(func=_audit_verify)
    keys = commands.add_parser("keys", help="the key-encryption keys of blob encryption at rest")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    keys_rotate = keys_commands.add_parser(
        "rotate",
        help="new KEK version (local) or the KMS key's current one; re-wrap every blob's key (resumable)",
    )
    keys_rotate.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    keys_rotate.add_argument(
        "--grace-seconds", type=float, default=5.0, help="wait for running processes to see a new KEK"
    )
    keys_rotate.add_argument("--workers", type=int, default=8, help="blobs re-wrapped at once")
    keys_rotate.set_defaults(func=_keys_rotate)
    keys_status = keys_commands.add_parser(
        "status", help="blobs per KEK; exit 1 while any is under an old KEK, unencrypted or damaged"
    )
    keys_status.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    keys_status.set_defaults(func=_keys_status)
    user = commands.add_parser("user", help="built-in users and service accounts")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    user_create = user_commands.add_parser("create", help="add a user (a person or a service account)")
    user_create.add_argument("username")
    user_create.add_argument("--role", required=True, help="admin, radiologist, technologist, ...")
    user_create.add_argument("--password-stdin", action="store_true", help="read a password from stdin")
    user_create.add_argument("--referring-name", help="Referring Physician's Name (for the referred scope)")
    user_create.add_argument("--institution", action="append", help="Institution Name (institution scope)")
    user_create.add_argument("--ae-title", help="calling AE title of a DICOM peer acting as this account")
    user_create.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    user_create.set_defaults(func=_user_create)
    user_list = user_commands.add_parser("list", help="list users: role, disabled, must change password")
    user_list.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    user_list.set_defaults(func=_user_list)
    user_passwd = user_commands.add_parser(
        "passwd", help="set a user's password (typed twice at a terminal, else read from stdin)"
    )
    user_passwd.add_argument("username")
    user_passwd.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    user_passwd.add_argument(
        "--must-change", action="store_true", help="a temporary password: the user must change it at login"
    )
    user_passwd.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    user_passwd.set_defaults(func=_user_passwd)
    for name, what in (
        ("disable", "refuse a user's logins, sessions and tokens"),
        ("enable", "enable a user again"),
    ):
        user_state = user_commands.add_parser(name, help=what)
        user_state.add_argument("username")
        user_state.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
        user_state.set_defaults(func=_user_state)
    user_role = user_commands.add_parser("role", help="give a user another role")
    user_role.add_argument("username")
    user_role.add_argument("role", help="admin, radiologist, technologist, monitoring, ...")
    user_role.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    user_role.set_defaults(func=_user_role)
    token = commands.add_parser("token", help="API tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    token_create = token_commands.add_parser("create", help="print a new bearer token for a user")
    token_create.add_argument("--user", required=True)
    token_create.add_argument("--role", help="a role for this token other than the user's")
    token_create.add_argument("--label", default="", help="what the token is for")
    token_create.add_argument(
        "--expires-days", type=float, default=90.0, help="lifetime in days (0: never expires)"
    )
    token_create.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    token_create.set_defaults(func=_token_create)
    token_revoke = token_commands.add_parser("revoke", help="revoke a token by its id")
    token_revoke.add_argument("token_id", type=int)
    token_revoke.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    token_revoke.set_defaults(func=_token_revoke)
    viewer = commands.add_parser("viewer", help="the OHIF viewer served at /viewer/")
    viewer_commands = viewer.add_subparsers(dest="viewer_command", required=True)
    viewer_fetch = viewer_commands.add_parser(
        "fetch", help="fetch the pinned OHIF build (npm pack), verify its checksum, cache it (once)"
    )
    viewer_fetch.add_argument("--cache", type=Path, help="cache directory (RADSTACK_OHIF_DIR)")
    viewer_fetch.add_argument("--tarball", type=Path, help="install this @ohif/app tarball (offline)")
    viewer_fetch.set_defaults(func=_viewer_fetch)
    datasets = commands.add_parser("datasets", help="data sets: labeled images split by patient, versioned")
    datasets_commands = datasets.add_subparsers(dest="datasets_command", required=True)
    datasets_create = datasets_commands.add_parser(
        "create",
        help="make a version from a folder written by 'radstack demo-data fractures' (its files are imported)",
    )
    datasets_create.add_argument("--name", required=True, help="the data set (a new version if it exists)")
    datasets_create.add_argument("--from-folder", required=True, help="the folder with truth.json")
    datasets_create.add_argument("--seed", type=int, default=0, help="seed of the split by patient")
    datasets_create.add_argument("--split", default="70/15/15", help="train/validation/test shares")
    datasets_create.add_argument("--description", default="", help="what the data set is for")
    datasets_create.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    datasets_create.set_defaults(func=_datasets_create)
    datasets_list = datasets_commands.add_parser("list", help="data sets and their newest versions")
    datasets_list.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    datasets_list.set_defaults(func=_datasets_list)
    datasets_show = datasets_commands.add_parser("show", help="a version's counts per split and class")
    datasets_show.add_argument("name")
    datasets_show.add_argument("--version", type=int, help="which version (default: the newest)")
    datasets_show.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    datasets_show.set_defaults(func=_datasets_show)
    worker = commands.add_parser("worker", help="run queue consumers only (jobs, workflows)")
    worker.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    worker.set_defaults(func=_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # a line per DIMSE message otherwise
    logging.getLogger("botocore").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
