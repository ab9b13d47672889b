"""The store's records: one instance as the index holds it, and one change to studies (a batch).

An instance has one domain record, :class:`InstanceRecord`, beside its table row
(:class:`~radstack.store.models.InstanceRow`): the ingest pipeline builds it for an instance whose
blobs are written, the store commits it as a row, and every read path gets it back from a row.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Row

from radstack.dicom.codecs import PixelInfo
from radstack.store.models import InstanceRow

__all__ = ["Batch", "BatchReason", "CommitOutcome", "InstanceRecord", "StoreOutcomeValues"]

JsonDict = dict[str, Any]


class StoreOutcomeValues(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"  #: same SOP instance, same content: stored once, reported as success
    REPLACED = "replaced"  #: same SOP Instance UID, new content: the old one stays in earlier versions


@dataclass(frozen=True, slots=True)
class CommitOutcome:
    outcome: StoreOutcomeValues
    version: int


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """One instance: what its index row holds, as Python values.

    A record the ingest pipeline builds (an instance whose blobs are written and that waits for its
    row) has no ``id`` or ``version_added`` yet; a record read from the index has both.
    """

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str  #: the transfer syntax the instance arrived in
    frame_syntax: str | None  #: the transfer syntax of the stored frame blobs
    pixel: PixelInfo | None
    frames: list[str]  #: frame blob keys
    frame_crcs: list[int]  #: CRC32 of each frame's decoded samples
    content_hash: str
    header_key: str
    json_key: str
    size_bytes: int
    render: dict[str, Any] | None  #: presentation defaults, so a preview needs no header read
    #: The instance's DICOM JSON (bulk values by BulkDataURI) when it is at hand, as after ingest:
    #: committing the record then reads no blob back. Records read from the index leave it out;
    #: the blob ``json_key`` holds it.
    attrs: JsonDict | None = field(default=None, compare=False, repr=False)
    id: int | None = None  #: the index row; None until the record is committed
    version_added: int | None = None

    @classmethod
    def from_row(cls, row: InstanceRow | Row[Any]) -> InstanceRecord:
        """The record of an ``instances`` row (an ORM row or a Core row of all its columns)."""
        return cls(
            study_uid=row.study_uid,
            series_uid=row.series_uid,
            sop_uid=row.sop_uid,
            sop_class_uid=row.sop_class_uid,
            instance_number=row.instance_number,
            transfer_syntax_uid=row.transfer_syntax_uid,
            frame_syntax=row.frame_syntax,
            pixel=PixelInfo(**json.loads(row.pixel)) if row.pixel else None,
            frames=json.loads(row.frames),
            frame_crcs=json.loads(row.frame_crcs),
            content_hash=row.content_hash,
            header_key=row.header_key,
            json_key=row.json_key,
            size_bytes=row.size_bytes,
            render=json.loads(row.render) if row.render else None,
            id=row.id,
            version_added=row.version_added,
        )

    def to_row(self, version: int, pseudo_uid: str | None) -> InstanceRow:
        """A new current row for this instance in study version ``version`` (ingest, update, revert).

        Rows are never changed but to close them: a record committed again (a revert) gets a new
        row that shares the old one's blobs.
        """
        pixel = self.pixel
        return InstanceRow(
            study_uid=self.study_uid,
            series_uid=self.series_uid,
            sop_uid=self.sop_uid,
            pseudo_uid=pseudo_uid,
            sop_class_uid=self.sop_class_uid,
            instance_number=self.instance_number,
            version_added=version,
            version_removed=None,
            transfer_syntax_uid=self.transfer_syntax_uid,
            frame_syntax=self.frame_syntax,
            rows=pixel.rows if pixel else None,
            columns=pixel.columns if pixel else None,
            bits_allocated=pixel.bits_allocated if pixel else None,
            number_of_frames=pixel.number_of_frames if pixel else None,
            pixel=json.dumps(asdict(pixel)) if pixel else None,
            frames=json.dumps(self.frames),
            frame_crcs=json.dumps(self.frame_crcs),
            content_hash=self.content_hash,
            header_key=self.header_key,
            json_key=self.json_key,
            size_bytes=self.size_bytes,
            render=json.dumps(self.render) if self.render else None,
            created_at=datetime.now(UTC),
        )


class BatchReason(StrEnum):
    """Why a study changed: each new study version records it (routing rules match C-STORE on it)."""

    STOW = "stow"
    C_STORE = "c-store"
    IMPORT = "import"
    INBOX = "inbox"
    DEMO = "demo"
    UPDATE = "update"
    DELETE = "delete"
    REVERT = "revert"
    #: A model's result (an SR) stored into the study, replacing the model's previous one.
    AI = "ai"
    #: A labeling project's consensus (SR, SEG) stored into the study, replacing its previous one.
    LABELING = "labeling"


@dataclass
class Batch:
    """One user-visible change (a STOW request, an import, an update): one new version per study."""

    reason: BatchReason
    detail: str = ""
    versions: dict[str, int] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)
