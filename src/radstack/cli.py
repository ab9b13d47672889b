"""The ``radstack`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from radstack import __version__
from radstack.config import Settings

if TYPE_CHECKING:
    from radstack.ai.datasets import DatasetVersion
    from radstack.ai.registry import ModelVersion
    from radstack.platform import Platform
    from radstack.security.authn import Accounts
    from radstack.security.crypto import EncryptedBlobStore
    from radstack.security.policy import Principal

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


def _models(args: argparse.Namespace) -> int:
    """``radstack models …``: the model registry, acting as the user named by ``--user`` (whose role
    the registry's policy checks, as it does an API caller's)."""
    from radstack.errors import RadstackError
    from radstack.platform import Platform

    platform = Platform.open(_settings(args))
    try:
        return int(_MODEL_COMMANDS[args.models_command](platform, args))
    except RadstackError as exc:
        print(f"radstack models {args.models_command}: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file named on the command line that cannot be read
        print(f"radstack models {args.models_command}: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2
    finally:
        platform.close()


def _acting(platform: Platform, args: argparse.Namespace) -> Principal:
    """The principal of ``--user``: an enabled user of this data dir."""
    from radstack.errors import Forbidden

    user = platform.accounts.user(args.user)
    if user.disabled:
        raise Forbidden(f"user {user.username!r} is disabled")
    return user.principal("cli").with_source("cli")


def _json_file(path: Path | None, what: str) -> Any:
    from radstack.errors import BadRequest

    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadRequest(f"the {what} file {str(path)!r} cannot be read as JSON: {exc}") from None


def _model_inputs(args: argparse.Namespace) -> dict[str, Any]:
    from radstack.ai.card import ModelCard
    from radstack.ai.registry import Lineage

    return {
        "lineage": Lineage.from_json(_json_file(args.lineage, "lineage")) if args.lineage else None,
        "metrics": _json_file(args.metrics, "metrics"),
        "card": ModelCard.from_json(_json_file(args.card, "card")) if args.card else None,
        "description": args.description,
    }


def _print_version(version: ModelVersion) -> None:
    stage = version.stage.value if version.stage else "-"
    print(f"{version.ref}: {version.status.value}, stage {stage} ({version.format.value})")


def _models_list(platform: Platform, args: argparse.Namespace) -> int:
    rows = [("MODEL", "VERSIONS", "LATEST", "PRODUCTION", "DESCRIPTION")]
    for model in platform.models.models():
        latest = str(model.latest_version or "-")
        production = f"v{model.production_version}" if model.production_version else "-"
        rows.append((model.name, str(model.version_count), latest, production, model.description[:60]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _models_show(platform: Platform, args: argparse.Namespace) -> int:
    registry = platform.models
    if args.version is None:
        model = registry.model(args.name)
        print(f"{model.name}: {model.description or 'no description'} (created by {model.created_by})")
        for version in registry.versions(args.name):
            reviewed = f", {version.status.value} by {version.reviewed_by}" if version.reviewed_by else ""
            stage = version.stage.value if version.stage else "-"
            print(
                f"  v{version.version}  {version.status.value:<8}  {stage:<10}  trained by "
                f"{version.trained_by}{reviewed}  {version.created_at:%Y-%m-%d %H:%M}"
            )
        return 0
    version = registry.version(args.name, args.version)
    _print_version(version)
    print(f"  trained by {version.trained_by}, registered by {version.registered_by}")
    if version.reviewed_by:
        print(f"  {version.status.value} by {version.reviewed_by}: {version.review_comment}")
    for label, document in (
        ("contract", version.contract.to_json()),
        ("lineage", version.lineage.to_json()),
        ("card", version.card.to_json()),
    ):
        print(f"  {label}: {json.dumps(document, sort_keys=True)}")
    if "auroc" in version.metrics:
        print(f"  AUROC {version.metrics['auroc']}")
    for artifact in version.artifacts:
        print(
            f"  {artifact.kind.value:<13} {artifact.name}  {_size(artifact.size)}  sha256 {artifact.sha256}"
        )
    return 0


def _models_import_onnx(platform: Platform, args: argparse.Namespace) -> int:
    from radstack.ai.contract import Contract

    contract = Contract.from_json(_json_file(args.contract, "contract"))
    version = platform.models.import_onnx(
        args.name,
        args.model.read_bytes(),
        contract,
        by=_acting(platform, args),
        weights=args.weights.read_bytes() if args.weights else None,
        **_model_inputs(args),
    )
    _print_version(version)
    return 0


def _models_import_bundle(platform: Platform, args: argparse.Namespace) -> int:
    from radstack.ai.contract import Contract

    declared = _json_file(args.contract, "contract")
    bundle = args.bundle if args.bundle.is_dir() else args.bundle.read_bytes()
    version = platform.models.import_bundle(
        args.name,
        bundle,
        by=_acting(platform, args),
        contract=Contract.from_json(declared) if declared is not None else None,
        **_model_inputs(args),
    )
    _print_version(version)
    return 0


def _models_review(platform: Platform, args: argparse.Namespace) -> int:
    registry = platform.models
    review = registry.approve if args.models_command == "approve" else registry.reject
    _print_version(review(args.name, args.version, by=_acting(platform, args), comment=args.comment))
    return 0


def _models_promote(platform: Platform, args: argparse.Namespace) -> int:
    from radstack.ai.registry import Stage

    by = _acting(platform, args)
    _print_version(platform.models.promote(args.name, args.version, Stage(args.stage), by=by))
    return 0


def _models_rollback(platform: Platform, args: argparse.Namespace) -> int:
    _print_version(platform.models.rollback(args.name, by=_acting(platform, args)))
    return 0


def _models_build_starter(args: argparse.Namespace) -> int:
    """``radstack models build-starter``: make the starter model from its recipe (no data dir involved),
    with a progress bar per phase, a line per epoch and each phase's time."""
    from radstack.ai.starter import RECIPE_PATH, STARTER_DIR, BuildProgress, Recipe, build_starter
    from radstack.errors import RadstackError

    bar = _ProgressBar(sys.stderr)

    def show(event: BuildProgress) -> None:
        if event.seconds is not None:
            with bar.lock:
                bar._erase()
            print(f"{event.phase}: {event.seconds:.1f} s", flush=True)
        elif event.epoch is not None:
            epoch = event.epoch
            validation = ", ".join(f"{k} {v:.3f}" for k, v in sorted(epoch.validation.items()))
            with bar.lock:
                bar._erase()
            print(
                f"epoch {epoch.epoch}/{epoch.epochs}: train loss {epoch.train_loss:.3f}, validation: "
                f"{validation or '-'} ({epoch.seconds:.1f} s)",
                flush=True,
            )
        else:
            bar.show_count(event.done, event.total, f"{event.unit} ({event.phase}: {event.detail})")

    # The ONNX exporter's optimisation passes log a line per folded initializer and rewrite.
    for name in ("onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)
    recipe_path = args.recipe or RECIPE_PATH
    try:
        recipe = Recipe.load(recipe_path)
        with bar.attached(logging.getLogger()):
            built = build_starter(recipe, args.out or STARTER_DIR, show, processes=args.processes)
    except (RadstackError, ValueError) as exc:
        message = exc.message if isinstance(exc, RadstackError) else str(exc)
        print(f"radstack models build-starter: {message}", file=sys.stderr)
        return 2
    except OSError as exc:  # the output folder cannot be written
        print(f"radstack models build-starter: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2
    manifest = built.manifest
    metrics, timings = manifest["metrics"], manifest["timings"]
    low, high = metrics["auroc_ci"]
    at_one = metrics["froc"]["at"].get("1")
    print(
        f"test AUROC {metrics['auroc']:.3f} (95% CI {low:.3f}-{high:.3f}) on {metrics['n_images']} images; "
        f"FROC sensitivity {'-' if at_one is None else f'{at_one:.3f}'} at 1 FP/image"
    )
    print(
        f"times: data {timings['data_seconds']:.1f} s, training {timings['training_seconds']:.1f} s "
        f"({manifest['training']['device']}, {manifest['training']['threads']} thread(s)), export "
        f"{timings['export_seconds']:.1f} s, evaluation {timings['evaluation_seconds']:.1f} s, total "
        f"{timings['total_seconds']:.1f} s"
    )
    print(f"wrote {built.onnx_path} (sha256 {built.sha256}) and {built.manifest_path}")
    return 0


_MODEL_COMMANDS: dict[str, Callable[[Platform, argparse.Namespace], int]] = {
    "list": _models_list,
    "show": _models_show,
    "import-onnx": _models_import_onnx,
    "import-bundle": _models_import_bundle,
    "approve": _models_review,
    "reject": _models_review,
    "promote": _models_promote,
    "rollback": _models_rollback,
}


def _add_models_parser(commands: Any) -> None:
    models = commands.add_parser("models", help="the model registry: versions, approval, stages, imports")
    sub = models.add_subparsers(dest="models_command", required=True)

    def command(name: str, help: str, *, user: bool = True) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help)
        parser.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
        if user:
            parser.add_argument(
                "--user", required=True, help="the user acting (needs the manage-models permission)"
            )
        parser.set_defaults(func=_models)
        return parser

    command("list", "list the registered models", user=False)
    show = command("show", "a model and its versions, or one version in detail", user=False)
    show.add_argument("name")
    show.add_argument("version", type=int, nargs="?")
    for name, help in (
        ("import-onnx", "register an ONNX model with its declared input/output contract (JSON)"),
        ("import-bundle", "register a MONAI bundle (a directory or zip: configs/metadata.json and weights)"),
    ):
        imp = command(name, help)
        imp.add_argument("name", help="model name (lowercase letters, digits, '.', '_', '-')")
        if name == "import-onnx":
            imp.add_argument("model", type=Path, help="the .onnx file")
            imp.add_argument("--contract", type=Path, required=True, help="its input/output contract (JSON)")
            imp.add_argument("--weights", type=Path, help="the source weights, kept with the version")
        else:
            imp.add_argument("bundle", type=Path, help="the bundle directory or zip file")
            imp.add_argument("--contract", type=Path, help="the contract the bundle must match (JSON)")
        imp.add_argument(
            "--lineage", type=Path, help="JSON: dataset_version, code_version, hyperparameters, ..."
        )
        imp.add_argument("--metrics", type=Path, help="JSON: evaluation metrics (see radstack.ai.card)")
        imp.add_argument("--card", type=Path, help="JSON: intended_use, training_data, limitations")
        imp.add_argument("--description", default="", help="the model's description (when it is new)")
    for name, help in (
        ("approve", "approve a pending version (not by its trainer)"),
        ("reject", "reject a pending version"),
    ):
        review = command(name, help)
        review.add_argument("name")
        review.add_argument("version", type=int)
        review.add_argument("--comment", required=True, help="why")
    promote = command("promote", "put a version in staging, or an approved one in production")
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    promote.add_argument("--stage", choices=("staging", "production"), default="production")
    rollback = command("rollback", "return production to the version that was there before")
    rollback.add_argument("name")
    build = sub.add_parser(
        "build-starter",
        help="make the shipped starter model 'fracture' from its recipe: train, export, evaluate (make starter-model)",
    )
    build.add_argument(
        "--recipe", type=Path, help="the recipe (JSON; default: the one shipped in the package)"
    )
    build.add_argument(
        "--out", type=Path, help="where to write fracture.onnx and fracture.json (default: the package's)"
    )
    build.add_argument(
        "--processes", type=int, default=1, help="worker processes drawing the images (default 1: here)"
    )
    build.set_defaults(func=_models_build_starter)


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
        job, _created = platform.jobs.create(IMPORT_KIND, {"source": source}, client_token=args.client_token)
        print(f"import job {job.id}: {source}", file=sys.stderr)
        with bar.attached(logging.getLogger()):
            platform.jobs.execute(job.id, on_progress=bar.show)
        job = records.get(job.id)
        refused = platform.import_items.items(job.id, failed=True, limit=REFUSED_LISTED)
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

    def show_count(self, done: int, total: int, what: str) -> None:
        """``done`` of ``total`` things (``what``: "images"), for work that is not files and bytes."""
        filled = min(self.width, self.width * done // total) if total else self.width
        with self.lock:
            self.line = f"[{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {what}"
            now = time.monotonic()
            if done == total or now - self.last >= self.every:
                self.last = now
                self._draw()

    def say(self, text: str, stream: TextIO | None = None) -> None:
        """Write a whole line (to stdout by default) without running into the bar."""
        with self.lock:
            was_drawn = self.drawn
            self._erase()
            print(text, file=stream or sys.stdout, flush=True)
            if was_drawn:
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


def _demo_fractures(args: argparse.Namespace) -> int:
    """Write synthetic fracture radiographs (DX DICOM) and their ground truth, with a progress bar."""
    from collections import Counter

    from radstack.ai.synthetic import Options, SyntheticDataError, write_dataset

    bar = _ProgressBar(sys.stderr)
    try:
        options = Options(
            fracture_rate=args.fracture_rate,
            scale=args.scale,
            images_per_patient=args.images_per_patient,
            rg3_rate=args.rg3_rate,
        )
        with bar.attached(logging.getLogger()):
            document = write_dataset(
                args.out,
                args.count,
                args.seed,
                options,
                on_progress=lambda d, t: bar.show_count(d, t, "images"),
            )
    except SyntheticDataError as exc:
        print(f"radstack demo-data fractures: {exc.message}", file=sys.stderr)
        return 2
    images = document["images"].values()
    kinds = Counter(str(image["type"]) for image in images if image["fracture"])
    patients = len({image["patient_id"] for image in images})
    detail = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
    print(
        f"{len(document['images'])} images of {patients} patients in {args.out / 'dicom'}: "
        f"{sum(kinds.values())} with a fracture ({detail or 'none'}), "
        f"{sum(1 for image in images if image['composited'])} composited onto RG3"
    )
    print(f"ground truth: {args.out / 'truth.json'}; load them with: radstack import {args.out / 'dicom'}")
    return 0


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
        job, _created = platform.jobs.create(DATASET_KIND, params)
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
    _print_dataset_version(version)
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
    _print_dataset_version(version)
    return 0


def _print_dataset_version(version: DatasetVersion) -> None:
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


def _train(args: argparse.Namespace) -> int:
    """Submit a training job (a worker of the ``training`` queue runs it); with ``--follow``, show its
    progress and each epoch's validation metrics until it ends. Exit 0 when submitted (or, following,
    when a version was registered), 1 when the followed job failed or was cancelled, 2 when refused."""
    from radstack.errors import BadRequest, RadstackError
    from radstack.platform import Platform
    from radstack.security.policy import SYSTEM

    platform = Platform.open(_settings(args))
    try:
        name, _, number = args.dataset.partition(":")
        if number and not number.isdigit():
            raise BadRequest(f"--dataset {args.dataset!r}: give NAME or NAME:VERSION, VERSION a number")
        config = _json_file(args.config, "config")
        if config is None:
            config = {}
        elif not isinstance(config, dict):
            raise BadRequest(
                f"the config file {str(args.config)!r} must hold a JSON object of TrainConfig fields"
            )
        overrides = {"epochs": args.epochs, "seed": args.seed}
        config = {**config, **{key: value for key, value in overrides.items() if value is not None}}
        principal = _acting(platform, args) if args.user else SYSTEM
        job, _created = platform.training.submit(
            principal,
            dataset=name,
            version=int(number) if number else None,
            model=args.model,
            config=config,
            description=args.description,
        )
        print(
            f"training job {job.id}: data set {job.dataset} version {job.dataset_version} into model "
            f"{job.model}, {job.config['epochs']} epochs, seed {job.config['seed']}",
            file=sys.stderr,
        )
        if not args.follow:
            print(job.id)
            print(
                f"a worker of the training queue runs it; follow it with GET /api/v1/training-jobs/{job.id} "
                f"or on the page /models/{job.model}/training-jobs/{job.id}",
                file=sys.stderr,
            )
            return 0
        return _follow_training(platform, principal, job.id)
    except RadstackError as exc:
        print(f"radstack train: {exc.message}", file=sys.stderr)
        return 2
    finally:
        platform.close()


def _epoch_line(epoch: dict[str, Any]) -> str:
    """One finished epoch's losses and validation metrics, for people."""
    validation = epoch.get("validation") or {}
    parts = [f"epoch {epoch['epoch']}/{epoch['epochs']}: train loss {epoch['train_loss']:.4f}"]
    for key, label in (
        ("loss", "validation loss {:.4f}"),
        ("auroc", "AUROC {:.3f}"),
        ("froc_sensitivity_at_1", "sensitivity at 1 FP/image {:.3f}"),
    ):
        if isinstance(validation.get(key), int | float):
            parts.append(label.format(validation[key]))
    return ", ".join(parts) + f" ({epoch['seconds']:.1f} s)"


def _follow_training(platform: Platform, principal: Principal, job_id: str) -> int:
    """Poll the job until it ends: a progress bar with the epoch and the loss, a line per epoch."""
    from radstack.jobs.records import FINAL_STATES, JobState

    bar = _ProgressBar(sys.stderr)
    shown, waiting, drawn = 0, False, ""
    try:
        with bar.attached(logging.getLogger()):
            while True:
                job = platform.training.get(principal, job_id)
                if job.state is JobState.QUEUED and not waiting:
                    waiting = True
                    bar.say(
                        "queued: waiting for a worker of the training queue "
                        "(radstack serve, or radstack worker --queues training)",
                        sys.stderr,
                    )
                for epoch in job.epochs[shown:]:
                    bar.say(_epoch_line(epoch))
                shown = max(shown, len(job.epochs))
                progress = job.progress
                if job.state is JobState.RUNNING and progress.get("epochs") and progress.get("batches"):
                    total = int(progress["epochs"]) * int(progress["batches"])
                    stage = str(progress.get("stage", "training"))
                    loss = progress.get("loss")
                    what = f"batches, epoch {progress.get('epoch', 0)}/{progress['epochs']}"
                    what += f", loss {loss:.4f}" if isinstance(loss, int | float) else ""
                    what += f" ({stage})" if stage != "training" else ""
                    done = round(float(progress.get("fraction", 0)) * total)
                    if f"{done} {what}" != drawn:  # the bar draws a finished count every time
                        drawn = f"{done} {what}"
                        bar.show_count(done, total, what)
                if job.state in FINAL_STATES:
                    break
                time.sleep(0.5)
    except KeyboardInterrupt:
        print(f"stopped following; training job {job_id} goes on", file=sys.stderr)
        return 130
    result = job.result
    if job.state is not JobState.SUCCEEDED or result is None:
        print(f"radstack train: training job {job.id} is {job.state}: {job.error}", file=sys.stderr)
        return 1
    auroc, interval = result.get("test_auroc"), result.get("test_auroc_ci") or []
    text = f"test AUROC {auroc:.3f}" if isinstance(auroc, int | float) else "test AUROC not defined"
    if len(interval) == 2 and all(isinstance(v, int | float) for v in interval):
        text += f" (95% CI {interval[0]:.3f}-{interval[1]:.3f})"
    print(
        f"registered {result['model']} v{result['version']} ({result['status']}: someone other than "
        f"{job.submitted_by} approves it): {text} on {result.get('test_images')} test images"
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from radstack.platform import Platform

    settings = _settings(args)
    if args.queues is not None:
        settings = settings.model_copy(
            update={"worker_queues": [q.strip() for q in args.queues.split(",") if q.strip()]}
        )
    platform = Platform.open(settings)
    try:
        queues = platform.jobs.queues(settings.worker_queues or None)
    except ValueError as exc:
        platform.close()
        print(f"radstack worker: {exc}", file=sys.stderr)
        return 2
    print(
        f"radstack worker: queue {settings.queue_url or 'sqlite (data dir)'}; "
        f"consuming {', '.join(queues) or 'nothing (no handler here for the queues named)'}",
        file=sys.stderr,
    )
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
    demo = commands.add_parser("demo-data", help="make demonstration data sets")
    demo_commands = demo.add_subparsers(dest="demo_command", required=True)
    fractures = demo_commands.add_parser(
        "fractures",
        help="synthetic fracture radiographs (DX DICOM, marked synthetic) with ground truth in OUT/truth.json",
    )
    fractures.add_argument(
        "--out", type=Path, required=True, help="directory to write (must hold no data set)"
    )
    fractures.add_argument("--count", type=int, required=True, help="number of images")
    fractures.add_argument("--seed", type=int, required=True, help="the same seed makes the same files")
    fractures.add_argument(
        "--fracture-rate", type=float, default=0.5, help="share of patients with a fracture (default 0.5)"
    )
    fractures.add_argument(
        "--images-per-patient",
        type=int,
        default=1,
        help="views per patient: 1 to 3 (AP/PA, lateral, oblique)",
    )
    fractures.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="image size relative to 2500x2048 (wrist 1500x1200; default 1)",
    )
    fractures.add_argument(
        "--rg3-rate",
        type=float,
        default=0.1,
        help="share of patients composited onto pydicom-data's real RG3 radiograph (default 0.1)",
    )
    fractures.set_defaults(func=_demo_fractures)
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
    train = commands.add_parser(
        "train",
        help="train a fracture detector on a data set version and register it (a job a worker of the "
        "training queue runs)",
    )
    train.add_argument("--dataset", required=True, help="NAME or NAME:VERSION (default: the newest version)")
    train.add_argument("--model", required=True, help="the model to register a new version of")
    train.add_argument("--config", type=Path, help="training config: a JSON object of TrainConfig fields")
    train.add_argument("--epochs", type=int, help="epochs (overrides the config's)")
    train.add_argument("--seed", type=int, help="seed (overrides the config's)")
    train.add_argument("--description", default="", help="the model's description (when it is new)")
    train.add_argument(
        "--user", help="the user training (needs manage-models; default: the system, as an admin)"
    )
    train.add_argument(
        "--follow", action="store_true", help="show the progress until the job ends; exit 1 if it fails"
    )
    train.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    train.set_defaults(func=_train)
    worker = commands.add_parser("worker", help="run queue consumers only (jobs, workflows)")
    worker.add_argument("--data-dir", type=Path, help="data directory (RADSTACK_DATA_DIR)")
    worker.add_argument(
        "--queues",
        help="queues to consume, comma-separated, e.g. inference,training (RADSTACK_WORKER_QUEUES; default all)",
    )
    worker.set_defaults(func=_worker)
    _add_models_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # a line per DIMSE message otherwise
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # a line per attribute module of every SR
    for exporter in ("onnx_ir", "onnxscript"):  # a line per graph pass of each ONNX export
        logging.getLogger(exporter).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
