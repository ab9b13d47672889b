"""Authentication: built-in users, API tokens, UI sessions and OIDC bearer tokens → a :class:`Principal`.

* Passwords are argon2id hashes (argon2-cffi's defaults, RFC 9106).
* API tokens and session cookies are 256-bit random secrets shown once; the index keeps only their
  SHA-256 (a slow hash adds nothing for a secret of that entropy and would cost every request). They
  expire and can be revoked; a verified token is cached for :data:`TOKEN_CACHE_SECONDS`, so a
  revocation reaches other nodes within that time (at once on the node that revoked it).
* OIDC: a JWT whose signature verifies against the issuer's JWKS (fetched and cached), whose
  ``iss``, ``aud`` and ``exp`` check out, and whose role claim names a configured role.
* A DICOM peer is the service account whose ``ae_title`` is its calling AE title.

The first start makes an ``admin`` user with a random password and writes it, readable by the owner
only, to ``<data dir>/initial-admin-credential.txt``. That password opens only the change-password
page: the user must set a new one first (``must_change_password``); once it is changed the initial
password no longer works and the file is overwritten to say so. The forced change binds password
sessions only: an API token is made by someone who may act for the user (``radstack token create``,
run with access to the data dir, or a user manager) and works at once.

Every new password passes :func:`radstack.security.passwords.check_password_policy`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from radstack.config import require_ae_title
from radstack.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthenticated
from radstack.security.models import TokenRow, UserRow
from radstack.security.passwords import check_password_policy
from radstack.security.policy import Principal

__all__ = [
    "CREDENTIAL_FILE",
    "TOKEN_CACHE_SECONDS",
    "Accounts",
    "OidcVerifier",
    "PasswordChangeRequired",
    "User",
]

log = logging.getLogger(__name__)

CREDENTIAL_FILE = "initial-admin-credential.txt"
TOKEN_CACHE_SECONDS = 5.0
API_TOKEN_PREFIX = "rst_"
_hasher = PasswordHasher()


class PasswordChangeRequired(Forbidden):
    """403: a password session of a user who must set a new password first (the first administrator)."""

    title = "Password change required"


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: str
    referring_name: str | None
    institutions: tuple[str, ...]
    ae_title: str | None
    disabled: bool
    must_change_password: bool = False
    password_changed_at: datetime | None = None

    @classmethod
    def from_row(cls, row: UserRow) -> User:
        return cls(
            row.id,
            row.username,
            row.role,
            row.referring_name,
            tuple(json.loads(row.institutions or "[]")),
            row.ae_title,
            row.disabled,
            bool(row.must_change_password),
            _utc(row.password_changed_at),
        )

    def principal(self, method: str, role: str | None = None) -> Principal:
        return Principal(
            self.username,
            role or self.role,
            method,
            "",
            self.referring_name,
            self.institutions,
            # Only a password (session) is bound by the forced change; see the module docstring.
            must_change_password=self.must_change_password and method in ("password", "session"),
        )

    def public(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "role": self.role,
            "referring_name": self.referring_name,
            "institutions": list(self.institutions),
            "ae_title": self.ae_title,
            "disabled": self.disabled,
            "must_change_password": self.must_change_password,
            "password_changed_at": self.password_changed_at.isoformat() if self.password_changed_at else None,
        }


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _method(kind: str) -> str:
    return "token" if kind == "api" else "session"


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class Accounts:
    """Users, tokens and sessions in the index database.

    Parameters
    ----------
    engine
        The index (migrated to 0006 or later).
    roles
        Names of the roles that exist; a user or token naming another is refused.
    """

    def __init__(self, engine: Engine, roles: set[str]) -> None:
        self.engine = engine
        self.roles = roles
        #: The first admin's credential file, once :meth:`bootstrap` has named the data dir.
        self.credential_file: Path | None = None
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ users
    def _check_role(self, role: str) -> str:
        if role not in self.roles:
            raise BadRequest(f"role {role!r} does not exist; roles: {', '.join(sorted(self.roles))}")
        return role

    def create_user(
        self,
        username: str,
        role: str,
        *,
        password: str | None = None,
        referring_name: str | None = None,
        institutions: list[str] | None = None,
        ae_title: str | None = None,
        must_change_password: bool = False,
    ) -> User:
        """Add a user (a person with a password, or a service account with tokens or an AE title).

        Raises
        ------
        BadRequest
            The username is empty, longer than 128 characters, not printable or has edge spaces,
            or ``role`` does not exist, or ``ae_title`` is not a valid AE title (PS3.5 §6.2).
        WeakPassword
            ``password`` does not follow the password policy.
        Conflict
            The username or AE title is taken.
        """
        if not username or len(username) > 128 or not username.isprintable() or username != username.strip():
            raise BadRequest(
                f"username {username!r} must be 1 to 128 printable characters without edge spaces"
            )
        if password is not None:
            check_password_policy(password, username)
        now = datetime.now(UTC)
        row = UserRow(
            username=username,
            password_hash=_hasher.hash(password) if password is not None else None,
            role=self._check_role(role),
            referring_name=referring_name,
            institutions=json.dumps(list(institutions or [])),
            ae_title=require_ae_title(ae_title) if ae_title else None,
            disabled=False,
            created_at=now,
            must_change_password=must_change_password,
            password_changed_at=now if password is not None else None,
        )
        try:
            with Session(self.engine) as session, session.begin():
                session.add(row)
                session.flush()
                return User.from_row(row)
        except IntegrityError:
            raise Conflict(f"user {username!r} (or AE title {ae_title!r}) already exists") from None

    def user(self, username: str) -> User:
        """The user called ``username``.

        Raises
        ------
        NotFound
            No such user.
        """
        with Session(self.engine) as session:
            row = session.scalars(select(UserRow).where(UserRow.username == username)).one_or_none()
            if row is None:
                raise NotFound(f"user {username!r} not found")
            return User.from_row(row)

    def users(self) -> list[User]:
        with Session(self.engine) as session:
            return [User.from_row(row) for row in session.scalars(select(UserRow).order_by(UserRow.username))]

    def update_user(self, username: str, **changes: Any) -> User:
        """Change a user's role, password, scope, AE title, ``disabled`` or ``must_change_password``.

        Disabling ends the use of the user's sessions and tokens (on other nodes within
        :data:`TOKEN_CACHE_SECONDS`). A password set here (by an administrator or an operator) clears
        ``must_change_password`` unless ``must_change_password=True`` comes with it.

        Raises
        ------
        BadRequest
            The new role does not exist, or the new AE title is not a valid AE title (PS3.5 §6.2).
        WeakPassword
            The new password does not follow the password policy.
        NotFound
            No such user.
        """
        values: dict[str, Any] = {}
        if "role" in changes:
            values["role"] = self._check_role(changes["role"])
        if changes.get("password") is not None:
            check_password_policy(changes["password"], username)
            values["password_hash"] = _hasher.hash(changes["password"])
            values["password_changed_at"] = datetime.now(UTC)
            values["must_change_password"] = False
        if changes.get("must_change_password") is not None:
            values["must_change_password"] = bool(changes["must_change_password"])
        if "referring_name" in changes:
            values["referring_name"] = changes["referring_name"]
        if "institutions" in changes:
            values["institutions"] = json.dumps(list(changes["institutions"]))
        if "ae_title" in changes:
            values["ae_title"] = require_ae_title(changes["ae_title"]) if changes["ae_title"] else None
        if "disabled" in changes:
            values["disabled"] = bool(changes["disabled"])
        with Session(self.engine) as session, session.begin():
            row = session.scalars(select(UserRow).where(UserRow.username == username)).one_or_none()
            if row is None:
                raise NotFound(f"user {username!r} not found")
            for key, value in values.items():
                setattr(row, key, value)
            user = User.from_row(row)
        self._forget()
        if "password_hash" in values:
            self._retire_initial_credential(username)
        return user

    def change_password(
        self, username: str, current: str, new: str, *, keep_session: str | None = None
    ) -> User:
        """A user's own password change: ``current`` must be right and ``new`` follow the policy.

        The user's other login sessions end (``keep_session``, the secret of the session making the
        change, stays open); ``must_change_password`` is cleared.

        Raises
        ------
        Unauthenticated
            ``current`` is not the user's password.
        BadRequest
            ``new`` is the current password.
        WeakPassword
            ``new`` does not follow the policy.
        """
        self.check_password(username, current)
        if new == current:
            raise BadRequest("the new password must differ from the current one")
        user = self.update_user(username, password=new)
        query = update(TokenRow).where(
            TokenRow.user_id == user.id, TokenRow.kind == "session", TokenRow.revoked_at.is_(None)
        )
        if keep_session is not None:
            query = query.where(TokenRow.token_hash != _digest(keep_session))
        with self.engine.begin() as connection:
            connection.execute(query.values(revoked_at=datetime.now(UTC)))
        self._forget()
        return user

    def _retire_initial_credential(self, username: str) -> None:
        """Overwrite the first admin's credential file once that user has a password of their own."""
        path = self.credential_file
        if path is None or not path.exists():
            return
        try:
            if f"username: {username}\n" not in path.read_text():
                return
            path.write_text(
                "# radstack's first administrator set a new password on "
                f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC: the initial password here no longer works.\n"
            )
        except OSError as exc:
            log.warning("cannot overwrite %s: %s; delete it by hand", path, exc)

    def bootstrap(self, data_dir: Path) -> Path | None:
        """Make the first admin when there are no users; returns the credential file it wrote.

        The admin must change this password at first login (``must_change_password``).
        """
        self.credential_file = data_dir / CREDENTIAL_FILE
        with Session(self.engine) as session:
            if session.scalars(select(UserRow.id).limit(1)).first() is not None:
                return None
        password = secrets.token_urlsafe(18)
        try:
            self.create_user("admin", "admin", password=password, must_change_password=True)
        except Conflict:
            return None  # another node made it first
        path = data_dir / CREDENTIAL_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(
                "# radstack's first administrator. Log in with this password and set a new one:\n"
                "# this one then stops working and this file is overwritten.\n"
                f"username: admin\npassword: {password}\n"
            )
        os.chmod(path, 0o600)
        return path

    def check_password(self, username: str, password: str) -> Principal:
        """The principal of ``username`` if ``password`` is theirs.

        Its ``must_change_password`` says whether the user must set a new password first.

        Raises
        ------
        Unauthenticated
            Unknown user, disabled, no password, or a wrong password (the same message for all).
        """
        with Session(self.engine) as session:
            row = session.scalars(select(UserRow).where(UserRow.username == username)).one_or_none()
            user = User.from_row(row) if row is not None else None
            stored = row.password_hash if row is not None else None
        refused = Unauthenticated("wrong username or password")
        if user is None or stored is None or user.disabled:
            _hasher.hash(password)  # the same time whether or not the user exists
            raise refused
        try:
            _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            raise refused from None
        if _hasher.check_needs_rehash(stored):  # new argon2 parameters: same password, new hash
            with self.engine.begin() as connection:
                connection.execute(
                    update(UserRow).where(UserRow.id == user.id).values(password_hash=_hasher.hash(password))
                )
        return user.principal("password")

    def dicom_principal(self, ae_title: str) -> Principal | None:
        """The service account a calling AE title acts as, if one is registered and enabled."""
        with Session(self.engine) as session:
            row = session.scalars(select(UserRow).where(UserRow.ae_title == ae_title.strip())).one_or_none()
            if row is None or row.disabled:
                return None
            return User.from_row(row).principal("dicom")

    # ------------------------------------------------------------------ tokens and sessions
    def create_token(
        self,
        username: str,
        *,
        role: str | None = None,
        label: str = "",
        expires_in: timedelta | None = timedelta(days=90),
        kind: str = "api",
    ) -> str:
        """A new secret for ``username`` (shown once; only its hash is kept).

        Raises
        ------
        NotFound
            No such user.
        BadRequest
            ``role`` does not exist.
        """
        user = self.user(username)
        if role is not None:
            self._check_role(role)
        secret = (API_TOKEN_PREFIX if kind == "api" else "") + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with Session(self.engine) as session, session.begin():
            session.add(
                TokenRow(
                    token_hash=_digest(secret),
                    kind=kind,
                    user_id=user.id,
                    role=role,
                    label=label[:128],
                    created_at=now,
                    expires_at=now + expires_in if expires_in is not None else None,
                )
            )
        return secret

    def tokens(self, username: str | None = None) -> list[dict[str, Any]]:
        """API tokens (never their secrets), of one user or all."""
        query = select(TokenRow, UserRow.username).join(UserRow).where(TokenRow.kind == "api")
        if username is not None:
            query = query.where(UserRow.username == username)
        with Session(self.engine) as session:
            return [
                {
                    "id": token.id,
                    "user": name,
                    "role": token.role,
                    "label": token.label,
                    "created_at": _utc(token.created_at),
                    "expires_at": _utc(token.expires_at),
                    "revoked": token.revoked_at is not None,
                }
                for token, name in session.execute(query.order_by(TokenRow.id))
            ]

    def revoke_token(self, token_id: int, *, username: str | None = None) -> None:
        """Revoke an API token (only ``username``'s when given).

        Raises
        ------
        NotFound
            No unrevoked token has ``token_id`` (or it is not ``username``'s).
        """
        query = update(TokenRow).where(TokenRow.id == token_id, TokenRow.revoked_at.is_(None))
        if username is not None:
            query = query.where(
                TokenRow.user_id == select(UserRow.id).where(UserRow.username == username).scalar_subquery()
            )
        with self.engine.begin() as connection:
            if connection.execute(query.values(revoked_at=datetime.now(UTC))).rowcount != 1:
                raise NotFound(f"token {token_id} not found")
        self._forget()

    def end_session(self, secret: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(TokenRow)
                .where(TokenRow.token_hash == _digest(secret), TokenRow.kind == "session")
                .values(revoked_at=datetime.now(UTC))
            )
        self._forget()

    def cached(self, secret: str, kind: str = "api") -> Principal | None:
        """The principal of a recently verified secret, without touching the database."""
        digest = _digest(secret)
        with self._lock:
            found = self._cache.get(digest)
        if found is None or found[0] <= time.monotonic() or found[1].method != _method(kind):
            return None
        return found[1]

    def check_token(self, secret: str, kind: str = "api") -> Principal:
        """The principal an API token or session secret stands for.

        Raises
        ------
        Unauthenticated
            Unknown, expired or revoked, or its user is disabled.
        """
        cached = self.cached(secret, kind)
        if cached is not None:
            return cached
        digest = _digest(secret)
        now = time.monotonic()
        with Session(self.engine) as session:
            found = session.execute(
                select(TokenRow, UserRow)
                .join(UserRow)
                .where(TokenRow.token_hash == digest, TokenRow.kind == kind)
            ).one_or_none()
            if found is None:
                raise Unauthenticated("the token is not valid")
            token, row = found
            expires = _utc(token.expires_at)
            if (
                token.revoked_at is not None
                or row.disabled
                or (expires is not None and expires <= datetime.now(UTC))
            ):
                raise Unauthenticated("the token has expired or was revoked")
            principal = User.from_row(row).principal(_method(kind), token.role)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + TOKEN_CACHE_SECONDS, principal)
        return principal

    def _forget(self) -> None:
        with self._lock:
            self._cache.clear()


class OidcVerifier:
    """Checks JWT bearer tokens from one OpenID Connect issuer.

    Parameters
    ----------
    issuer, audience
        The expected ``iss`` and ``aud``.
    jwks_url
        Where the issuer's signing keys are; defaults to the ``jwks_uri`` of
        ``<issuer>/.well-known/openid-configuration``.
    role_claim
        Claim holding the role (a string or a list; the first name that is a role here wins).
    username_claim
        Claim naming the user (falls back to ``sub``).
    roles
        The roles that exist.
    """

    ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        jwks_url: str = "",
        role_claim: str = "roles",
        username_claim: str = "preferred_username",
        roles: set[str],
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.role_claim = role_claim
        self.username_claim = username_claim
        self.roles = roles
        self._jwks_url = jwks_url
        self._client: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    def _keys(self) -> jwt.PyJWKClient:
        with self._lock:
            if self._client is None:
                url = self._jwks_url or self._discover()
                self._client = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=5)
            return self._client

    def _discover(self) -> str:
        import httpx

        try:
            document = httpx.get(
                f"{self.issuer.rstrip('/')}/.well-known/openid-configuration", timeout=5
            ).json()
            return str(document["jwks_uri"])
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise Unauthenticated(f"the OIDC issuer's configuration cannot be read: {exc}") from exc

    def check(self, token: str) -> Principal:
        """The principal of a valid JWT.

        Raises
        ------
        Unauthenticated
            Bad signature, wrong issuer or audience, expired, or no known role in the role claim.
        """
        try:
            key = self._keys().get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=list(self.ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iss", "aud"]},
                leeway=30,
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the bearer token is not valid: {exc}") from None
        names = claims.get(self.role_claim, [])
        names = [names] if isinstance(names, str) else names if isinstance(names, list) else []
        role = next((name for name in names if name in self.roles), None)
        if role is None:
            raise Unauthenticated(
                f"the bearer token's {self.role_claim!r} claim names no role of this server"
            )
        subject = str(claims.get(self.username_claim) or claims.get("sub") or "")
        if not subject:
            raise Unauthenticated("the bearer token names no user")
        return Principal(f"oidc:{subject}", role, "oidc")
