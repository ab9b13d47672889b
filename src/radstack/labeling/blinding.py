"""Blinding: which label objects (and AI results) a principal may not see, decided in one place.

A **label object** is a DICOM object a reader stored for a labeling project (their SR or SEG): a row
of ``labeling_objects`` (SOP, series and study UIDs, project, reader), written by
:func:`insert_object` (or :meth:`Blinding.record_object`) when the object arrives. For a principal P
and a study S, a label object of project X by reader R is visible

* to R;
* to X's owner and reviewers, and to a role that may administer (``manage-system``: the admin role);
* to X's other readers only when X is not blinded.

To everyone else it is hidden, X's non-members too: research labels stay in their project.

An **AI result**'s SR series (``ai_results.sr_series_uid`` of S, of any run, current or superseded)
is hidden from P when P reads for an open, blinded project whose cohort holds S and that does not
show AI proposals (``show_ai``); the study's AI findings and priority then are too
(:attr:`Hidden.ai`). Everyone else sees AI results as before.

:meth:`Blinding.hidden` answers with a :class:`~radstack.security.views.Hidden` per study; the
principal's :class:`~radstack.security.views.View` asks it once per study and request and applies it
to QIDO-RS, WADO-RS, C-FIND, C-GET and C-MOVE. A study with no label object, outside every cohort
the principal reads blinded, costs two indexed lookups and is answered as stored.

The package may not import :mod:`radstack.ai`: the platform passes the AI results' series in as a
function (:data:`AiSeries`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from functools import partial

from sqlalchemy import BindParameter, ColumnElement, Engine, bindparam, exists, or_, select
from sqlalchemy.orm import Session

from radstack.errors import Conflict, NotFound
from radstack.labeling.models import ItemRow, LabelObjectRow, ProjectRow
from radstack.labeling.projects import Member, ProjectState, members_of
from radstack.security.policy import ActionValues, Policy, Principal
from radstack.security.views import Hidden, HiddenLookup
from radstack.store.index import write_transaction
from radstack.store.models import InstanceRow, SeriesRow, StudyRow
from radstack.store.studies import StudyStore

__all__ = ["AiSeries", "Blinding", "insert_object"]

#: The SR series of each study's AI results (every run): study UID → series UIDs (absent: none).
AiSeries = Callable[[Sequence[str]], Mapping[str, set[str]]]
#: Studies (or UIDs) per ``IN (…)`` of one lookup.
_CHUNK = 500
_STUDIES: BindParameter[list[str]] = bindparam("studies", expanding=True)
#: Whether anything of the studies could be hidden from anyone: a label object, or a place in the
#: cohort of an open blinded project without AI proposals. Built once (its compiled form is cached),
#: it keeps the common case (nothing to hide) to one indexed query on every WADO-RS request.
_MAY_HIDE = select(
    or_(
        exists().where(LabelObjectRow.study_uid.in_(_STUDIES)),
        exists().where(
            ItemRow.study_uid.in_(_STUDIES),
            ProjectRow.id == ItemRow.project_id,
            ProjectRow.blinded.is_(True),
            ProjectRow.show_ai.is_(False),
            ProjectRow.state == ProjectState.OPEN.value,
        ),
    )
)


def insert_object(
    session: Session, *, sop_uid: str, series_uid: str, study_uid: str, project_id: int, reader: str
) -> bool:
    """Record, in the caller's write transaction, that ``reader`` stored the object ``sop_uid`` for
    project ``project_id``.

    Returns
    -------
    bool
        True when recorded; False when it was already, for the same project and reader (an object
        sent twice).

    Raises
    ------
    NotFound
        No such project.
    Conflict
        The object is recorded for another project or reader.
    """
    known = session.scalar(select(LabelObjectRow).where(LabelObjectRow.sop_uid == sop_uid))
    if known is not None:
        if (known.project_id, known.reader) == (project_id, reader):
            return False
        raise Conflict(
            f"SOP instance {sop_uid} is a label object of {known.reader} in project {known.project_id} already"
        )
    if session.get(ProjectRow, project_id) is None:
        raise NotFound(f"labeling project {project_id} not found")
    session.add(
        LabelObjectRow(
            sop_uid=sop_uid,
            series_uid=series_uid,
            study_uid=study_uid,
            project_id=project_id,
            reader=reader,
            created_at=datetime.now(UTC),
        )
    )
    session.flush()
    return True


class Blinding:
    """What each principal may not see of a study: the one place blinding is decided.

    Parameters
    ----------
    store
        The study store (the labeling tables are in its index).
    policy
        Who may administer (sees everything).
    ai_series
        The SR series of the studies' AI results (the platform passes
        :meth:`radstack.ai.findings.AiResults.sr_series`); None: no AI results are hidden.
    """

    def __init__(self, store: StudyStore, policy: Policy, ai_series: AiSeries | None = None) -> None:
        self.engine: Engine = store.engine
        self.policy = policy
        self._ai_series = ai_series

    def record_object(
        self, *, sop_uid: str, series_uid: str, study_uid: str, project_id: int, reader: str
    ) -> bool:
        """:func:`insert_object` in a write transaction of its own."""
        return write_transaction(
            self.engine,
            partial(
                insert_object,
                sop_uid=sop_uid,
                series_uid=series_uid,
                study_uid=study_uid,
                project_id=project_id,
                reader=reader,
            ),
        )

    def lookup(self, principal: Principal) -> HiddenLookup | None:
        """What hides objects from ``principal`` (for its :class:`~radstack.security.views.View`);
        None for a role that may administer, which sees everything."""
        if self.policy.allows(principal, ActionValues.MANAGE_SYSTEM):
            return None
        return partial(self.hidden, principal)

    def ai_hidden_condition(self, principal: Principal) -> ColumnElement[bool] | None:
        """The SQL condition on :class:`~radstack.store.models.StudyRow` of the studies whose AI results
        are hidden from ``principal`` (as :meth:`hidden` says study by study), so that searches that
        filter or order by the AI priority (the worklist) leave it out; None when there are none."""
        if self.policy.allows(principal, ActionValues.MANAGE_SYSTEM):
            return None
        with Session(self.engine) as session:
            projects = [
                project
                for project, readers in session.execute(
                    select(ProjectRow.id, ProjectRow.readers).where(
                        ProjectRow.blinded.is_(True),
                        ProjectRow.show_ai.is_(False),
                        ProjectRow.state == ProjectState.OPEN.value,
                    )
                )
                if principal.subject in json.loads(readers)
            ]
        if not projects:
            return None
        return StudyRow.study_uid.in_(select(ItemRow.study_uid).where(ItemRow.project_id.in_(projects)))

    def hidden(self, principal: Principal, study_uids: Sequence[str]) -> dict[str, Hidden]:
        """What ``principal`` may not see of each of ``study_uids`` (only the studies that hide
        something are in the answer)."""
        if self.policy.allows(principal, ActionValues.MANAGE_SYSTEM):
            return {}
        out: dict[str, Hidden] = {}
        studies = list(dict.fromkeys(study_uids))
        with Session(self.engine) as session:
            for start in range(0, len(studies), _CHUNK):
                chunk = studies[start : start + _CHUNK]
                if session.execute(_MAY_HIDE, {"studies": chunk}).scalar():
                    out.update(self._hidden(session, principal, chunk))
        return out

    def _hidden(self, session: Session, principal: Principal, studies: list[str]) -> dict[str, Hidden]:
        members: dict[int, tuple[Member, ...]] = {}

        def parts(project: int, owner: str, readers: str, reviewers: str) -> tuple[Member, ...]:
            if project not in members:
                members[project] = members_of(self.policy, principal, owner, readers, reviewers)
            return members[project]

        # Label objects: the reader's own, and any of a project where P owns, reviews, or reads unblinded.
        objects: dict[str, set[str]] = defaultdict(set)
        for study, sop, reader, project, owner, readers, reviewers, blinded in session.execute(
            select(
                LabelObjectRow.study_uid,
                LabelObjectRow.sop_uid,
                LabelObjectRow.reader,
                ProjectRow.id,
                ProjectRow.owner,
                ProjectRow.readers,
                ProjectRow.reviewers,
                ProjectRow.blinded,
            )
            .join(ProjectRow, ProjectRow.id == LabelObjectRow.project_id)
            .where(LabelObjectRow.study_uid.in_(studies))
        ):
            if reader == principal.subject:
                continue
            found = parts(project, owner, readers, reviewers)
            if {Member.OWNER, Member.REVIEWER} & set(found) or (Member.READER in found and not blinded):
                continue
            objects[study].add(sop)
        # AI results: hidden from the readers of an open, blinded project without AI proposals.
        blind_ai = {
            study
            for study, readers in session.execute(
                select(ItemRow.study_uid, ProjectRow.readers)
                .join(ProjectRow, ProjectRow.id == ItemRow.project_id)
                .where(
                    ItemRow.study_uid.in_(studies),
                    ProjectRow.blinded.is_(True),
                    ProjectRow.show_ai.is_(False),
                    ProjectRow.state == ProjectState.OPEN.value,
                )
            )
            if principal.subject in json.loads(readers)
        }
        ai_series: Mapping[str, set[str]] = (
            self._ai_series(sorted(blind_ai)) if blind_ai and self._ai_series is not None else {}
        )
        touched = sorted(set(objects) | {s for s in blind_ai if ai_series.get(s)})
        counts = self._counts(session, touched, objects, ai_series)
        out: dict[str, Hidden] = {}
        for study in sorted(set(objects) | blind_ai):
            per_series, series = counts.get(study, ({}, {}))
            emptied = {uid for uid, n in per_series.items() if n >= series.get(uid, (0, None))[0]}
            left = {modality for uid, (n, modality) in series.items() if n > 0 and uid not in emptied}
            out[study] = Hidden(
                instances=frozenset(objects.get(study, ())),
                series=frozenset(ai_series.get(study, set()) | emptied),
                per_series=per_series,
                emptied=len(emptied),
                modalities=tuple(sorted(m for m in left if m)) if emptied else None,
                ai=study in blind_ai,
            )
        return out

    @staticmethod
    def _counts(
        session: Session,
        studies: list[str],
        objects: Mapping[str, set[str]],
        ai_series: Mapping[str, set[str]],
    ) -> dict[str, tuple[dict[str, int], dict[str, tuple[int, str | None]]]]:
        """For each study: its hidden current instances per series, and each of its series'
        current instance count and modality."""
        if not studies:
            return {}
        sops = sorted({sop for study in studies for sop in objects.get(study, ())})
        series_uids = sorted({uid for study in studies for uid in ai_series.get(study, ())})
        hidden: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for start in range(0, max(len(sops), len(series_uids)), _CHUNK):
            chunk_sops, chunk_series = sops[start : start + _CHUNK], series_uids[start : start + _CHUNK]
            for study, series, sop in session.execute(
                select(InstanceRow.study_uid, InstanceRow.series_uid, InstanceRow.sop_uid).where(
                    InstanceRow.study_uid.in_(studies),
                    InstanceRow.version_removed.is_(None),
                    or_(InstanceRow.sop_uid.in_(chunk_sops), InstanceRow.series_uid.in_(chunk_series)),
                )
            ):
                if sop in objects.get(study, ()) or series in ai_series.get(study, ()):
                    hidden[study][series] += 1
        totals: dict[str, dict[str, tuple[int, str | None]]] = defaultdict(dict)
        for study, series, n, modality in session.execute(
            select(
                SeriesRow.study_uid, SeriesRow.series_uid, SeriesRow.num_instances, SeriesRow.modality
            ).where(SeriesRow.study_uid.in_(studies), SeriesRow.num_instances > 0)
        ):
            totals[study][series] = (int(n), modality)
        return {study: (dict(hidden.get(study, {})), totals.get(study, {})) for study in studies}
