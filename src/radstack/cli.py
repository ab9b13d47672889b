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
    print(
        f"radstack {__version__}: data in {settings.data_dir.resolve()}, http://{settings.host}:{settings.http_port}/"
    )
    uvicorn.run(app, host=settings.host, port=settings.http_port, log_level="warning", access_log=False)
    return 0


def _gc(args: argparse.Namespace) -> int:
    from radstack.platform import Platform
    from radstack.store.gc import collect_garbage

    settings = Settings(**({"data_dir": args.data_dir} if args.data_dir else {}))
    platform = Platform.open(settings)
    try:
        report = collect_garbage(platform.store, grace_seconds=args.grace_seconds)
    finally:
        platform.close()
    print(f"examined {report.examined} blobs, removed {report.removed} unreferenced")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radstack", description="Open-source medical imaging platform.")
    parser.add_argument("--version", action="version", version=f"radstack {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP (DICOMweb, API) service")
    serve.add_argument("--data-dir", type=Path, help="where the index and blobs live (RADSTACK_DATA_DIR)")
    serve.add_argument("--host", help="address to listen on (RADSTACK_HOST, default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, help="HTTP port (RADSTACK_HTTP_PORT, default 8080)")
    serve.add_argument("--dicom-port", type=int, help="DICOM port (RADSTACK_DICOM_PORT, default 11112)")
    serve.add_argument("--ae-title", help="DICOM AE title (RADSTACK_AE_TITLE, default RADSTACK)")
    serve.add_argument("--no-workers", action="store_true", help="do not run queue workers in this process")
    serve.set_defaults(func=_serve)
    gc = commands.add_parser(
        "gc", help="remove blobs no index row refers to (left by crashes, old documents)"
    )
    gc.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    gc.add_argument("--grace-seconds", type=float, default=3600.0, help="keep blobs younger than this")
    gc.set_defaults(func=_gc)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
