"""Runtime settings: one object, built once and passed in (env prefix ``RADSTACK_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every flag of ``radstack serve`` and its ``RADSTACK_<NAME>`` environment twin.

    Backends are URLs: ``database_url`` (SQLite in the data dir by default, or
    ``postgresql+psycopg://…``) and ``blob_url`` (``file://<data>/blobs`` by default).
    """

    model_config = SettingsConfigDict(env_prefix="RADSTACK_", extra="ignore")

    data_dir: Path = Path("./var")
    host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    dicom_port: int = Field(default=11112, ge=0, le=65535)
    ae_title: str = "RADSTACK"
    no_workers: bool = False
    database_url: str = ""
    blob_url: str = ""
    #: STOW request bodies above this many bytes are refused with 413 before they are read.
    max_request_bytes: int = Field(default=2 * 1024**3, gt=0)
    #: QIDO never returns more than this many matches per request (PS3.18 §8.3.4.4 ``limit``).
    qido_max_limit: int = Field(default=1000, gt=0)
    #: Frames of native or lossless input are re-encoded as HTJ2K lossless; off keeps them as stored.
    encode_htj2k: bool = True
    #: Worker processes that parse and encode incoming instances: -1 one per CPU core, 0 none (ingest
    #: runs in the request's thread).
    ingest_processes: int = Field(default=-1, ge=-1)

    @field_validator("ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        if not 0 < len(value) <= 16 or "\\" in value or not value.isprintable():
            raise ValueError(f"AE title {value!r} must be 1 to 16 printable characters (PS3.5 §6.2)")
        return value

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'index.db').resolve()}"

    @property
    def resolved_blob_url(self) -> str:
        return self.blob_url or f"file://{(self.data_dir / 'blobs').resolve()}"
