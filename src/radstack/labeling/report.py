"""Agreement figures of a labeling project, per label: how much its readers agree, and how each reader
fares against the project's consensus.

Every figure is computed by :mod:`radstack.labeling.agreement` from the project's **reads** (a
reader's submitted ``read`` task with its current labels; consensus labels are never a read: see
:mod:`radstack.labeling._reads`). Each states ``n``, the items (studies) it is computed on, and is
``None`` with a ``reason`` when it is undefined.

Per label of the schema:

* **presence** of the label on an item (any geometry; a class label valued ``absent``, ``no``, … is
  absence), the category the chance-corrected coefficients compare:

  - **Cohen's kappa** when the project has exactly 2 readers per item, on the items both reads of
    which are in, reader *a* being the one listed first in the project (with two readers in all this
    is Cohen's two fixed raters; with more, readers take turns and kappa compares first and second
    reads);
  - **Fleiss' kappa** when it has 2 or more readers per item, on the items all of whose reads are in;
  - **Krippendorff's alpha** (nominal) on every item read at least twice, reads missing allowed.

  Each is undefined with one reader per item, before any item has the reads it needs, and when every
  read gives the same answer (no variation: chance agreement is 1 and the coefficient 0/0);

* for a label that takes **boxes**: every pair of readers of an item is compared on each image where
  either drew a box of the label; boxes are matched one-to-one at IoU ≥ τ (``iou_threshold``, 0.5 by
  default) by :func:`~radstack.labeling.agreement.match_boxes`. **F1** is ``2 · matches / boxes``
  pooled over every compared image (micro-averaged, so an image with many boxes weighs more), the
  **mean IoU** that of all matched pairs. The **IoU histogram** counts the pairs a matching at any
  overlap finds (IoU > 0) in tenths of IoU, beside the boxes left with no overlapping counterpart, so
  it shows where τ cuts;
* for a label that takes **masks**: every pair of readers is compared by the **Dice** coefficient of
  their masks of the label (all of a reader's masks of it on the image, merged) on each image where
  either drew one; the figure is the mean;
* **per reader, against the gold set**: the gold set is the project's **consensus** (see
  :mod:`radstack.labeling._reads`: what its reviewers decided; a gold list sent with the request is
  not taken, so every figure on the page and in the API is against the one reference the project
  keeps). On each item with a consensus that the reader read: **sensitivity** and **specificity** of
  the reader's presence against the consensus' (:func:`~radstack.labeling.agreement.reader_class_sensitivity`)
  and, for boxes, **box sensitivity** with the false-positive boxes
  (:func:`~radstack.labeling.agreement.reader_sensitivity`, at τ), each with its Wilson 95 % interval.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from radstack.errors import BadRequest
from radstack.labeling import agreement
from radstack.labeling._reads import ImageKey, ProjectLabels, image_key, load, present
from radstack.labeling.labels import mask_from_rle
from radstack.labeling.projects import Label, Member, ProjectService
from radstack.labeling.schema import Geometry, LabelDef
from radstack.security.policy import Principal

__all__ = [
    "DEFAULT_IOU",
    "HISTOGRAM_BINS",
    "AgreementReport",
    "AgreementService",
    "BoxFigures",
    "Figure",
    "LabelFigures",
    "Rate",
    "ReaderFigures",
    "agreement_report",
]

JsonDict = dict[str, Any]

#: τ when the request names none.
DEFAULT_IOU = 0.5
#: Bins of the box IoU histogram, over (0, 1].
HISTOGRAM_BINS = 10
#: The threshold of the matching behind the histogram: any overlap.
_ANY_OVERLAP = 1e-9


@dataclass(frozen=True, slots=True)
class Figure:
    """One figure on ``n`` items; ``value`` None with the ``reason`` when it is undefined."""

    value: float | None
    n: int
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Rate:
    """A proportion ``successes / n`` with its Wilson 95 % interval; ``items``: the items behind it."""

    value: float | None
    successes: int
    n: int
    items: int
    ci95: tuple[float, float] | None
    reason: str | None = None

    @classmethod
    def of(cls, proportion: agreement.Proportion, items: int, undefined: str) -> Rate:
        """The rate of ``proportion`` (``undefined``: the reason when its ``n`` is 0)."""
        return cls(
            proportion.value,
            proportion.successes,
            proportion.n,
            items,
            proportion.ci95,
            undefined if proportion.value is None else None,
        )

    @classmethod
    def undefined(cls, reason: str, items: int = 0) -> Rate:
        return cls(None, 0, 0, items, None, reason)


@dataclass(frozen=True, slots=True)
class BoxFigures:
    """Agreement of readers' boxes of one label."""

    f1: Figure
    mean_iou: Figure
    #: Reader pairs × images compared, boxes in them, and pairs matched at τ.
    comparisons: int
    boxes: int
    matches: int
    #: Pairs matched at any overlap, by IoU in tenths: ``(0, 0.1]``, ``(0.1, 0.2]``, …
    iou_histogram: tuple[int, ...]
    #: Boxes with no overlapping box of the other reader.
    unmatched: int


@dataclass(frozen=True, slots=True)
class ReaderFigures:
    """One reader against the consensus, for one label."""

    reader: str
    #: Items with a consensus this reader read.
    items: int
    sensitivity: Rate
    specificity: Rate
    #: For a label that takes boxes: gold boxes found (one-to-one at τ) and the reader's other boxes.
    box_sensitivity: Rate | None = None
    false_positive_boxes: int | None = None


@dataclass(frozen=True, slots=True)
class LabelFigures:
    """Every figure of one label."""

    key: str
    code: JsonDict
    geometry: tuple[str, ...]
    #: Items read at least once, the reads of them, and how many of those reads found the label.
    items: int
    reads: int
    positive_reads: int
    cohen_kappa: Figure
    fleiss_kappa: Figure
    krippendorff_alpha: Figure
    #: None when the label takes no boxes (masks).
    boxes: BoxFigures | None
    dice: Figure | None
    readers: tuple[ReaderFigures, ...]


@dataclass(frozen=True, slots=True)
class AgreementReport:
    """The agreement figures of a project (see the module docstring)."""

    project: str
    iou_threshold: float
    readers_per_item: int
    readers: tuple[str, ...]
    #: The cohort's items, those read at least once, and all reads.
    items: int
    items_read: int
    reads: int
    #: What the per-reader figures are against, and how many items have it.
    gold: str
    gold_items: int
    labels: tuple[LabelFigures, ...]

    def to_json(self) -> JsonDict:
        """The report as JSON (tuples as lists)."""
        document: JsonDict = json.loads(json.dumps(dataclasses.asdict(self)))
        return document


# ---------------------------------------------------------------------------------------- service
class AgreementService:
    """Agreement figures of a project for its owner and reviewers.

    Parameters
    ----------
    projects
        The projects service: its one membership check decides who may see the figures (the owner,
        needing ``manage-datasets``; a reviewer, needing ``label``), through the policy.
    """

    def __init__(self, projects: ProjectService) -> None:
        self.projects = projects

    def report(self, principal: Principal, name: str, iou_threshold: float = DEFAULT_IOU) -> AgreementReport:
        """The figures of project ``name`` (see the module docstring).

        Raises
        ------
        NotFound
            No such project, or the caller has no part in it.
        Forbidden
            The caller is a reader only (readers do not see each other's labels), or their role
            lacks the action their part needs.
        BadRequest
            ``iou_threshold`` is not in ``(0, 1]``.
        """
        check_threshold(iou_threshold)
        labels, _members = load(self.projects, principal, name, Member.OWNER, Member.REVIEWER)
        return agreement_report(labels, iou_threshold)


def check_threshold(iou_threshold: float) -> float:
    """``iou_threshold`` itself when it is in ``(0, 1]``.

    Raises
    ------
    BadRequest
        It is not a number in ``(0, 1]``.
    """
    if (
        not isinstance(iou_threshold, int | float)
        or not math.isfinite(iou_threshold)
        or not 0 < iou_threshold <= 1
    ):
        raise BadRequest(f"iou {iou_threshold!r} must be a number in (0, 1], e.g. 0.5")
    return float(iou_threshold)


# ---------------------------------------------------------------------------------------- figures
def agreement_report(project: ProjectLabels, iou_threshold: float = DEFAULT_IOU) -> AgreementReport:
    """The figures of ``project``'s reads (see the module docstring); pure, no I/O."""
    read_items = [item for item in project.items if project.reads.get(item.id)]
    return AgreementReport(
        project=project.name,
        iou_threshold=iou_threshold,
        readers_per_item=project.readers_per_item,
        readers=project.readers,
        items=len(project.items),
        items_read=len(read_items),
        reads=sum(len(project.reads.get(item.id, {})) for item in project.items),
        gold="consensus",
        gold_items=sum(1 for item in project.items if item.id in project.consensus),
        labels=tuple(_label_figures(project, label, iou_threshold) for label in project.schema.labels),
    )


def _label_figures(project: ProjectLabels, label: LabelDef, tau: float) -> LabelFigures:
    key = label.key
    # Presence per item, by reader (project order), for the items read at least once.
    presence: dict[int, list[tuple[str, bool]]] = {}
    for item in project.items:
        reads = project.reads_of(item.id)
        if reads:
            presence[item.id] = [(reader, present(labels, key)) for reader, labels in reads]
    votes = [vote for item_votes in presence.values() for _, vote in item_votes]
    return LabelFigures(
        key=key,
        code=label.code.to_json(),
        geometry=tuple(g.value for g in label.geometry),
        items=len(presence),
        reads=len(votes),
        positive_reads=sum(votes),
        cohen_kappa=_cohen(project, presence),
        fleiss_kappa=_fleiss(project, presence),
        krippendorff_alpha=_alpha(project, presence),
        boxes=_boxes(project, key, tau) if Geometry.BOX in label.geometry else None,
        dice=_dice(project, key) if Geometry.MASK in label.geometry else None,
        readers=tuple(
            _reader(project, key, reader, tau, Geometry.BOX in label.geometry) for reader in project.readers
        ),
    )


def _no_variation(ratings: Sequence[Hashable], n: int) -> Figure | None:
    """The undefined figure when every rating is the same (None when they vary)."""
    if len(set(ratings)) > 1:
        return None
    answer = "present" if ratings and ratings[0] else "absent"
    return Figure(
        None, n, f"no variation: every read says {answer}, so chance agreement is 1 and the figure 0/0"
    )


def _one_reader(project: ProjectLabels) -> Figure | None:
    if project.readers_per_item < 2:
        return Figure(None, 0, "one reader per item: there is no second read to agree with")
    return None


def _complete(project: ProjectLabels, presence: Mapping[int, list[tuple[str, bool]]]) -> list[list[bool]]:
    """Per item whose reads are all in (``readers_per_item`` of them), its votes in reader order."""
    return [
        [vote for _, vote in votes] for votes in presence.values() if len(votes) == project.readers_per_item
    ]


def _cohen(project: ProjectLabels, presence: Mapping[int, list[tuple[str, bool]]]) -> Figure:
    if project.readers_per_item != 2:
        return _one_reader(project) or Figure(
            None,
            0,
            f"Cohen's kappa needs exactly 2 readers per item; this project has {project.readers_per_item} "
            "(see Fleiss' kappa)",
        )
    rows = _complete(project, presence)
    if not rows:
        return Figure(None, 0, "no item has both its reads yet")
    a, b = [row[0] for row in rows], [row[1] for row in rows]
    return _no_variation(a + b, len(rows)) or Figure(agreement.cohen_kappa(a, b), len(rows))


def _fleiss(project: ProjectLabels, presence: Mapping[int, list[tuple[str, bool]]]) -> Figure:
    undefined = _one_reader(project)
    if undefined is not None:
        return undefined
    rows = _complete(project, presence)
    if not rows:
        return Figure(None, 0, f"no item has all its {project.readers_per_item} reads yet")
    flat = [vote for row in rows for vote in row]
    return _no_variation(flat, len(rows)) or Figure(agreement.fleiss_kappa(rows), len(rows))


def _alpha(project: ProjectLabels, presence: Mapping[int, list[tuple[str, bool]]]) -> Figure:
    undefined = _one_reader(project)
    if undefined is not None:
        return undefined
    pairable = {item: votes for item, votes in presence.items() if len(votes) >= 2}
    if not pairable:
        return Figure(None, 0, "no item has two reads yet")
    readers = sorted({reader for votes in pairable.values() for reader, _ in votes}, key=_order(project))
    # Readers × items, None where a reader did not read an item.
    matrix: list[list[Any]] = [[dict(votes).get(reader) for votes in pairable.values()] for reader in readers]
    flat = [vote for votes in pairable.values() for _, vote in votes]
    return _no_variation(flat, len(pairable)) or Figure(
        agreement.krippendorff_alpha(matrix, "nominal"), len(pairable)
    )


def _order(project: ProjectLabels) -> Callable[[str], tuple[int, str]]:
    index = {reader: i for i, reader in enumerate(project.readers)}
    return lambda reader: (index.get(reader, len(index)), reader)


def _boxes_by_image(labels: Sequence[Label], key: str) -> dict[ImageKey, list[list[float]]]:
    found: dict[ImageKey, list[list[float]]] = defaultdict(list)
    for label in labels:
        if label.label == key and label.geometry is Geometry.BOX:
            found[image_key(label)].append(list(label.data["box"]))
    return found


def _masks_by_image(labels: Sequence[Label], key: str) -> dict[ImageKey, NDArray[np.bool_]]:
    """Each image's masks of the label, merged (a reader's two masks of one label are one region)."""
    found: dict[ImageKey, NDArray[np.bool_]] = {}
    for label in labels:
        if label.label == key and label.geometry is Geometry.MASK:
            mask = mask_from_rle(label.data["mask"]["rle"])
            where = image_key(label)
            found[where] = found[where] | mask if where in found else mask
    return found


def _pairs(project: ProjectLabels, item: int) -> list[tuple[tuple[Label, ...], tuple[Label, ...]]]:
    """Every pair of the item's reads (reader order)."""
    reads = project.reads_of(item)
    return [(a, b) for (_, a), (_, b) in itertools.combinations(reads, 2)]


def _boxes(project: ProjectLabels, key: str, tau: float) -> BoxFigures:
    comparisons = boxes = matches = unmatched = 0
    ious: list[float] = []
    histogram = [0] * HISTOGRAM_BINS
    items: set[int] = set()
    for item in project.items:
        for a_labels, b_labels in _pairs(project, item.id):
            a_boxes, b_boxes = _boxes_by_image(a_labels, key), _boxes_by_image(b_labels, key)
            for image in sorted(set(a_boxes) | set(b_boxes)):
                a, b = a_boxes.get(image, []), b_boxes.get(image, [])
                matched = agreement.match_boxes(a, b, tau)
                comparisons += 1
                boxes += len(a) + len(b)
                matches += len(matched)
                ious.extend(m.iou for m in matched)
                overlapping = agreement.match_boxes(a, b, _ANY_OVERLAP)
                unmatched += len(a) + len(b) - 2 * len(overlapping)
                for pair in overlapping:
                    histogram[min(HISTOGRAM_BINS - 1, max(0, math.ceil(pair.iou * HISTOGRAM_BINS) - 1))] += 1
                items.add(item.id)
    n = len(items)
    if project.readers_per_item < 2:
        reason = "one reader per item: there is no second read to compare boxes with"
        f1, mean_iou = Figure(None, 0, reason), Figure(None, 0, reason)
    elif not boxes:
        reason = "no two readers of an item drew a box of this label yet"
        f1, mean_iou = Figure(None, 0, reason), Figure(None, 0, reason)
    else:
        # F1 = 2·matches / (|a| + |b|), as agreement.box_agreement gives it per image, pooled.
        f1 = Figure(2.0 * matches / boxes, n)
        mean_iou = (
            Figure(float(np.mean(ious)), n)
            if ious
            else Figure(None, n, f"no pair of boxes overlaps at IoU ≥ {tau:g}")
        )
    return BoxFigures(f1, mean_iou, comparisons, boxes, matches, tuple(histogram), unmatched)


def _dice(project: ProjectLabels, key: str) -> Figure:
    if project.readers_per_item < 2:
        return Figure(None, 0, "one reader per item: there is no second read to compare masks with")
    values: list[float] = []
    items: set[int] = set()
    for item in project.items:
        for a_labels, b_labels in _pairs(project, item.id):
            a_masks, b_masks = _masks_by_image(a_labels, key), _masks_by_image(b_labels, key)
            for image in sorted(set(a_masks) | set(b_masks)):
                a, b = a_masks.get(image), b_masks.get(image)
                drawn = a if a is not None else b
                assert drawn is not None  # the image is one of a's or b's
                empty = np.zeros(drawn.shape, bool)
                values.append(agreement.dice(a if a is not None else empty, b if b is not None else empty))
                items.add(item.id)
    if not values:
        return Figure(None, 0, "no two readers of an item drew a mask of this label yet")
    return Figure(float(np.mean(values)), len(items))


def _reader(project: ProjectLabels, key: str, reader: str, tau: float, takes_boxes: bool) -> ReaderFigures:
    gold_items = [
        item.id
        for item in project.items
        if item.id in project.consensus and reader in project.reads.get(item.id, {})
    ]
    if not gold_items:
        reason = "no item this reader read has a consensus yet"
        return ReaderFigures(
            reader,
            0,
            Rate.undefined(reason),
            Rate.undefined(reason),
            Rate.undefined(reason) if takes_boxes else None,
            None,
        )
    calls = {item: present(project.reads[item][reader], key) for item in gold_items}
    truth = {item: present(project.consensus[item], key) for item in gold_items}
    scored = agreement.reader_class_sensitivity(calls, truth, True)
    n = len(gold_items)
    figures = ReaderFigures(
        reader,
        n,
        Rate.of(
            scored.sensitivity, n, "the consensus finds this label on none of the items this reader read"
        ),
        Rate.of(scored.specificity, n, "the consensus finds this label on every item this reader read"),
    )
    if not takes_boxes:
        return figures
    reader_boxes: dict[ImageKey, list[list[float]]] = {}
    gold_boxes: dict[ImageKey, list[list[float]]] = {}
    for item in gold_items:
        reader_boxes.update(_boxes_by_image(project.reads[item][reader], key))
        gold_boxes.update(_boxes_by_image(project.consensus[item], key))
    images = set(reader_boxes) | set(gold_boxes)
    if not images:
        return dataclasses.replace(
            figures, box_sensitivity=Rate.undefined("no box of this label in the consensus or these reads", n)
        )
    # Every image with a box on either side is scored; the reader's boxes where the consensus has
    # none are false positives.
    boxes = agreement.reader_sensitivity(
        {image: reader_boxes.get(image, []) for image in images},
        {image: gold_boxes.get(image, []) for image in images},
        tau,
    )
    return dataclasses.replace(
        figures,
        box_sensitivity=Rate.of(
            boxes.sensitivity, n, "the consensus has no box of this label on these items"
        ),
        false_positive_boxes=boxes.false_positives,
    )
