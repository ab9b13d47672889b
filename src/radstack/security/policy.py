"""Authorisation in one place: roles, actions, study scope, and :meth:`Policy.require`.

Every HTTP route, the DICOM service (calling AE title → service account) and the job workers ask
:meth:`Policy.require` before they act. A role is a set of actions, a view of the header
(``full`` or ``deidentified``, plus attributes it never sees) and a study scope:

* ``all``: every study;
* ``referred``: studies whose Referring Physician's Name is the principal's ``referring_name``;
* ``institution``: studies whose Institution Name is one of the principal's ``institutions``.

A study outside the principal's scope is reported as not found (404, never 403), so its existence
leaks nothing; an action the role lacks on a visible study is refused with 403.

Storing instances (STOW-RS, C-STORE) is :meth:`Policy.require_store`: ``ingest`` stores anything,
``label`` alone only a reader's SR or SEG for their labeling task.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, false, func, or_

from radstack.errors import Forbidden, NotFound, RadstackError
from radstack.store.models import StudyRow

__all__ = [
    "DEFAULT_ROLES",
    "SYSTEM",
    "ActionValues",
    "Policy",
    "Principal",
    "RoleDef",
    "ScopeValues",
    "ViewValues",
    "load_roles",
    "normalise_person_name",
]


class ActionValues(StrEnum):
    READ_PIXELS = "read-pixels"
    READ_METADATA = "read-metadata"
    INGEST = "ingest"
    DELETE = "delete"
    UPDATE_METADATA = "update-metadata"
    LABEL = "label"
    TRAIN = "train"
    DEPLOY = "deploy"
    EXPORT = "export"
    #: Peers, routing rules, jobs and other platform settings.
    MANAGE_SYSTEM = "manage-system"
    MANAGE_USERS = "manage-users"
    READ_AUDIT = "read-audit"
    #: Prometheus metrics at ``/metrics`` (request counts and latencies by route; no PHI).
    READ_METRICS = "read-metrics"
    #: The model registry read-only: models, versions, model cards, artifacts.
    READ_MODELS = "read-models"
    #: Register and import model versions, approve or reject them, promote and roll back stages.
    MANAGE_MODELS = "manage-models"
    #: Data sets read-only: their versions, counts, items and (with ``read-pixels``) their images.
    READ_DATASETS = "read-datasets"
    #: Make data sets and new versions of them.
    MANAGE_DATASETS = "manage-datasets"


class ViewValues(StrEnum):
    FULL = "full"
    #: PS3.15 Annex E Basic Application Level Confidentiality Profile, applied to every answer.
    DEIDENTIFIED = "deidentified"


class ScopeValues(StrEnum):
    ALL = "all"
    REFERRED = "referred"
    INSTITUTION = "institution"


@dataclass(frozen=True, slots=True)
class RoleDef:
    """What a role may do and see."""

    name: str
    actions: frozenset[ActionValues]
    view: ViewValues = ViewValues.FULL
    scope: ScopeValues = ScopeValues.ALL
    #: Attribute keywords this role never sees, in any answer.
    hidden: tuple[str, ...] = ()


_READ = {ActionValues.READ_PIXELS, ActionValues.READ_METADATA}

DEFAULT_ROLES: dict[str, RoleDef] = {
    role.name: role
    for role in (
        RoleDef("admin", frozenset(ActionValues)),
        RoleDef(
            "radiologist",
            frozenset(
                _READ
                | {
                    ActionValues.INGEST,
                    ActionValues.LABEL,
                    ActionValues.UPDATE_METADATA,
                    ActionValues.EXPORT,
                    ActionValues.READ_MODELS,
                }
            ),
        ),
        RoleDef("technologist", frozenset(_READ | {ActionValues.INGEST, ActionValues.UPDATE_METADATA})),
        RoleDef("annotator", frozenset(_READ | {ActionValues.LABEL})),
        RoleDef(
            "data-scientist",
            frozenset(
                _READ
                | {
                    ActionValues.TRAIN,
                    ActionValues.EXPORT,
                    ActionValues.READ_MODELS,
                    ActionValues.MANAGE_MODELS,
                    ActionValues.READ_DATASETS,
                    ActionValues.MANAGE_DATASETS,
                }
            ),
            view=ViewValues.DEIDENTIFIED,
        ),
        RoleDef("referring-physician", frozenset(_READ), scope=ScopeValues.REFERRED),
        RoleDef("ai-service", frozenset(_READ | {ActionValues.INGEST, ActionValues.LABEL})),
        #: A monitoring system's scraper: metrics only, no study, user or audit data.
        RoleDef("monitoring", frozenset({ActionValues.READ_METRICS})),
    )
}


def load_roles(path: Path | None) -> dict[str, RoleDef]:
    """The default roles, with those of a JSON file (``RADSTACK_ROLES_FILE``) added or replacing them.

    The file maps a role name to ``{"actions": [...], "view": "full|deidentified",
    "scope": "all|referred|institution", "hidden": ["PatientBirthDate", ...]}``.

    Raises
    ------
    RadstackError
        The file is not such a mapping; the message names the role and the bad value.
    """
    roles = dict(DEFAULT_ROLES)
    if path is None:
        return roles
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RadstackError(f"roles file {path} cannot be read as JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise RadstackError(f"roles file {path} must hold a JSON object of role name → definition")
    for name, spec in document.items():
        roles[name] = _role(path, name, spec)
    return roles


def _role(path: Path, name: str, spec: Any) -> RoleDef:
    if not isinstance(spec, dict):
        raise RadstackError(f"roles file {path}: role {name!r} must be a JSON object")
    try:
        return RoleDef(
            name=name,
            actions=frozenset(ActionValues(action) for action in spec.get("actions", [])),
            view=ViewValues(spec.get("view", "full")),
            scope=ScopeValues(spec.get("scope", "all")),
            hidden=tuple(str(keyword) for keyword in spec.get("hidden", [])),
        )
    except ValueError as exc:
        raise RadstackError(
            f"roles file {path}: role {name!r}: {exc} (actions: {', '.join(ActionValues)})"
        ) from exc


def normalise_person_name(value: str) -> str:
    """A person name compared for scoping: upper case, trailing ``^`` and spaces dropped."""
    return value.strip().rstrip("^ ").upper()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: a user, a token's holder, a DICOM peer's service account, or the platform."""

    subject: str
    role: str
    #: How they proved it: password, session, token, oidc, dicom, system.
    method: str
    source: str = ""
    referring_name: str | None = None
    institutions: tuple[str, ...] = field(default=())
    #: A password session of a user who must set a new password first (the first administrator):
    #: only the change-password page and logout answer it.
    must_change_password: bool = False

    def with_source(self, source: str) -> Principal:
        return replace(self, source=source)


#: The platform itself (study-stable workflows, routing): acts with the admin role.
SYSTEM = Principal("system", "admin", "system")

#: ``(referring physician name, institution name)`` of a stored study, or None if there is none.
StudyScopeLookup = Callable[[str], "tuple[str | None, str | None] | None"]


class Policy:
    """Roles and the one authorisation check.

    Parameters
    ----------
    roles
        Role name → definition.
    study_scope
        Looks up what scoping needs of a study (only called for scoped roles).
    """

    def __init__(self, roles: Mapping[str, RoleDef], study_scope: StudyScopeLookup) -> None:
        self.roles = dict(roles)
        self._study_scope = study_scope

    def role(self, principal: Principal) -> RoleDef:
        """The definition of the principal's role.

        Raises
        ------
        Forbidden
            When the role is not defined here (a token or user naming a role since removed).
        """
        try:
            return self.roles[principal.role]
        except KeyError:
            raise Forbidden(f"role {principal.role!r} is not defined here") from None

    def allows(self, principal: Principal, action: ActionValues) -> bool:
        return principal.role in self.roles and action in self.roles[principal.role].actions

    def require(self, principal: Principal, action: ActionValues, study: str | None = None) -> RoleDef:
        """Allow ``principal`` to do ``action`` (to ``study``), or raise.

        Raises
        ------
        NotFound
            ``study`` is outside the principal's scope (or does not exist, for a scoped role).
        Forbidden
            The role does not include ``action``, or is not defined here.
        """
        role = self.role(principal)
        if (
            study is not None
            and role.scope is not ScopeValues.ALL
            and not self._in_scope(principal, role, study)
        ):
            raise NotFound(f"study {study} not found")
        if action not in role.actions:
            raise Forbidden(f"the {role.name} role may not {action.value.replace('-', ' ')}")
        return role

    def require_store(
        self, principal: Principal, study: str | None = None, *, label_object: bool | None = None
    ) -> RoleDef:
        """Allow ``principal`` to store instances (STOW-RS, C-STORE), or raise.

        A role with ``ingest`` stores anything. A role with ``label`` but not ``ingest`` (the
        ``annotator``) stores only *label objects*: an SR or SEG for one of its own labeling tasks,
        which the labeling intake (:mod:`radstack.labeling.intake`) recognises and says so with
        ``label_object``.

        Parameters
        ----------
        study
            The study an instance is stored into (checked against the principal's scope).
        label_object
            None: the request as a whole, before any instance is read; True: a label object of the
            principal's task; False: anything else.

        Raises
        ------
        NotFound
            ``study`` is outside the principal's scope.
        Forbidden
            The role has neither ``ingest`` nor ``label``; or only ``label`` and the instance is not
            a label object of its tasks.
        """
        role = self.role(principal)
        if ActionValues.INGEST in role.actions or ActionValues.LABEL not in role.actions:
            return self.require(principal, ActionValues.INGEST, study)
        if label_object is False:
            raise Forbidden(
                f"the {role.name} role may store only label objects (SR, SEG) for its labeling tasks"
            )
        return self.require(principal, ActionValues.LABEL, study)

    def _in_scope(self, principal: Principal, role: RoleDef, study: str) -> bool:
        found = self._study_scope(study)
        if found is None:
            return False
        referring, institution = found
        if role.scope is ScopeValues.REFERRED:
            return bool(
                principal.referring_name
                and referring
                and normalise_person_name(referring) == normalise_person_name(principal.referring_name)
            )
        return institution is not None and institution.strip().upper() in _upper(principal.institutions)

    def study_condition(self, principal: Principal) -> ColumnElement[bool] | None:
        """The SQL condition on :class:`StudyRow` that keeps searches within scope (None: all).

        Raises
        ------
        Forbidden
            When the principal's role is not defined here.
        """
        role = self.role(principal)
        if role.scope is ScopeValues.ALL:
            return None
        if role.scope is ScopeValues.REFERRED:
            if not principal.referring_name:
                return false()
            column = func.upper(func.rtrim(StudyRow.referring_physician_name, "^ "))
            return column == normalise_person_name(principal.referring_name)
        if not principal.institutions:
            return false()
        return or_(
            *(
                func.upper(func.trim(StudyRow.institution_name)) == name
                for name in _upper(principal.institutions)
            )
        )


def _upper(values: Iterable[str]) -> set[str]:
    return {value.strip().upper() for value in values}
