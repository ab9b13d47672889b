"""Security's tables: users, API tokens and UI sessions (:mod:`radstack.security.authn`), and the
hash-chained audit trail with its chain head (:mod:`radstack.security.audit`)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Integer, String, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from radstack.store.models import Base

__all__ = ["AuditHeadRow", "AuditRow", "TokenRow", "UserRow"]


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(64))
    #: Referring Physician's Name this user is, for the ``referred`` scope (PN, ``Family^Given``).
    referring_name: Mapped[str | None] = mapped_column(String(324))
    #: JSON list of Institution Names, for the ``institution`` scope.
    institutions: Mapped[str] = mapped_column(Text, default="[]")
    #: Calling AE title of a DICOM peer that acts as this (service) account.
    ae_title: Mapped[str | None] = mapped_column(String(16), unique=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: The user must set a new password before a password session may do anything else.
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    password_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TokenRow(Base):
    """An API token (``kind`` api) or a UI session (``kind`` session); only the SHA-256 is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    #: A narrower role for this token (an AI service's token of an admin's account); None: the user's.
    role: Mapped[str | None] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AuditRow(Base):
    """One audit record. Never updated or deleted by radstack."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(32))
    #: Canonical JSON of what was acted on (study/series/SOP UIDs, a job id, …), hashed as stored.
    resource: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHeadRow(Base):
    """The chain head: one row (id 1) with the last sequence number and hash, made by migration 0005."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
