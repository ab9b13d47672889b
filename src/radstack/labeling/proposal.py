"""The consensus a reviewer is proposed: readers' labels of one item combined by a project's rules (no I/O).

A project's **consensus rules** (:class:`ConsensusRules`, stored with the project; every field has a
default)::

    {"classes": "majority", "boxes": "quorum", "iou_threshold": 0.5, "quorum": null,
     "masks": "majority", "min_agreement": 0.3333333333333333}

The **voters** of an item are the readers who submitted their read task (a skipped task gives no vote),
in the order of their tasks. The **quorum** is ``quorum`` when set (at most the number of voters),
else more than half the voters (``voters // 2 + 1``). A reader's labels that a reviewer rejected are
left out before anything is counted. Labels are grouped by schema label and image (and frame), and
each group is combined by its geometry with :mod:`radstack.labeling.consensus`:

* **class** (image-level): each voter votes the value of their class label (a class label without a
  value votes *present*) or, having given none, *absent*; :func:`~.consensus.majority_class` decides. A
  tie for first place is a disagreement (``tie``); *absent* winning gives no label.
* **box**: each voter's boxes are clustered at IoU ≥ ``iou_threshold``, by ``"quorum"``
  (:func:`~.consensus.quorum_boxes`: optimal one-to-one matching, the mean box) or ``"wbf"``
  (:func:`~.consensus.weighted_box_fusion`: weighted box fusion, every reader's box weighing 1). A
  cluster that at least ``quorum`` voters drew is a consensus box; one that fewer drew is a
  disagreement (``quorum``).
* **mask**: each voter's masks of the group are joined (a voter without one gives an empty mask).
  Fewer than ``quorum`` voters with a mask is a disagreement (``quorum``); otherwise the consensus mask
  is the pixel-wise strict majority (``"majority"``, :func:`~.consensus.majority_mask`) or STAPLE's
  (``"staple"``, :func:`~.consensus.staple`), and a consensus that sets no pixel is a disagreement too.
* **point** and **line** labels are not combined by rule: they are listed (``unfused``) for the
  reviewer, who adds them to the consensus by editing it.
* a **negative** (a box whose value is :data:`NEGATIVE`: an AI finding the reader rejected, see
  :meth:`radstack.labeling.review.ReviewService.ai_reviewed`) says where there is nothing; it is not
  a box the reader drew and takes no part in the consensus.

A consensus label's laterality and site are its readers' when they all gave the same, else none.

**Agreement** (the kappa-like rule): every group is a *question* each voter answers with one category
(the class vote above; for boxes and masks, whether the voter drew one of that label on that image).
A question's agreement is the observed-agreement term of Fleiss' kappa for one subject,
``P = Σ_k n_k (n_k − 1) / (n (n − 1))``: the share of ordered pairs of its ``n ≥ 2`` voters that
answered alike (``n_k`` of them answered ``k``). Chance correction needs many subjects, so one item
is judged by ``P`` alone: a question with ``P < min_agreement`` is a disagreement (``agreement``),
unless it already is one of the kinds above. The item's ``agreement`` is the lowest ``P`` of its
questions. The default ``1/3`` flags splits with no clear plurality (four readers voting 2-1-1, ``P =
1/6``) while a 2-1 split of three readers (``P = 1/3``) stays with the majority; ``0.5`` would send
every 2-1 split of three readers to adjudication. With two readers any split is ``P = 0`` and is also
a tie or short of the quorum.

Any disagreement means the item is adjudicated once the reviewer has decided
(:mod:`radstack.labeling.review`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fractions import Fraction
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from radstack.errors import BadRequest
from radstack.labeling.consensus import (
    FusedBox,
    VoteOutcome,
    majority_class,
    majority_mask,
    quorum_boxes,
    staple,
    weighted_box_fusion,
)
from radstack.labeling.labels import mask_from_rle, mask_rle
from radstack.labeling.projects import Label
from radstack.labeling.schema import Geometry, choices

__all__ = [
    "NEGATIVE",
    "BoxRule",
    "ClassRule",
    "ConsensusRules",
    "Disagreement",
    "DisagreementKind",
    "MaskRule",
    "Proposal",
    "Proposed",
    "Read",
    "agreement_of",
    "is_negative",
    "propose",
]

JsonDict = dict[str, Any]
_E = TypeVar("_E", bound=StrEnum)
#: The value of a negative box label: an AI finding its reviewer rejected (nothing there).
NEGATIVE = "absent"
#: Digits a fused box's coordinates keep (a mean of float coordinates, without its float noise).
BOX_DIGITS = 4


class ClassRule(StrEnum):
    """How image-level classes are combined."""

    MAJORITY = "majority"


class BoxRule(StrEnum):
    """How boxes are combined: quorum clusters (mean box) or weighted box fusion."""

    QUORUM = "quorum"
    WBF = "wbf"


class MaskRule(StrEnum):
    """How masks are combined: pixel-wise strict majority or STAPLE."""

    MAJORITY = "majority"
    STAPLE = "staple"


@dataclass(frozen=True, slots=True)
class ConsensusRules:
    """A project's consensus rules (see the module's docstring); the defaults are the fields' own."""

    classes: ClassRule = ClassRule.MAJORITY
    boxes: BoxRule = BoxRule.QUORUM
    iou_threshold: float = 0.5
    #: Voters needed for a box or mask; None: more than half the voters.
    quorum: int | None = None
    masks: MaskRule = MaskRule.MAJORITY
    min_agreement: float = 1 / 3

    @classmethod
    def from_json(cls, document: Any) -> ConsensusRules:
        """The rules ``document`` gives (null or ``{}``: the defaults).

        Raises
        ------
        BadRequest
            Naming the field: not an object, an unknown field, an unknown rule, an IoU threshold
            outside ``(0, 1]``, a quorum that is not a whole number from 1 to 9, an agreement outside
            ``[0, 1]``.
        """
        if document is None:
            return cls()
        if not isinstance(document, Mapping):
            raise BadRequest(f"consensus must be a JSON object of rules, not {type(document).__name__}")
        accepted = ("classes", "boxes", "iou_threshold", "quorum", "masks", "min_agreement")
        unknown = [key for key in document if key not in accepted]
        if unknown:
            raise BadRequest(f"consensus: unknown field {unknown[0]!r}; accepted: {choices(accepted)}")
        defaults = cls()
        iou = _number(document.get("iou_threshold", defaults.iou_threshold), "consensus.iou_threshold")
        if not 0 < iou <= 1:
            raise BadRequest(f"consensus.iou_threshold {iou!r} must be in (0, 1]")
        quorum = document.get("quorum")
        if quorum is not None and (
            isinstance(quorum, bool) or not isinstance(quorum, int) or not 1 <= quorum <= 9
        ):
            raise BadRequest(
                f"consensus.quorum {quorum!r} must be null (more than half the readers) or 1 to 9 readers"
            )
        agreement = _number(document.get("min_agreement", defaults.min_agreement), "consensus.min_agreement")
        if not 0 <= agreement <= 1:
            raise BadRequest(f"consensus.min_agreement {agreement!r} must be in [0, 1]")
        return cls(
            classes=_rule(ClassRule, document.get("classes", defaults.classes), "consensus.classes"),
            boxes=_rule(BoxRule, document.get("boxes", defaults.boxes), "consensus.boxes"),
            iou_threshold=iou,
            quorum=quorum,
            masks=_rule(MaskRule, document.get("masks", defaults.masks), "consensus.masks"),
            min_agreement=agreement,
        )

    def to_json(self) -> JsonDict:
        return {
            "classes": self.classes.value,
            "boxes": self.boxes.value,
            "iou_threshold": self.iou_threshold,
            "quorum": self.quorum,
            "masks": self.masks.value,
            "min_agreement": self.min_agreement,
        }

    def quorum_of(self, voters: int) -> int:
        """The voters a box or mask needs among ``voters``: ``quorum`` (at most ``voters``), else more
        than half of them (1 when there is none)."""
        if self.quorum is not None:
            return max(1, min(self.quorum, voters))
        return voters // 2 + 1


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"{where} {value!r} is not a number")
    return float(value)


def _rule(enum: type[_E], value: Any, where: str) -> _E:
    try:
        return enum(value)
    except ValueError:
        raise BadRequest(f"{where} {value!r} is not one of {choices(enum)}") from None


# ---------------------------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class Read:
    """One reader's read of the item: their task, whether they submitted it, their labels (current,
    not rejected)."""

    reader: str
    task_id: int
    submitted: bool
    labels: tuple[Label, ...]


@dataclass(frozen=True, slots=True)
class Proposed:
    """A consensus label: a label's fields as :meth:`ProjectService.submit_labels` takes them, and the
    readers (and their labels' ids) behind it."""

    label: str
    geometry: Geometry
    data: JsonDict
    value: str | None
    sop_uid: str
    frame: int | None
    laterality: str | None
    site: str | None
    readers: tuple[str, ...]
    members: tuple[int, ...]

    def to_json(self) -> JsonDict:
        """The label as the JSON label API takes it (what an edit starts from)."""
        document: JsonDict = {
            "label": self.label,
            "geometry": self.geometry.value,
            "data": self.data,
            "sop_uid": self.sop_uid,
        }
        for name in ("frame", "laterality", "site", "value"):
            if getattr(self, name) is not None:
                document[name] = getattr(self, name)
        return document


class DisagreementKind(StrEnum):
    #: The class vote is tied.
    TIE = "tie"
    #: A box or mask drawn by fewer voters than the quorum (or a mask no majority marked).
    QUORUM = "quorum"
    #: A question's agreement is below ``min_agreement``.
    AGREEMENT = "agreement"


@dataclass(frozen=True, slots=True)
class Disagreement:
    """Where the readers disagree: the label, image, the readers and labels concerned, and why."""

    kind: DisagreementKind
    label: str
    geometry: Geometry
    sop_uid: str
    frame: int | None
    readers: tuple[str, ...]
    members: tuple[int, ...]
    detail: str


@dataclass(frozen=True, slots=True)
class Proposal:
    """The consensus proposed for one item."""

    labels: tuple[Proposed, ...]
    disagreements: tuple[Disagreement, ...]
    #: The lowest agreement of the item's questions; None when no question had two voters.
    agreement: float | None
    voters: tuple[str, ...]
    quorum: int
    #: Ids of the point and line labels, which no rule combines.
    unfused: tuple[int, ...] = ()
    rules: ConsensusRules = field(default_factory=ConsensusRules)

    @property
    def needs_adjudication(self) -> bool:
        return bool(self.disagreements)


# ---------------------------------------------------------------------------------------------- rules
def is_negative(label: Label) -> bool:
    """Whether ``label`` is a negative: a box with the value :data:`NEGATIVE`."""
    return label.geometry is Geometry.BOX and label.value == NEGATIVE


def agreement_of(answers: Sequence[Hashable]) -> Fraction | None:
    """Fleiss' per-subject agreement of one question: the share of ordered pairs of voters who gave the
    same answer, ``Σ_k n_k (n_k − 1) / (n (n − 1))``; None with fewer than two answers."""
    n = len(answers)
    if n < 2:
        return None
    counts: dict[Hashable, int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    return Fraction(sum(k * (k - 1) for k in counts.values()), n * (n - 1))


#: A class vote of a voter who gave no class label of the group; a class label without value votes "".
_ABSENT = ("absent",)
_PRESENT = ("present",)


def _common(values: Iterable[str | None]) -> str | None:
    found = set(values)
    return found.pop() if len(found) == 1 else None


def _group_key(label: Label) -> tuple[str, str, int]:
    return (label.label, label.sop_uid, label.frame or 1)


def propose(reads: Sequence[Read], rules: ConsensusRules | None = None) -> Proposal:
    """The consensus of ``reads`` (one item's) by ``rules``: labels, disagreements and the agreement.

    See the module's docstring for the rules.
    """
    rules = rules or ConsensusRules()
    voters = sorted((r for r in reads if r.submitted), key=lambda r: r.task_id)
    quorum = rules.quorum_of(len(voters))
    labels: list[Proposed] = []
    disagreements: list[Disagreement] = []
    unfused: list[int] = []
    lowest: Fraction | None = None
    groups: dict[tuple[Geometry, str, str, int], list[list[Label]]] = {}
    for index, read in enumerate(voters):
        for label in read.labels:
            if is_negative(label):
                continue
            if label.geometry in (Geometry.POINT, Geometry.LINE):
                unfused.append(label.id)
                continue
            key = (label.geometry, *_group_key(label))
            groups.setdefault(key, [[] for _ in voters])[index].append(label)
    for (geometry, name, _sop, _frame), per_reader in sorted(groups.items()):
        combine = _COMBINE[geometry]
        found, trouble, answers = combine(per_reader, voters, quorum, rules)
        labels.extend(found)
        disagreements.extend(trouble)
        agreement = agreement_of(answers)
        if agreement is None:
            continue
        lowest = agreement if lowest is None else min(lowest, agreement)
        if not trouble and agreement < Fraction(rules.min_agreement):
            first = next(label for mine in per_reader for label in mine)
            given = [(voters[i].reader, label.id) for i, mine in enumerate(per_reader) for label in mine]
            disagreements.append(
                Disagreement(
                    DisagreementKind.AGREEMENT,
                    name,
                    geometry,
                    first.sop_uid,
                    first.frame,
                    tuple(dict.fromkeys(reader for reader, _ in given)),
                    tuple(label_id for _, label_id in given),
                    f"agreement {float(agreement):.2f} of {len(voters)} readers is below "
                    f"{rules.min_agreement:.2f}",
                )
            )
    return Proposal(
        labels=tuple(labels),
        disagreements=tuple(disagreements),
        agreement=float(lowest) if lowest is not None else None,
        voters=tuple(r.reader for r in voters),
        quorum=quorum,
        unfused=tuple(unfused),
        rules=rules,
    )


Combined = tuple[list[Proposed], list[Disagreement], list[Hashable]]


def _classes(
    per_reader: list[list[Label]], voters: Sequence[Read], quorum: int, rules: ConsensusRules
) -> Combined:
    """One class vote (see the module's docstring)."""
    del quorum, rules  # a plurality decides; ties go to adjudication
    votes: list[Hashable] = []
    for mine in per_reader:
        first = min(mine, key=lambda label: label.id) if mine else None
        votes.append(_ABSENT if first is None else ("value", first.value or ""))
    first_label = next(label for mine in per_reader for label in mine)
    vote = majority_class(votes)
    if vote.outcome is VoteOutcome.TIE:
        given = [label for mine in per_reader for label in mine]
        counts = ", ".join(f"{_category(category)} {n}" for category, n in vote.counts)
        trouble = Disagreement(
            DisagreementKind.TIE,
            first_label.label,
            Geometry.CLASS,
            first_label.sop_uid,
            first_label.frame,
            tuple(dict.fromkeys(label.reader for label in given)),
            tuple(label.id for label in given),
            f"the vote is tied: {counts}",
        )
        return [], [trouble], votes
    if vote.category == _ABSENT or vote.category is None:
        return [], [], votes
    behind = [
        min(mine, key=lambda label: label.id)
        for mine, cast in zip(per_reader, votes, strict=True)
        if cast == vote.category and mine
    ]
    value = behind[0].value
    proposed = Proposed(
        label=first_label.label,
        geometry=Geometry.CLASS,
        data={},
        value=value,
        sop_uid=first_label.sop_uid,
        frame=first_label.frame,
        laterality=_common(label.laterality for label in behind),
        site=_common(label.site for label in behind),
        readers=tuple(label.reader for label in behind),
        members=tuple(label.id for label in behind),
    )
    return [proposed], [], votes


def _category(category: Hashable) -> str:
    if category == _ABSENT:
        return "absent"
    if isinstance(category, tuple) and len(category) == 2:
        return str(category[1]) or "present"
    return str(category)


def _boxes(
    per_reader: list[list[Label]], voters: Sequence[Read], quorum: int, rules: ConsensusRules
) -> Combined:
    """One label's boxes on one image (see the module's docstring)."""
    boxes = [[label.data["box"] for label in mine] for mine in per_reader]
    clusters: list[FusedBox]
    if rules.boxes is BoxRule.WBF:
        clusters = weighted_box_fusion(boxes, iou_threshold=rules.iou_threshold)
    else:
        result = quorum_boxes(boxes, rules.iou_threshold, quorum)
        clusters = [*result.accepted, *result.disagreements]
    found: list[Proposed] = []
    trouble: list[Disagreement] = []
    for cluster in clusters:
        members = [per_reader[r][i] for r, i in cluster.members]
        first = members[0]
        readers = tuple(dict.fromkeys(label.reader for label in members))
        if cluster.readers >= quorum:
            found.append(
                Proposed(
                    label=first.label,
                    geometry=Geometry.BOX,
                    data={"box": [round(v, BOX_DIGITS) + 0.0 for v in cluster.box]},
                    value=None,
                    sop_uid=first.sop_uid,
                    frame=first.frame,
                    laterality=_common(label.laterality for label in members),
                    site=_common(label.site for label in members),
                    readers=readers,
                    members=tuple(label.id for label in members),
                )
            )
        else:
            box = [round(v, BOX_DIGITS) + 0.0 for v in cluster.box]
            trouble.append(
                Disagreement(
                    DisagreementKind.QUORUM,
                    first.label,
                    Geometry.BOX,
                    first.sop_uid,
                    first.frame,
                    readers,
                    tuple(label.id for label in members),
                    f"a box near {box} drawn by {cluster.readers} of {len(voters)} readers; "
                    f"the quorum is {quorum}",
                )
            )
    answers: list[Hashable] = [bool(mine) for mine in per_reader]
    return found, trouble, answers


def _masks(
    per_reader: list[list[Label]], voters: Sequence[Read], quorum: int, rules: ConsensusRules
) -> Combined:
    """One label's masks on one image (see the module's docstring)."""
    given = [label for mine in per_reader for label in mine]
    first = given[0]
    rows, columns = int(first.data["mask"]["rows"]), int(first.data["mask"]["columns"])
    stack: list[NDArray[np.bool_]] = []
    for mine in per_reader:
        joined = np.zeros((rows, columns), dtype=bool)
        for label in mine:
            joined |= mask_from_rle(label.data["mask"]["rle"])
        stack.append(joined)
    drew = sum(1 for mine in per_reader if mine)
    readers = tuple(dict.fromkeys(label.reader for label in given))
    members = tuple(label.id for label in given)
    answers: list[Hashable] = [bool(mine) for mine in per_reader]

    def disagreement(detail: str) -> Combined:
        trouble = Disagreement(
            DisagreementKind.QUORUM,
            first.label,
            Geometry.MASK,
            first.sop_uid,
            first.frame,
            readers,
            members,
            detail,
        )
        return [], [trouble], answers

    if drew < quorum:
        return disagreement(f"a mask drawn by {drew} of {len(voters)} readers; the quorum is {quorum}")
    mask = majority_mask(stack) if rules.masks is MaskRule.MAJORITY else staple(stack).mask
    if not mask.any():
        return disagreement(
            f"{drew} readers drew a mask, but no pixel is in the {rules.masks.value} consensus"
        )
    proposed = Proposed(
        label=first.label,
        geometry=Geometry.MASK,
        data={"mask": {"rows": rows, "columns": columns, "rle": mask_rle(mask)}},
        value=None,
        sop_uid=first.sop_uid,
        frame=first.frame,
        laterality=_common(label.laterality for label in given),
        site=_common(label.site for label in given),
        readers=readers,
        members=members,
    )
    return [proposed], [], answers


_COMBINE: dict[Geometry, Callable[[list[list[Label]], Sequence[Read], int, ConsensusRules], Combined]] = {
    Geometry.CLASS: _classes,
    Geometry.BOX: _boxes,
    Geometry.MASK: _masks,
}
