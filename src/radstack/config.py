"""Runtime settings: one object, built once and passed in (env prefix ``RADSTACK_``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from radstack.errors import BadRequest

__all__ = ["PeerSetting", "Settings", "check_ae_title", "check_host"]

#: A host name or an IPv4/IPv6 address: no spaces, slashes or other URL syntax.
_HOST = re.compile(r"[A-Za-z0-9._:\-\[\]%]{1,255}")
#: A web origin as browsers send it (RFC 6454 §6.1): scheme, host and optional port, nothing else.
_ORIGIN = re.compile(r"https?://(?:[a-z0-9.\-]+|\[[0-9a-f:.]+\])(?::\d{1,5})?")


def check_ae_title(value: str) -> str:
    """An AE title without its insignificant spaces; ``ValueError`` unless valid (PS3.5 §6.2, VR AE)."""
    stripped = value.strip(" ")
    if (
        not 0 < len(stripped) <= 16
        or "\\" in stripped
        or not stripped.isprintable()
        or not stripped.isascii()
    ):
        raise ValueError(
            f"AE title {value!r} must be 1 to 16 printable ASCII characters without a backslash (PS3.5 §6.2)"
        )
    return stripped


def require_ae_title(value: str) -> str:
    """:func:`check_ae_title` for a value a client sent.

    Raises
    ------
    BadRequest
        When ``value`` is not a valid AE title (an HTTP 400 naming the rule).
    """
    try:
        return check_ae_title(value)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def check_host(value: str) -> str:
    """A peer's host name or IP address, stripped; ``ValueError`` unless it is one."""
    host = value.strip()
    if not _HOST.fullmatch(host):
        raise ValueError(f"host {value!r} is not a host name or IP address")
    return host


class PeerSetting(BaseModel):
    """A DICOM peer named in configuration (``RADSTACK_PEERS``): a C-MOVE destination."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        return check_host(value)


class Settings(BaseSettings):
    """Every flag of ``radstack serve`` and its ``RADSTACK_<NAME>`` environment twin.

    Backends are URLs: ``database_url`` (SQLite in the data dir by default, or
    ``postgresql+psycopg://…``) and ``blob_url`` (``file://<data>/blobs`` by default).
    """

    model_config = SettingsConfigDict(env_prefix="RADSTACK_", extra="ignore")

    data_dir: Path = Path("./var")
    host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    #: DIMSE listener port (C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE); 0 runs no listener.
    dicom_port: int = Field(default=11112, ge=0, le=65535)
    ae_title: str = "RADSTACK"
    #: C-MOVE destinations known from configuration, as JSON:
    #: ``[{"ae_title": "PACS", "host": "10.0.0.5", "port": 104}]``. More can be added through
    #: ``/api/v1/peers``; those live in the index database.
    peers: list[PeerSetting] = Field(default_factory=list)
    #: Calling AE titles allowed to associate (comma-separated or a JSON list); empty allows any.
    allowed_calling_aes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Run no job consumers in this process (jobs then run in ``radstack worker`` processes).
    no_workers: bool = False
    #: Load the demo studies (a generated CT series, pydicom-data's radiographs) into an empty index.
    demo: bool = False
    #: On the first start of a data dir, install the shipped starter model ``fracture`` (registered,
    #: approved and in production; see ``radstack.ai.starter``). ``RADSTACK_STARTER_MODEL=off`` skips it.
    starter_model: bool = True
    #: With the starter model, create the routing rule ``ai-fracture``: the production ``fracture``
    #: model checks every CR and DX study as its images arrive. ``RADSTACK_AUTO_INFER=off`` skips it
    #: (the rule can also be disabled or deleted through ``/api/v1/routing-rules``).
    auto_infer: bool = True
    #: Job queue: empty for a SQLite queue in the data dir, or ``redis://host:port/db``.
    queue_url: str = ""
    #: Job consumer threads per process and queue (a queue that fixes its own, like ``training``'s
    #: one, keeps it).
    queue_workers: int = Field(default=2, ge=1)
    #: The queues this process consumes, comma-separated (``default``, ``ingest``, ``inference``,
    #: ``training``, …); empty consumes every queue it has a handler for. ``radstack worker --queues``.
    worker_queues: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Modules imported at start whose ``setup(platform)`` adds job kinds and handlers, routing
    #: actions, …: a site's own extensions (comma-separated module names).
    plugins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Runs of a job before it is DEAD (failures retried with exponential backoff in between).
    job_max_attempts: int = Field(default=5, ge=1)
    #: A running job's worker renews its lease every third of this, however long the job runs; a job
    #: whose lease runs out lost its worker (a crash, a kill -9) and is resumed by another consumer.
    job_lease_seconds: float = Field(default=30.0, gt=0)
    #: The drop folder: files put into ``<inbox>/incoming/`` are ingested and moved to
    #: ``processed/`` or ``failed/``; empty means ``<data_dir>/inbox``.
    inbox_dir: Path | None = None
    watch_inbox: bool = True
    #: A second drop folder under a bucket prefix (``s3://bucket/prefix``, with ``incoming/``,
    #: ``processed/`` and ``failed/`` below it), polled like the directory.
    inbox_url: str = ""
    #: A dropped file is taken once its size and mtime have not changed for this long.
    inbox_settle_seconds: float = Field(default=2.0, ge=0)
    #: A study with no change for this long is stable: ``study.stable`` is published and routing
    #: rules run.
    stable_seconds: float = Field(default=30.0, gt=0)
    #: URLs every event is POSTed to (JSON), with retries; comma-separated or a JSON list.
    event_webhooks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    database_url: str = ""
    blob_url: str = ""
    #: Key-encryption key of blob encryption at rest (docs/security.md): empty for key files in
    #: ``<data_dir>/keys`` (made on first start, mode 0600), ``file:///dir`` for key files elsewhere
    #: (one directory every node shares), or ``awskms:///<key id, key ARN or alias/name>``.
    key_url: str = ""
    #: Read blobs written before encryption at rest existed (they have no encryption header);
    #: ``radstack keys rotate`` encrypts them. Off: such a blob is refused as tampered with.
    allow_plaintext_blobs: bool = False
    #: STOW request bodies above this many bytes are refused with 413 before they are read.
    max_request_bytes: int = Field(default=2 * 1024**3, gt=0)
    #: QIDO never returns more than this many matches per request (PS3.18 §8.3.4.4 ``limit``).
    qido_max_limit: int = Field(default=1000, gt=0)
    #: Frames of native or lossless input are re-encoded as HTJ2K lossless; off keeps them as stored.
    encode_htj2k: bool = True
    #: Worker processes that parse and encode incoming instances: -1 one per CPU core, 0 none (ingest
    #: runs in the request's thread).
    ingest_processes: int = Field(default=-1, ge=-1)
    #: The OHIF viewer's cached build (``radstack viewer fetch``), served at ``/viewer/``; empty means
    #: ``~/.cache/radstack/ohif/<version>`` (``radstack.web.ohif.default_viewer_dir``).
    ohif_dir: Path | None = None
    # ------------------------------------------------------------------ transport security
    #: HTTPS and DICOM TLS: a PEM certificate (chain) and its unencrypted private key, both or
    #: neither; the key file must give others no access (docs/security.md).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: PEM CA certificates: DICOM TLS clients must then present a certificate they issued.
    tls_client_ca_file: Path | None = None
    #: DICOM over TLS listener (PS3.15 §B.12; the registered port is 2762); 0 runs none.
    dicom_tls_port: int = Field(default=0, ge=0, le=65535)
    #: Origins allowed cross-origin requests with credentials (``https://host[:port]``, comma-separated
    #: or a JSON list), or ``*`` alone for any origin without credentials; empty allows none.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Strict-Transport-Security max-age sent with every response when TLS is on; 0 sends none.
    hsts_seconds: int = Field(default=31536000, ge=0)
    #: Login attempts per minute allowed per client address and per user name.
    login_rate_per_minute: int = Field(default=10, ge=1)
    #: Requests with a bad token allowed per minute per client address, before 429.
    token_failures_per_minute: int = Field(default=30, ge=1)
    #: Seconds a client has to send a request's line and headers, from its first byte (or from
    #: connecting); then the connection is closed (slowloris).
    http_header_timeout: float = Field(default=10.0, gt=0)
    #: Seconds a request body may go without a byte arriving (between chunks, not in all: a slow
    #: but live upload of any size completes); then the connection is closed.
    http_body_timeout: float = Field(default=60.0, gt=0)
    #: Seconds an idle keep-alive connection is kept open between requests.
    http_keepalive_timeout: float = Field(default=15.0, gt=0)

    # ------------------------------------------------------------------ security
    #: Roles added to or replacing the defaults (JSON; see ``radstack.security.policy.load_roles``).
    roles_file: Path | None = None
    #: Role of a calling AE title that no service account names; empty refuses such associations.
    dicom_default_role: str = "technologist"
    #: UI sessions last this long after login.
    session_hours: float = Field(default=12.0, gt=0)
    #: OpenID Connect: JWT bearer tokens from this issuer for this audience are accepted.
    oidc_issuer: str = ""
    oidc_audience: str = ""
    #: The issuer's JWKS; empty reads ``jwks_uri`` from its discovery document.
    oidc_jwks_url: str = ""
    oidc_role_claim: str = "roles"
    oidc_username_claim: str = "preferred_username"
    #: Every audit record is also sent as a DICOM audit message (PS3.15 A.5) to this syslog
    #: collector: ``udp://host:514`` or ``tcp://host:601``; empty sends none.
    audit_syslog_url: str = ""
    #: Bearer tokens radstack sends to other servers (STOW-RS forwarding), by URL prefix, as JSON:
    #: ``{"https://archive.example/dicomweb": "rst_..."}``; kept out of the routing rules.
    outbound_tokens: dict[str, str] = Field(default_factory=dict)

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        return check_ae_title(value)

    @field_validator("event_webhooks", "cors_origins", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            return (
                json.loads(text)
                if text.startswith("[")
                else [v.strip() for v in text.split(",") if v.strip()]
            )
        return value

    @field_validator("event_webhooks")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"webhook URL {url!r} must start with http:// or https://")
        return value

    @field_validator("worker_queues", "plugins", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("allowed_calling_aes", mode="before")
    @classmethod
    def _split_ae_titles(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
        return value

    @field_validator("allowed_calling_aes")
    @classmethod
    def _check_ae_titles(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(check_ae_title(v) for v in value))

    @field_validator("peers")
    @classmethod
    def _unique_peers(cls, value: list[PeerSetting]) -> list[PeerSetting]:
        titles = [p.ae_title for p in value]
        duplicates = sorted({t for t in titles if titles.count(t) > 1})
        if duplicates:
            raise ValueError(f"peer AE titles must be unique; {', '.join(duplicates)} appear more than once")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        origins = list(dict.fromkeys(v.strip().rstrip("/").lower() for v in value))
        if "*" in origins and len(origins) > 1:
            raise ValueError("CORS origin '*' (any origin, without credentials) must be the only one")
        for origin in origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"CORS origin {origin!r} must be scheme://host[:port], e.g. https://viewer.example.org"
                )
        return origins

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            given = "RADSTACK_TLS_CERT_FILE" if self.tls_cert_file else "RADSTACK_TLS_KEY_FILE"
            raise ValueError(
                f"only {given} is set; TLS needs both RADSTACK_TLS_CERT_FILE and RADSTACK_TLS_KEY_FILE "
                "(a certificate and its private key), or neither"
            )
        if not self.tls_enabled and (self.dicom_tls_port or self.tls_client_ca_file):
            raise ValueError(
                "RADSTACK_DICOM_TLS_PORT and RADSTACK_TLS_CLIENT_CA_FILE need a certificate: set "
                "RADSTACK_TLS_CERT_FILE and RADSTACK_TLS_KEY_FILE"
            )
        if self.dicom_tls_port and self.dicom_tls_port == self.dicom_port:
            raise ValueError(
                f"RADSTACK_DICOM_TLS_PORT {self.dicom_tls_port} is also RADSTACK_DICOM_PORT; TLS needs a "
                "port of its own (PS3.15 §B.12)"
            )
        return self

    @property
    def tls_enabled(self) -> bool:
        """Whether a certificate is configured: HTTP is then HTTPS only, and ``dicom_tls_port`` may be set."""
        return self.tls_cert_file is not None and self.tls_key_file is not None

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'index.db').resolve()}"

    @property
    def resolved_inbox_dir(self) -> Path:
        return (self.inbox_dir or self.data_dir / "inbox").resolve()

    @property
    def resolved_blob_url(self) -> str:
        return self.blob_url or f"file://{(self.data_dir / 'blobs').resolve()}"

    @property
    def resolved_key_url(self) -> str:
        return self.key_url or f"file://{(self.data_dir / 'keys').resolve()}"
