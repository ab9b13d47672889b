"""The ``radstack`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from radstack import __version__
from radstack.config import Settings

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from radstack.web.app import create_app

    overrides = {
        name: value
        for name, value in {
            "data_dir": args.data_dir,
            "host": args.host,
            "http_port": args.http_port,
            "dicom_port": args.dicom_port,
            "ae_title": args.ae_title,
            "no_workers": args.no_workers or None,
        }.items()
        if value is not None
    }
    settings = Settings(**overrides)
    app = create_app(settings)
    dicom = f", DICOM {settings.ae_title} on port {settings.dicom_port}" if settings.dicom_port else ""
    print(
        f"radstack {__version__}: data in {settings.data_dir.resolve()}, "
        f"http://{settings.host}:{settings.http_port}/{dicom}"
    )
    uvicorn.run(app, host=settings.host, port=settings.http_port, log_level="warning", access_log=False)
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
    from radstack.security.audit import load_audit_key, verify
    from radstack.store.index import create_index_engine, migrate

    settings = _settings(args)
    engine = create_index_engine(settings.resolved_database_url)
    try:
        migrate(engine)
        report = verify(engine, load_audit_key(settings.data_dir, create=False))
    finally:
        engine.dispose()
    print(report.summary())
    for problem in report.problems[1:]:
        print(f"  sequence {problem.seq}: {problem.message}")
    return 0 if report.ok else 1


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))


def _import(args: argparse.Namespace) -> int:
    from radstack.ingest.importjobs import IMPORT_KIND, check_source
    from radstack.jobs.records import JobState
    from radstack.platform import Platform

    platform = Platform.open(_settings(args))
    try:
        source = check_source(str(Path(args.source).resolve()))
        jobs = platform.jobs
        # The job is recorded like one the API makes, then run here with a progress bar. If this
        # process dies, a server's or worker's sweep resumes the job where its records end.
        job, _created = jobs.records.create(IMPORT_KIND, {"source": source}, client_token=args.client_token)
        print(f"import job {job.id}: {source}", file=sys.stderr)
        bar = _ProgressBar()
        jobs.execute(job.id, on_progress=bar.show)
        bar.close()
        job = jobs.records.get(job.id)
    finally:
        platform.close()
    progress = job.progress
    print(
        f"{job.state}: {progress.get('files_done', 0)} of {progress.get('files_total', 0)} files; "
        f"{progress.get('stored', 0)} stored, {progress.get('duplicate', 0)} already stored, "
        f"{progress.get('replaced', 0)} replaced, {progress.get('failed', 0)} failed"
    )
    if job.last_error:
        print(f"error: {job.last_error}", file=sys.stderr)
    if progress.get("failed"):
        print(f"failures: GET /api/v1/import-jobs/{job.id}/failure.ndjson", file=sys.stderr)
    if job.state is not JobState.SUCCEEDED:
        return 2
    return 1 if progress.get("failed") else 0


class _ProgressBar:
    """One self-rewriting line on stderr: files and bytes done of the total."""

    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.shown = False

    def show(self, progress: dict[str, int]) -> None:
        total, done = progress.get("bytes_total", 0), progress.get("bytes_done", 0)
        filled = self.width * done // total if total else self.width
        line = (
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] "
            f"{progress.get('files_done', 0)}/{progress.get('files_total', 0)} files, "
            f"{done / 1e6:.1f}/{total / 1e6:.1f} MB, {progress.get('failed', 0)} failed"
        )
        print(line, end="", file=sys.stderr, flush=True)
        self.shown = True

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr)


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
    serve.set_defaults(func=_serve)
    gc = commands.add_parser(
        "gc", help="remove blobs no index row refers to (left by crashes, old documents)"
    )
    gc.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    gc.add_argument("--grace-seconds", type=float, default=3600.0, help="keep blobs younger than this")
    gc.set_defaults(func=_gc)
    imp = commands.add_parser("import", help="import every DICOM file under a directory (an import job)")
    imp.add_argument("source", help="directory to import recursively")
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
