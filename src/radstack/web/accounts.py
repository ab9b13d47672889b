"""Accounts API: who am I, users (admins), API tokens, and the audit trail (auditors)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from radstack.security.audit import AuditActionValues
from radstack.security.policy import ActionValues
from radstack.web.auth import change_own_password
from radstack.web.deps import authorize, note, platform_of, principal_of

__all__ = ["router"]

router = APIRouter(tags=["accounts"])


class NewUser(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str
    role: str
    password: str | None = None
    referring_name: str | None = None
    institutions: list[str] = Field(default_factory=list)
    ae_title: str | None = None
    #: A temporary password: the user must set their own at first login.
    must_change_password: bool = False


class UserChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str | None = None
    password: str | None = None
    referring_name: str | None = None
    institutions: list[str] | None = None
    ae_title: str | None = None
    disabled: bool | None = None
    #: The user must set a new password at their next login (set with a temporary ``password``).
    must_change_password: bool | None = None


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    current_password: str
    new_password: str


class NewToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Whose token; another user's needs the manage-users action.
    user: str | None = None
    #: A role for this token other than the user's own (manage-users only).
    role: str | None = None
    label: str = ""
    expires_days: float | None = Field(default=90, gt=0)


@router.get("/me", summary="The caller: user, role and how they authenticated")
def me(request: Request) -> dict[str, Any]:
    principal = principal_of(request)
    platform = platform_of(request)
    role = platform.policy.role(principal)
    return {
        "user": principal.subject,
        "role": principal.role,
        "method": principal.method,
        "actions": sorted(role.actions),
        "view": role.view,
        "scope": role.scope,
        "must_change_password": principal.must_change_password,
    }


@router.post("/me/password", status_code=204, summary="Change your own password")
def change_password(request: Request, body: PasswordChange) -> None:
    """The current password and a new one that follows the password policy (400 names the rule
    that failed); the caller's other login sessions end."""
    change_own_password(request, body.current_password, body.new_password)


@router.get("/users", summary="List users")
def list_users(request: Request) -> list[dict[str, Any]]:
    authorize(request, ActionValues.MANAGE_USERS)
    return [user.public() for user in platform_of(request).accounts.users()]


@router.post("/users", status_code=201, summary="Add a user or a service account")
def create_user(request: Request, body: NewUser) -> dict[str, Any]:
    authorize(request, ActionValues.MANAGE_USERS, user=body.username, change="create")
    return (
        platform_of(request)
        .accounts.create_user(
            body.username,
            body.role,
            password=body.password,
            referring_name=body.referring_name,
            institutions=body.institutions,
            ae_title=body.ae_title,
            must_change_password=body.must_change_password,
        )
        .public()
    )


@router.patch("/users/{username}", summary="Change a user's role, password, scope or state")
def update_user(request: Request, username: str, body: UserChange) -> dict[str, Any]:
    changes = body.model_dump(exclude_unset=True)
    authorize(request, ActionValues.MANAGE_USERS, user=username, change=sorted(changes))
    return platform_of(request).accounts.update_user(username, **changes).public()


@router.post("/tokens", status_code=201, summary="Create an API token (its secret is shown only here)")
def create_token(request: Request, body: NewToken) -> dict[str, Any]:
    principal = principal_of(request)
    user = body.user or principal.subject
    if user != principal.subject or body.role not in (None, principal.role):
        authorize(request, ActionValues.MANAGE_USERS, user=user, change="token")
    else:
        note(request, AuditActionValues.ADMIN, user=user, change="token")
    expires = timedelta(days=body.expires_days) if body.expires_days is not None else None
    secret = platform_of(request).accounts.create_token(
        user, role=body.role, label=body.label, expires_in=expires
    )
    return {"token": secret, "user": user, "role": body.role, "expires_days": body.expires_days}


@router.get("/tokens", summary="API tokens: your own, or everyone's for user managers")
def list_tokens(request: Request) -> list[dict[str, Any]]:
    principal = principal_of(request)
    platform = platform_of(request)
    mine = None if platform.policy.allows(principal, ActionValues.MANAGE_USERS) else principal.subject
    return platform.accounts.tokens(mine)


@router.delete("/tokens/{token_id}", status_code=204, summary="Revoke an API token")
def revoke_token(request: Request, token_id: int) -> None:
    principal = principal_of(request)
    platform = platform_of(request)
    note(request, AuditActionValues.ADMIN, token=token_id, change="revoke")
    owner = None if platform.policy.allows(principal, ActionValues.MANAGE_USERS) else principal.subject
    platform.accounts.revoke_token(token_id, username=owner)


@router.get("/audit", summary="Audit records, oldest first, after a sequence number")
def audit_records(request: Request, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
    authorize(request, ActionValues.READ_AUDIT, after=after)
    platform = platform_of(request)
    platform.audit.flush()
    records = platform.audit.log.records(after=after, limit=max(1, min(limit, 10_000)))
    return [
        {
            "seq": r.seq,
            "at": r.at.isoformat(),
            "actor": r.actor,
            "role": r.role,
            "source": r.source,
            "action": r.action,
            "resource": r.resource,
            "outcome": r.outcome,
            "reason": r.reason,
            "hash": r.hash,
        }
        for r in records
    ]
