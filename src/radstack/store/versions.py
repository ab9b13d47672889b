"""Study versions: every change (ingest batch, attribute update, delete, revert) makes a new one.

Old versions stay readable and can be restored (after AWS HealthImaging's image set versions).
Frames are never copied: a new version points at the same content-addressed blobs.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.tag import Tag

from radstack.dicom.header import encode_header, instance_json
from radstack.dicom.json_model import SERIES_LEVEL_TAGS, STUDY_LEVEL_TAGS
from radstack.errors import BadRequest, NotFound
from radstack.store.blobs import content_key
from radstack.store.records import BatchReason, InstanceRecord
from radstack.store.studies import StudyStore

__all__ = ["delete", "revert", "update_attributes"]

#: Identifying attributes that an update may not change: they define where an instance lives.
_IMMUTABLE = frozenset(
    f"{int(Tag(k)):08X}" for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
)
#: An update may change patient, study and series attributes (not the pixel module or UIDs).
_UPDATABLE = (frozenset(STUDY_LEVEL_TAGS) | frozenset(SERIES_LEVEL_TAGS)) - _IMMUTABLE


def delete(
    store: StudyStore, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
) -> int:
    """Remove a study, series or instance from the current view; returns the new study version.

    Raises
    ------
    NotFound
        When the study, series or instance is not stored, or holds no current instance.
    """
    records = store.current_instances(study_uid, series_uid, sop_uid)
    what = sop_uid or series_uid or study_uid
    with store.batch(BatchReason.DELETE, what) as batch:
        return store.replace_instances(study_uid, batch, remove=records, add=[])


def revert(store: StudyStore, study_uid: str, version: int) -> int:
    """Make the content of ``version`` current again, as a new version; returns its number.

    Raises
    ------
    NotFound
        When the study was never stored or has no such version.
    """
    study = store.require_study(study_uid, include_deleted=True)
    if not 0 < version <= study.version:
        raise NotFound(f"study {study_uid} has no version {version} (latest is {study.version})")
    target = {r.id: r for r in store.list_instances(study_uid, version=version)}
    current = {r.id: r for r in store.list_instances(study_uid)}
    with store.batch(BatchReason.REVERT, f"to version {version}") as batch:
        return store.replace_instances(
            study_uid,
            batch,
            remove=[r for i, r in current.items() if i not in target],
            add=[r for i, r in target.items() if i not in current],
        )


def _tag_of(name: str) -> str:
    """Keyword or 8-hex-digit tag → tag string.

    Raises
    ------
    BadRequest
        Naming ``name`` when it is neither a DICOM keyword nor a tag.
    """
    text = name.strip()
    if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.upper()
    tag = tag_for_keyword(text)
    if tag is None:
        raise BadRequest(f"attribute {name!r} is neither a DICOM keyword nor a tag")
    return f"{tag:08X}"


def update_attributes(
    store: StudyStore, study_uid: str, changes: dict[str, Any], series_uid: str | None = None
) -> int:
    """Set patient/study/series attributes on every current instance in scope, as a new version.

    ``changes`` maps keywords or tags to a value (``None`` or ``""`` empties the attribute).

    Raises
    ------
    BadRequest
        For no attributes, an unknown attribute, one that may not be updated (UIDs, pixel module,
        instance level), or a value pydicom cannot encode.
    NotFound
        When the series is not stored in the study, or the study (or series) holds no current instance.
    OutOfResources
        When the blob store cannot take the new headers.
    """
    if not changes:
        raise BadRequest("no attributes to update")
    tags = {_tag_of(name): value for name, value in changes.items()}
    refused = [t for t in tags if t not in _UPDATABLE]
    if refused:
        raise BadRequest(
            f"attributes {', '.join(refused)} cannot be updated; only patient, study and series attributes "
            "other than UIDs can"
        )
    if series_uid is not None:
        store.require_series(study_uid, series_uid)
    records = store.list_instances(study_uid, series_uid)
    if not records:
        raise NotFound(f"study {study_uid} holds no instances to update")
    replacements: list[InstanceRecord] = []
    for record in records:
        header = pydicom.dcmread(io.BytesIO(store.blobs.get(record.header_key)))
        for tag_text, value in tags.items():
            tag = int(tag_text, 16)
            if value is None or value == "":
                header.add_new(tag, dictionary_VR(tag), None)
            else:
                try:
                    header.add_new(tag, dictionary_VR(tag), value)
                except (ValueError, TypeError) as exc:
                    raise BadRequest(f"value {value!r} does not fit attribute {tag_text}: {exc}") from None
        header_bytes, dataset_bytes = encode_header(header)
        attrs, json_bytes = instance_json(header, record.pixel)
        digest = hashlib.sha256(dataset_bytes)
        for key in record.frames:
            digest.update(key.encode())
        header_key = content_key("h", header_bytes)
        json_key = content_key("j", json_bytes)
        store.blobs.put(header_key, header_bytes)
        store.blobs.put(json_key, json_bytes)
        # The same frames under a new header; no object of this content was received (size 0).
        replacements.append(
            replace(
                record,
                attrs=attrs,
                content_hash=digest.hexdigest(),
                header_key=header_key,
                json_key=json_key,
                size_bytes=0,
                id=None,
                version_added=None,
            )
        )
    with store.batch(BatchReason.UPDATE, ",".join(sorted(tags))) as batch:
        return store.replace_instances(study_uid, batch, remove=records, add=replacements)
