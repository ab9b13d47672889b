"""Routing rules: when a study is stable (or as soon as images arrive), match it against rules and run
their actions.

A rule's ``trigger`` says when it is matched: ``stable`` (the default) once the study had no change for
``RADSTACK_STABLE_SECONDS`` (the modality has finished sending), ``arrival`` at the end of every C-STORE
association or STOW-RS request that stored into the study (for modalities that send one image per
study, such as radiographs checked by AI: waiting for the quiet period would cost 30 seconds). A rule has conditions (DICOM keyword → accepted values, ``*``/``?`` wildcards allowed; every
condition must hold for some instance of the study) and actions. ``CallingAETitle`` matches the AE
titles that sent the study by C-STORE. Each action runs as its own ``route-action`` job, so a peer
that is down is retried with backoff and ends in the dead letters with its reason, never silently
dropped.

Actions come from a registry: each is a :class:`RouteAction` subclass, a pydantic model whose
``type`` field is a one-value ``Literal`` and whose :meth:`~RouteAction.run` does the work, decorated
with :func:`register_action`. ``forward`` (C-STORE to a registered peer), ``stow`` (STOW-RS to another
DICOMweb server) and ``webhook`` (POST the rule's match) are registered here; a rule naming a type
nobody registered is refused with the types that are.
"""

from __future__ import annotations

import fnmatch
import gzip
import json
import logging
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from pydicom.datadict import tag_for_keyword
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from radstack.errors import BadRequest, Conflict, NotFound, ProcessingFailure
from radstack.jobs.kinds import JobParams, declare, validation_message
from radstack.jobs.models import RoutingRuleRow
from radstack.jobs.queue import JobContext, JobQueue
from radstack.jobs.workflows import EventLog, StableParams, StudyStable, post_json
from radstack.store.retrieve import part10
from radstack.store.studies import BatchReason, InstanceRecord, StudyStore

__all__ = [
    "ACTION",
    "ACTION_KIND",
    "ActionContext",
    "ArrivalRouter",
    "ForwardAction",
    "RouteAction",
    "RouteActionParams",
    "RouteActionRunner",
    "RoutingRule",
    "RuleStore",
    "RuleTrigger",
    "StableStudyRunner",
    "StowAction",
    "WebhookAction",
    "action_types",
    "parse_action",
    "register_action",
]

log = logging.getLogger(__name__)

_CALLING_AE = "CallingAETitle"
#: Instances per STOW-RS request when forwarding, so a large study never sits whole in memory.
_STOW_INSTANCES = 20

JsonDict = dict[str, Any]


# ---------------------------------------------------------------------- the action registry
@dataclass(frozen=True)
class ActionContext:
    """What an action may use when it runs: the study, the rule, the store, the job queue (an action
    that starts work of its own submits a job), and the platform's outbound connections."""

    study_uid: str
    rule: str
    store: StudyStore
    jobs: JobQueue
    #: The ``route-action`` job running the action (progress, stopping).
    job: JobContext[RouteActionParams]
    #: C-STORE instances to a registered peer (by AE title); returns what was sent.
    forward: Callable[[str, list[InstanceRecord]], JsonDict]
    #: The Authorization header radstack sends to a URL (``RADSTACK_OUTBOUND_TOKENS``).
    authorization: Callable[[str], dict[str, str]]

    def instances(self) -> list[InstanceRecord]:
        """The study's current instances."""
        return self.store.current_instances(self.study_uid)


class RouteAction(BaseModel):
    """One thing to do with a matching study: the base of every registered action.

    A subclass declares ``type: Literal["name"] = "name"``, its own fields (validated when a rule is
    saved), and :meth:`run`.
    """

    model_config = ConfigDict(frozen=True)

    type: str

    def run(self, context: ActionContext) -> JsonDict:
        """Do the action for ``context.study_uid``; returns the job's final progress. Raise a
        :class:`RadstackError` with a 4xx status for a failure retries cannot fix."""
        raise NotImplementedError


A = TypeVar("A", bound=RouteAction)

_actions_lock = threading.Lock()
_actions: dict[str, type[RouteAction]] = {}


def register_action(cls: type[A]) -> type[A]:
    """Register a :class:`RouteAction` subclass under the value of its ``type`` field (a decorator).

    Raises
    ------
    ValueError
        ``type`` has no single default value, or another class has that name.
    """
    name = cls.model_fields["type"].default
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__}.type needs a default, its action name: type: Literal['x'] = 'x'")
    with _actions_lock:
        existing = _actions.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"routing action {name!r} is already registered by {existing.__name__}")
        _actions[name] = cls
    return cls


def action_types() -> list[str]:
    """The registered action types, sorted."""
    with _actions_lock:
        return sorted(_actions)


def parse_action(value: object) -> RouteAction:
    """An action as its registered class; :class:`ValueError` naming the problem otherwise (an unknown
    type lists the known ones).

    Raises
    ------
    ValueError
        ``value`` is not a mapping, its ``type`` is not a registered action type, or its fields do
        not validate against that action's model.
    """
    if isinstance(value, RouteAction):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"an action is an object with a 'type' ({', '.join(action_types())}), not {value!r}")
    name = value.get("type")
    cls = _actions.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"action type {name!r} is not known; known types: {', '.join(action_types())}")
    try:
        return cls.model_validate(value)
    except ValidationError as exc:
        message = validation_message(exc)
        # A message of the whole action says which action it is; one of a field is told which.
        raise ValueError(
            message if all(not e["loc"] for e in exc.errors()) else f"{name} action: {message}"
        ) from None


class _ActionSchema:
    """The JSON schema of an action field: one of the registered actions' schemas, as registered when
    the schema is made (the OpenAPI document is built after every module registered its actions)."""

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        with _actions_lock:
            classes = [_actions[name] for name in sorted(_actions)]
        schemas = []
        for cls in classes:
            schema = cls.model_json_schema()
            # ``type`` has its one value as default, but a client sends it: it chooses the action.
            schema["required"] = ["type", *schema.get("required", [])]
            schemas.append(schema)
        return {"oneOf": schemas}


#: A field holding any registered action: validated through the registry, dumped with its own fields.
AnyAction = Annotated[SerializeAsAny[RouteAction], BeforeValidator(parse_action), _ActionSchema()]


@register_action
class ForwardAction(RouteAction):
    """C-STORE the study to a registered peer (``/api/v1/peers``), in a syntax it accepts."""

    type: Literal["forward"] = "forward"
    #: The peer's AE title.
    peer: str

    @model_validator(mode="before")
    @classmethod
    def _names_peer(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and not value.get("peer"):
            raise ValueError("a forward action names the peer's AE title in 'peer'")
        return value

    def run(self, context: ActionContext) -> JsonDict:
        return context.forward(self.peer, context.instances())


class _UrlAction(RouteAction):
    """An action that sends to an http(s) URL."""

    url: str

    @model_validator(mode="before")
    @classmethod
    def _http_url(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and not str(value.get("url") or "").startswith(("http://", "https://")):
            raise ValueError(f"a {cls.model_fields['type'].default} action names an http(s) URL in 'url'")
        return value


@register_action
class StowAction(_UrlAction):
    """STOW-RS the study (PS3.18 §10.5) to another DICOMweb server (``url``: its DICOMweb root,
    ``…/dicomweb``), in its stored syntaxes."""

    type: Literal["stow"] = "stow"

    def run(self, context: ActionContext) -> JsonDict:
        records = context.instances()
        target = f"{self.url.rstrip('/')}/studies/{context.study_uid}"
        for start in range(0, len(records), _STOW_INSTANCES):
            boundary = uuid.uuid4().hex
            parts = [
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + part10(context.store, record, None)
                + b"\r\n"
                for record in records[start : start + _STOW_INSTANCES]
            ]
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            _post_stow(target, body, boundary, context.authorization(target))
        return {"sent": len(records)}


@register_action
class WebhookAction(_UrlAction):
    """POST ``{"type": "route", "rule", "study_uid"}`` to ``url``."""

    type: Literal["webhook"] = "webhook"

    def run(self, context: ActionContext) -> JsonDict:
        body = {"type": "route", "rule": context.rule, "study_uid": context.study_uid}
        return {"status": post_json(self.url, json.dumps(body).encode())}


class RouteActionParams(JobParams):
    """A ``route-action`` job: one action of one rule for one study."""

    study_uid: str
    rule: str
    action: AnyAction


ACTION = declare("route-action", RouteActionParams)
ACTION_KIND = ACTION.name


class RuleTrigger(StrEnum):
    """When a rule is matched against a study."""

    #: Once the study had no change for ``RADSTACK_STABLE_SECONDS``.
    STABLE = "stable"
    #: At the end of each C-STORE association or STOW-RS request that stored into the study.
    ARRIVAL = "arrival"


class RoutingRule(BaseModel):
    """A routing rule as the API shows and takes it."""

    name: str = Field(min_length=1, max_length=128)
    enabled: bool = True
    trigger: RuleTrigger = RuleTrigger.STABLE
    conditions: dict[str, list[str]] = Field(
        default_factory=dict, examples=[{"Modality": ["CR", "DX"], "BodyPartExamined": ["CHEST"]}]
    )
    actions: list[AnyAction] = Field(min_length=1)

    @field_validator("conditions")
    @classmethod
    def _known_keywords(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for keyword in value:
            if keyword != _CALLING_AE and tag_for_keyword(keyword) is None:
                raise ValueError(f"condition {keyword!r} is not a DICOM keyword (PS3.6) nor {_CALLING_AE}")
        return value

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
        """Create or replace the rule named ``rule.name``; True when it was created.

        Raises
        ------
        Conflict
            Another request created a rule of the same name at the same time.
        """
        values = {
            "enabled": rule.enabled,
            "trigger": rule.trigger.value,
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
        trigger=row.trigger,
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

    def __call__(self, context: JobContext[StableParams]) -> JsonDict:
        study_uid, change_seq = context.params.study_uid, context.params.change_seq
        matched = submit_matching(
            self.store, self.rules, self.jobs, study_uid, change_seq, RuleTrigger.STABLE
        )
        study = self.store.require_study(study_uid)
        self.events.publish(
            StudyStable(
                change_seq=change_seq,
                num_series=study.num_series,
                num_instances=study.num_instances,
                modalities=study.modalities.split("\\") if study.modalities else [],
                rules=[rule.name for rule in matched],
            ),
            study_uid=study_uid,
        )
        return {"rules": [rule.name for rule in matched]}


def submit_matching(
    store: StudyStore, rules: RuleStore, jobs: JobQueue, study_uid: str, change_seq: int, trigger: RuleTrigger
) -> list[RoutingRule]:
    """Submit a ``route-action`` job for each action of each enabled rule of ``trigger`` that the study
    matches; returns the rules. The jobs' client tokens name the study's change, so matching the same
    change twice (two nodes, a retry) submits nothing new."""
    enabled = [rule for rule in rules.list_rules() if rule.enabled and rule.trigger is trigger]
    if not enabled:
        return []
    facts = study_facts(store, study_uid, [k for rule in enabled for k in rule.conditions])
    matched = [rule for rule in enabled if rule.matches(facts)]
    prefix = "route" if trigger is RuleTrigger.STABLE else trigger.value
    for rule in matched:
        for index, action in enumerate(rule.actions):
            jobs.submit(
                ACTION,
                RouteActionParams(study_uid=study_uid, rule=rule.name, action=action),
                client_token=f"{prefix}:{study_uid}:{change_seq}:{rule.name}:{index}"[-128:],
            )
    return matched


class ArrivalRouter:
    """Matches the ``arrival`` rules against studies that just received instances (called at the end of
    a C-STORE association and of a STOW-RS request). A failure is logged, never the sender's."""

    def __init__(self, store: StudyStore, rules: RuleStore, jobs: JobQueue) -> None:
        self.store, self.rules, self.jobs = store, rules, jobs

    def __call__(self, study_uids: Iterable[str]) -> None:
        for study_uid in study_uids:
            try:
                study = self.store.require_study(study_uid)
                if study.num_instances:
                    submit_matching(
                        self.store, self.rules, self.jobs, study_uid, study.change_seq, RuleTrigger.ARRIVAL
                    )
            except Exception:  # the images are stored; the rules' failure is the platform's to report
                log.exception("matching the arrival rules of study %s failed", study_uid)


class RouteActionRunner:
    """The ``route-action`` job: one action of one rule for one study, run by its registered class."""

    def __init__(
        self,
        store: StudyStore,
        jobs: JobQueue,
        forward: Callable[[str, list[InstanceRecord]], JsonDict],
        tokens: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.forward = forward
        #: URL prefix → bearer token sent to it (``RADSTACK_OUTBOUND_TOKENS``); kept out of the rules.
        self.tokens = dict(tokens or {})

    def _authorization(self, url: str) -> dict[str, str]:
        """The Authorization header for ``url``: the token of its longest configured prefix."""
        prefixes = [prefix for prefix in self.tokens if url.startswith(prefix)]
        if not prefixes:
            return {}
        return {"Authorization": f"Bearer {self.tokens[max(prefixes, key=len)]}"}

    def __call__(self, context: JobContext[RouteActionParams]) -> JsonDict:
        params = context.params
        return params.action.run(
            ActionContext(
                study_uid=params.study_uid,
                rule=params.rule,
                store=self.store,
                jobs=self.jobs,
                job=context,
                forward=self.forward,
                authorization=self._authorization,
            )
        )


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
