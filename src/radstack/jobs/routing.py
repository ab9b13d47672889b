"""Routing rules: when a study is stable, match it against rules and run their actions.

A rule has conditions (DICOM keyword → accepted values, ``*``/``?`` wildcards allowed; every
condition must hold for some instance of the study) and actions: ``forward`` (C-STORE to a
registered peer), ``stow`` (STOW-RS to another DICOMweb server) and ``webhook`` (POST the event).
``CallingAETitle`` matches the AE titles that sent the study by C-STORE. Each action runs as its own
``route-action`` job, so a peer that is down is retried with backoff and ends in the dead letters
with its reason, never silently dropped.
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydicom.datadict import tag_for_keyword
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from radstack.errors import BadRequest, Conflict, NotFound, ProcessingFailure
from radstack.jobs.models import RoutingRuleRow
from radstack.jobs.queue import JobContext, JobQueue
from radstack.jobs.workflows import EventLog, post_json
from radstack.store.retrieve import part10
from radstack.store.studies import BatchReason, InstanceRecord, StudyStore

__all__ = ["ACTION_KIND", "RouteActionRunner", "RoutingRule", "RuleStore", "StableStudyRunner"]

ACTION_KIND = "route-action"
_CALLING_AE = "CallingAETitle"
#: Instances per STOW-RS request when forwarding, so a large study never sits whole in memory.
_STOW_INSTANCES = 20

JsonDict = dict[str, Any]


class RouteAction(BaseModel):
    """One thing to do with a matching study."""

    type: Literal["forward", "stow", "webhook"]
    #: ``forward``: AE title of a registered peer.
    peer: str | None = None
    #: ``stow``: the DICOMweb root (``…/dicomweb``); ``webhook``: the URL to POST to.
    url: str | None = None

    def check(self) -> RouteAction:
        if self.type == "forward" and not self.peer:
            raise ValueError("a forward action names the peer's AE title in 'peer'")
        if self.type in ("stow", "webhook") and not (self.url or "").startswith(("http://", "https://")):
            raise ValueError(f"a {self.type} action names an http(s) URL in 'url'")
        return self


class RoutingRule(BaseModel):
    """A routing rule as the API shows and takes it."""

    name: str = Field(min_length=1, max_length=128)
    enabled: bool = True
    conditions: dict[str, list[str]] = Field(
        default_factory=dict, examples=[{"Modality": ["CR", "DX"], "BodyPartExamined": ["CHEST"]}]
    )
    actions: list[RouteAction] = Field(min_length=1)

    @field_validator("conditions")
    @classmethod
    def _known_keywords(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for keyword in value:
            if keyword != _CALLING_AE and tag_for_keyword(keyword) is None:
                raise ValueError(f"condition {keyword!r} is not a DICOM keyword (PS3.6) nor {_CALLING_AE}")
        return value

    @field_validator("actions")
    @classmethod
    def _check_actions(cls, value: list[RouteAction]) -> list[RouteAction]:
        return [action.check() for action in value]

    def matches(self, facts: dict[str, set[str]]) -> bool:
        """Every condition holds: some value the study has matches one of the accepted patterns."""
        return all(
            any(
                fnmatch.fnmatchcase(value, pattern)
                for value in facts.get(keyword, ())
                for pattern in patterns
            )
            for keyword, patterns in self.conditions.items()
        )


def _now() -> datetime:
    return datetime.now(UTC)


class RuleStore:
    """Routing rules in the index database, managed through ``/api/v1/routing-rules``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def list_rules(self) -> list[RoutingRule]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(RoutingRuleRow).order_by(RoutingRuleRow.__table__.c.name)).all()
        return [_rule(row) for row in rows]

    def get(self, name: str) -> RoutingRule:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(RoutingRuleRow).where(RoutingRuleRow.__table__.c.name == name)
            ).first()
        if row is None:
            raise NotFound(f"routing rule {name!r} does not exist")
        return _rule(row)

    def put(self, rule: RoutingRule) -> bool:
        """Create or replace the rule named ``rule.name``; True when it was created."""
        values = {
            "enabled": rule.enabled,
            "conditions": json.dumps(rule.conditions),
            "actions": json.dumps([a.model_dump(exclude_none=True) for a in rule.actions]),
            "updated_at": _now(),
        }
        columns = RoutingRuleRow.__table__.c
        with self.engine.begin() as connection:
            changed = connection.execute(
                update(RoutingRuleRow).where(columns.name == rule.name).values(**values)
            ).rowcount
            if changed:
                return False
            try:
                connection.execute(insert(RoutingRuleRow).values(name=rule.name, **values))
            except IntegrityError:
                raise Conflict(
                    f"routing rule {rule.name!r} was created at the same time; try again"
                ) from None
        return True

    def delete(self, name: str) -> None:
        with self.engine.begin() as connection:
            deleted = connection.execute(
                delete(RoutingRuleRow).where(RoutingRuleRow.__table__.c.name == name)
            ).rowcount
        if not deleted:
            raise NotFound(f"routing rule {name!r} does not exist")


def _rule(row: Any) -> RoutingRule:
    return RoutingRule(
        name=row.name,
        enabled=row.enabled,
        conditions=json.loads(row.conditions),
        actions=json.loads(row.actions),
    )


def study_facts(store: StudyStore, study_uid: str, keywords: Iterable[str]) -> dict[str, set[str]]:
    """The values each keyword takes across the study's current instances (from its metadata document)."""
    instances: list[JsonDict] = json.loads(gzip.decompress(store.metadata_document(study_uid)))
    facts: dict[str, set[str]] = {}
    for keyword in set(keywords):
        if keyword == _CALLING_AE:
            facts[keyword] = {
                v.detail
                for v in store.list_versions(study_uid)
                if v.reason == BatchReason.C_STORE and v.detail
            }
            continue
        tag = tag_for_keyword(keyword)
        key = f"{tag:08X}" if tag is not None else ""
        facts[keyword] = {
            _text(value) for instance in instances for value in instance.get(key, {}).get("Value", [])
        }
    return facts


def _text(value: object) -> str:
    if isinstance(value, dict):  # a person name (PS3.18 §F.2.2)
        return str(value.get("Alphabetic", ""))
    return str(value)


class StableStudyRunner:
    """The ``study-stable`` job: publish ``study.stable``, then submit the actions of matching rules."""

    def __init__(self, store: StudyStore, rules: RuleStore, events: EventLog, jobs: JobQueue) -> None:
        self.store, self.rules, self.events, self.jobs = store, rules, events, jobs

    def __call__(self, context: JobContext) -> JsonDict:
        study_uid = str(context.job.params["study_uid"])
        change_seq = int(context.job.params["change_seq"])
        rules = [rule for rule in self.rules.list_rules() if rule.enabled]
        facts = study_facts(self.store, study_uid, [k for rule in rules for k in rule.conditions])
        matched = [rule for rule in rules if rule.matches(facts)]
        for rule in matched:
            for index, action in enumerate(rule.actions):
                self.jobs.submit(
                    ACTION_KIND,
                    {
                        "study_uid": study_uid,
                        "rule": rule.name,
                        "action": action.model_dump(exclude_none=True),
                    },
                    client_token=f"route:{study_uid}:{change_seq}:{rule.name}:{index}"[-128:],
                )
        study = self.store.require_study(study_uid)
        self.events.publish(
            "study.stable",
            study_uid,
            {
                "change_seq": change_seq,
                "num_series": study.num_series,
                "num_instances": study.num_instances,
                "modalities": study.modalities.split("\\") if study.modalities else [],
                "rules": [rule.name for rule in matched],
            },
        )
        return {"rules": [rule.name for rule in matched]}


class RouteActionRunner:
    """The ``route-action`` job: one action of one rule for one study."""

    def __init__(
        self,
        store: StudyStore,
        forward: Callable[[str, list[InstanceRecord]], JsonDict],
        tokens: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.forward = forward
        #: URL prefix → bearer token sent to it (``RADSTACK_OUTBOUND_TOKENS``); kept out of the rules.
        self.tokens = dict(tokens or {})

    def _authorization(self, url: str) -> dict[str, str]:
        """The Authorization header for ``url``: the token of its longest configured prefix."""
        prefixes = [prefix for prefix in self.tokens if url.startswith(prefix)]
        if not prefixes:
            return {}
        return {"Authorization": f"Bearer {self.tokens[max(prefixes, key=len)]}"}

    def __call__(self, context: JobContext) -> JsonDict:
        study_uid = str(context.job.params["study_uid"])
        action = RouteAction.model_validate(context.job.params["action"]).check()
        records = self.store.current_instances(study_uid)
        if action.type == "forward":
            assert action.peer is not None
            return self.forward(action.peer, records)
        assert action.url is not None
        if action.type == "webhook":
            body = {"type": "route", "rule": context.job.params["rule"], "study_uid": study_uid}
            return {"status": post_json(action.url, json.dumps(body).encode())}
        return self._stow(action.url, study_uid, records)

    def _stow(self, url: str, study_uid: str, records: list[Any]) -> JsonDict:
        """STOW-RS the study (PS3.18 §10.5) in its stored syntaxes, a few instances per request."""
        for start in range(0, len(records), _STOW_INSTANCES):
            boundary = uuid.uuid4().hex
            parts = [
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + part10(self.store, record, None)
                + b"\r\n"
                for record in records[start : start + _STOW_INSTANCES]
            ]
            target = f"{url.rstrip('/')}/studies/{study_uid}"
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            _post_stow(target, body, boundary, self._authorization(target))
        return {"sent": len(records)}


def _post_stow(url: str, body: bytes, boundary: str, authorization: dict[str, str]) -> None:
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
            **authorization,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=120):
            return
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode(errors="replace")
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise BadRequest(f"STOW-RS to {url} refused the study: HTTP {exc.code} {detail}") from None
        raise ProcessingFailure(f"STOW-RS to {url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ProcessingFailure(f"STOW-RS to {url} cannot be reached: {exc}") from None
