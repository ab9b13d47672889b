"""De-identification (PS3.15 Annex E) and attribute filtering, on every file of pydicom's test data.

What a data-scientist role must never see is checked where it would leak: in the bytes of the
rebuilt Part-10 file, in the DICOM JSON a QIDO or metadata request returns, and in both forms alike.
"""

from __future__ import annotations

import copy
import datetime
import functools
import io
import json
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_description, dictionary_has_tag
from pydicom.dataset import Dataset

from radstack.dicom import deid
from radstack.dicom.attributes import parse_attribute
from radstack.dicom.deid import Deidentifier, PrivateTag, ProfileActionValues, basic_profile_action
from radstack.dicom.json_model import dataset_to_json
from radstack.dicom.uids import is_valid_uid
from radstack.security.attribute_filter import AttributeFilter

pytestmark = pytest.mark.filterwarnings("ignore:VR lookup failed:UserWarning")

SECRET = b"radstack-test-secret-0123456789ab"
BASE = "/dicomweb/studies/1.2.3/series/4.5.6/instances/7.8.9/bulkdata"
#: Attributes whose original values must not survive de-identification anywhere.
IDENTIFYING = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
)


def _test_data_roots() -> list[Path]:
    ct_small = get_testdata_file("CT_small.dcm")
    assert ct_small is not None
    roots = [Path(ct_small).parent, Path(ct_small).parent.parent / "charset_files"]
    try:
        import data_store  # pydicom-data: real CR, CT, MR and more

        roots.append(Path(data_store.__file__).parent / "data")
    except ImportError:
        pass
    return roots


@functools.cache
def corpus() -> tuple[Path, ...]:
    """Every DICOM file of pydicom's bundled test data and of pydicom-data that pydicom reads."""
    files = []
    for root in _test_data_roots():
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.suffix in (".json", ".txt", ".dump", ".gz", ".icc", ".py"):
                continue
            try:
                ds = _read(path)
            except Exception:
                continue
            if len(ds):
                files.append(path)
    return tuple(files)


def _read(path: Path) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def _name(path: Path) -> str:
    for root in _test_data_roots():
        if path.is_relative_to(root):
            return f"{root.name}/{path.relative_to(root)}"
    return path.name


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def _identifiers(ds: Dataset) -> set[str]:
    """Original values of the identifying attributes, wherever they occur (sequences too)."""
    found: set[str] = set()
    elements = list(ds.iterall()) + list(getattr(ds, "file_meta", Dataset()))
    keywords = {*IDENTIFYING, "MediaStorageSOPInstanceUID"}
    for elem in elements:
        if elem.keyword not in keywords or elem.value in (None, ""):
            continue
        values = elem.value if elem.VM > 1 else [elem.value]
        for value in values:
            text = str(value).strip(" \0")
            parts = [text, *text.split("=")] if elem.VR == "PN" else [text]
            # Short values (Patient ID "0010") turn up by chance in any header, in a shifted date
            # for one: they are checked attribute by attribute instead.
            found.update(p for p in parts if len(p) >= 6)
    return found


def _without_bulk(doc: dict[str, Any]) -> dict[str, Any]:
    """A JSON object with every BulkDataURI blanked (the two forms build them differently)."""
    out: dict[str, Any] = {}
    for key, element in doc.items():
        element = dict(element)
        if "BulkDataURI" in element:
            element["BulkDataURI"] = "<bulk>"
        if element.get("vr") == "SQ" and "Value" in element:
            element["Value"] = [_without_bulk(item) for item in element["Value"]]
        out[key] = element
    return out


@pytest.fixture(scope="module")
def deidentifier() -> Deidentifier:
    return Deidentifier(SECRET)


@pytest.fixture(scope="module")
def ct_small() -> Dataset:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    return _read(Path(path))


def test_corpus_is_the_whole_test_data() -> None:
    # A test that found no files could not fail: make sure the corpus is what it claims.
    names = {_name(p) for p in corpus()}
    assert len(names) > 150
    assert {"test_files/CT_small.dcm", "test_files/rtstruct.dcm", "charset_files/chrH31.dcm"} <= names


# -- every file ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", corpus(), ids=_name)
def test_part10_carries_no_identifier(path: Path, deidentifier: Deidentifier) -> None:
    # Read from another copy: parsing an element (even ds.get) can change how a data set is written.
    fresh = _read(path)
    secrets, key = _identifiers(fresh), str(fresh.get("PatientID", ""))
    ds = _read(path)
    try:
        before: bytes | None = _part10(ds)
    except Exception:
        before = None  # a few test files are malformed beyond what pydicom writes back

    out = deidentifier.apply_dataset(ds, patient_key=key)

    # The input is untouched: it writes the same bytes as before, or equals a fresh read.
    if before is not None:
        assert _part10(ds) == before
    else:
        assert ds == _read(path)

    try:
        written = _part10(out)
    except Exception:
        assert before is None, "the de-identified data set cannot be written though its input can"
        written = json.dumps(dataset_to_json(out, BASE), ensure_ascii=False).encode("utf-8")
    else:
        back = pydicom.dcmread(io.BytesIO(written), force=True)
        assert back.get("PatientIdentityRemoved") == "YES"
        if "PixelData" in ds:
            assert back.PixelData == ds.PixelData
        assert back.get("SOPClassUID") == ds.get("SOPClassUID")
        meta, back_meta = getattr(ds, "file_meta", Dataset()), getattr(back, "file_meta", Dataset())
        for keyword in ("TransferSyntaxUID", "MediaStorageSOPClassUID"):
            assert back_meta.get(keyword) == meta.get(keyword)
        if "MediaStorageSOPInstanceUID" in meta and meta.MediaStorageSOPInstanceUID == ds.get(
            "SOPInstanceUID"
        ):
            assert back_meta.MediaStorageSOPInstanceUID == back.SOPInstanceUID

    # Pixel data is kept byte for byte; take it out so that a chance match in pixels is no leak.
    haystack = written.replace(bytes(out.PixelData), b"") if "PixelData" in out else written
    for secret in secrets:
        for encoding in ("utf-8", "latin-1", "utf-16-le"):
            assert secret.encode(encoding, "replace") not in haystack, (secret, encoding)
    for keyword in IDENTIFYING:
        original = ds.get(keyword)
        if original not in (None, ""):
            assert out.get(keyword) != original, keyword


@pytest.mark.parametrize("path", corpus(), ids=_name)
def test_json_path_equals_dataset_path(path: Path, deidentifier: Deidentifier) -> None:
    ds = _read(path)
    key = str(ds.get("PatientID", ""))
    doc = dataset_to_json(_read(path), BASE)
    cached = copy.deepcopy(doc)

    from_json = deidentifier.apply_json(doc, key)
    from_dataset = dataset_to_json(deidentifier.apply_dataset(ds, key), BASE)

    assert _without_bulk(from_json) == _without_bulk(from_dataset)
    assert doc == cached  # a cached document is never changed

    role = AttributeFilter(
        deny=["PatientBirthDate", "PatientAddress", "OtherPatientIDsSequence", "CodeMeaning"]
    )
    assert role.apply_json(doc) == dataset_to_json(role.apply_dataset(ds), BASE)
    assert doc == cached


# -- consistency across files ----------------------------------------------------------------


def test_same_study_gets_same_pseudonymous_uid(deidentifier: Deidentifier) -> None:
    pseudonyms: dict[str, set[str]] = defaultdict(set)
    for path in corpus():
        ds = _read(path)
        if "StudyInstanceUID" in ds:
            out = deidentifier.apply_dataset(ds, str(ds.get("PatientID", "")))
            pseudonyms[str(ds.StudyInstanceUID)].add(str(out.StudyInstanceUID))
    assert sum(len(p) for p in pseudonyms.values()) == len(pseudonyms) > 20  # one pseudonym per study
    assert len({next(iter(p)) for p in pseudonyms.values()}) == len(pseudonyms)  # and no two alike


def test_a_patients_dates_move_together(deidentifier: Deidentifier) -> None:
    # Patient 77654033 of pydicom's DICOMDIR tests has a CR study (2001) and a CT study (1995).
    studies: dict[str, tuple[datetime.date, datetime.date]] = {}
    for path in corpus():
        if "77654033" not in path.parts:
            continue
        ds = _read(path)
        out = deidentifier.apply_dataset(ds, ds.PatientID)
        studies[ds.StudyInstanceUID] = (_date(ds.StudyDate), _date(out.StudyDate))
    assert len(studies) == 2
    (real_a, fake_a), (real_b, fake_b) = studies.values()
    assert real_a != real_b
    assert (
        fake_a - real_a
        == fake_b - real_b
        == datetime.timedelta(days=deidentifier.date_shift_days("77654033"))
    )
    assert fake_a - fake_b == real_a - real_b  # the interval between the studies is kept


def _date(text: str) -> datetime.date:
    return datetime.datetime.strptime(text, "%Y%m%d").date()


# -- keyed replacements ----------------------------------------------------------------------


def test_uid_is_a_valid_consistent_uuid_derived_uid(ct_small: Dataset) -> None:
    first, second, other = Deidentifier(SECRET), Deidentifier(SECRET), Deidentifier(SECRET[::-1])
    real = str(ct_small.StudyInstanceUID)
    fake = first.uid(real)
    assert fake == second.uid(real) == first.uid(real + "\0")
    assert fake != other.uid(real) and fake != first.uid(str(ct_small.SeriesInstanceUID))
    assert fake.startswith("2.25.") and is_valid_uid(fake) and len(fake) <= 64
    for path in corpus()[:40]:  # many inputs: always valid, never a leading zero
        ds = _read(path)
        for elem in ds.iterall():
            if elem.VR == "UI" and isinstance(elem.value, str) and elem.value:
                assert is_valid_uid(first.uid(elem.value))
    custom = Deidentifier(SECRET, uid_root="1.2.826.0.1.3680043.10")
    assert custom.uid(real).startswith("1.2.826.0.1.3680043.10.") and is_valid_uid(custom.uid(real))


def test_well_known_uids_are_kept(deidentifier: Deidentifier) -> None:
    path = get_testdata_file("rtstruct.dcm")
    assert path is not None
    ds = _read(Path(path))
    out = deidentifier.apply_dataset(ds, "p")
    for keyword in ("ReferencedSOPClassUID", "SOPClassUID"):
        before = [e.value for e in ds.iterall() if e.keyword == keyword]
        assert before and [e.value for e in out.iterall() if e.keyword == keyword] == before
    instances = [e.value for e in out.iterall() if e.keyword == "ReferencedSOPInstanceUID"]
    assert instances and all(v.startswith("2.25.") or v.startswith("1.2.840.10008.") for v in instances)
    assert deidentifier.uid("1.2.840.10008.1.2.4.50") == "1.2.840.10008.1.2.4.50"


def test_pseudonyms_and_date_shift(deidentifier: Deidentifier) -> None:
    name, patient_id = deidentifier.pseudonym("98890234", "name"), deidentifier.pseudonym("98890234", "id")
    assert name.startswith("ANON^") and patient_id.startswith("ANON-") and name[5:] != patient_id[5:]
    assert len(patient_id) <= 64 and deidentifier.pseudonym("98890234", "id") == patient_id
    assert Deidentifier(SECRET[::-1]).pseudonym("98890234", "id") != patient_id
    shifts = {deidentifier.date_shift_days(str(n)) for n in range(500)}
    assert all(-3650 <= s <= -365 for s in shifts) and len(shifts) > 300
    assert deidentifier.date_shift_days("77654033") == Deidentifier(SECRET).date_shift_days("77654033")


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="16"):
        Deidentifier(b"short")
    with pytest.raises(ValueError, match="uid_root"):
        Deidentifier(SECRET, uid_root="1.02.3")
    with pytest.raises(ValueError, match="PatientBirthDat"):
        AttributeFilter(deny=["PatientBirthDat"])
    with pytest.raises(ValueError, match="did you mean PatientBirthDate"):
        parse_attribute("PatientBirthDat")
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        AttributeFilter(deny=["SOPInstanceUID"])
    with pytest.raises(ValueError, match="PixelData"):
        AttributeFilter(deny=["(7FE0,0010)"])
    with pytest.raises(ValueError, match="odd group"):
        PrivateTag(0x0010, "ACME", 0x10)


# -- the profile itself ----------------------------------------------------------------------


def test_table_rows_name_real_attributes() -> None:
    assert len(deid._BASIC_PROFILE) > 600
    for tag in deid._BASIC_PROFILE:
        assert dictionary_has_tag(tag), f"{tag:08X}"
    X, Z, D, U = (ProfileActionValues(c) for c in "XZDU")
    expected = {
        "PatientName": (Z,),
        "PatientID": (Z, D),
        "PatientBirthDate": (Z,),
        "StudyInstanceUID": (U,),
        "InstitutionName": (X, Z, D),
        "ReferencedImageSequence": (X, Z, U),
        "OtherPatientIDsSequence": (X,),
    }
    for keyword, action in expected.items():
        assert basic_profile_action(parse_attribute(keyword)) == action, keyword
    assert basic_profile_action(0x60023000) == (X,)  # Overlay Data, any of the repeating groups
    assert basic_profile_action(0x00280010) is None  # Rows: not in the table, kept
    assert dictionary_description(0x00100010) == "Patient's Name"


def test_profile_actions_on_a_ct(deidentifier: Deidentifier, ct_small: Dataset) -> None:
    out = deidentifier.apply_dataset(ct_small, "1CT1")
    shift = datetime.timedelta(days=deidentifier.date_shift_days("1CT1"))
    assert str(out.PatientName) == deidentifier.pseudonym("1CT1", "name")
    assert out.PatientID == deidentifier.pseudonym("1CT1", "id")
    assert out.PatientBirthDate == "" and out.AccessionNumber == ""  # Z
    assert out.InstitutionName == deid.DUMMY_TEXT  # X/Z/D
    assert _date(out.StudyDate) == _date(ct_small.StudyDate) + shift
    assert _date(out.ContentDate) == _date(ct_small.ContentDate) + shift
    assert out.StudyTime == ct_small.StudyTime  # TM kept
    assert out.SOPInstanceUID == deidentifier.uid(ct_small.SOPInstanceUID)
    assert out.FrameOfReferenceUID == deidentifier.uid(ct_small.FrameOfReferenceUID)
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert not [e for e in out if e.tag.is_private]  # GEMS private groups are gone
    assert out.Rows == ct_small.Rows and (out.pixel_array == ct_small.pixel_array).all()
    codes = [(i.CodeValue, i.CodingSchemeDesignator) for i in out.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM"), ("113107", "DCM")]
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_allowed_private_attributes_are_kept(ct_small: Dataset) -> None:
    keep = PrivateTag(0x0009, "GEMS_IDEN_01", 0x01)
    deidentifier = Deidentifier(SECRET, keep_private=[keep])
    out = deidentifier.apply_dataset(ct_small, "1CT1")
    assert out[0x00090010].value == "GEMS_IDEN_01"
    assert out[0x00091001].value == ct_small[0x00091001].value
    assert 0x00091002 not in out and 0x00430010 not in out
    doc = deidentifier.apply_json(dataset_to_json(ct_small, BASE), "1CT1")
    assert {k for k in doc if int(k[:4], 16) & 1} == {"00090010", "00091001"}


def test_private_sequences_are_removed(deidentifier: Deidentifier) -> None:
    path = get_testdata_file("nested_priv_SQ.dcm")
    assert path is not None
    ds = _read(Path(path))
    assert any(e.tag.is_private for e in ds.iterall())
    assert not any(e.tag.is_private for e in deidentifier.apply_dataset(ds, "p").iterall())


def test_person_names_in_other_alphabets_do_not_survive(deidentifier: Deidentifier) -> None:
    for name in ("chrH31.dcm", "chrX1.dcm", "chrJapMulti.dcm"):
        path = next(p for p in corpus() if p.name == name)
        ds = _read(path)
        doc = deidentifier.apply_json(dataset_to_json(ds, BASE), "p")
        assert doc["00100010"]["Value"] == [{"Alphabetic": deidentifier.pseudonym("p", "name")}]
        text = json.dumps(doc, ensure_ascii=False)
        for group in str(ds.PatientName).split("="):
            for component in group.split("^"):
                assert component not in text, (name, component)


# -- query results (QIDO-RS, C-FIND) ---------------------------------------------------------


def test_query_result_forms(deidentifier: Deidentifier, ct_small: Dataset) -> None:
    doc = dataset_to_json(ct_small, BASE)
    study_uid, series_uid = str(ct_small.StudyInstanceUID), str(ct_small.SeriesInstanceUID)
    doc["00080020"] = {"vr": "DA", "Value": ["2019"]}  # partial date
    doc["00080021"] = {"vr": "DA", "Value": ["20190101-20191231"]}  # range
    doc["00080022"] = {"vr": "DA", "Value": ["20190101-"]}
    doc["0008002A"] = {"vr": "DT", "Value": ["20190101103000.5+0100"]}
    doc["00180015"] = {"vr": "CS"}  # present, no value
    doc["00100030"] = {"vr": "DA"}
    doc["00080058"] = {"vr": "UI", "Value": [study_uid, series_uid]}  # multi-valued
    doc["00081190"] = {"vr": "UR", "Value": [f"http://127.0.0.1:8080/dicomweb/studies/{study_uid}"]}
    cached = copy.deepcopy(doc)

    out = deidentifier.apply_json(doc, "1CT1")

    assert doc == cached
    assert (
        out["00080020"] == {"vr": "DA"}
        and out["00080021"] == {"vr": "DA"}
        and out["00080022"] == {"vr": "DA"}
    )
    shifted = datetime.date(2019, 1, 1) + datetime.timedelta(days=deidentifier.date_shift_days("1CT1"))
    assert out["0008002A"]["Value"] == [shifted.strftime("%Y%m%d") + "103000.5+0100"]
    assert out["00180015"] == {"vr": "CS"} and out["00100030"] == {"vr": "DA"}
    assert out["00080058"]["Value"] == [deidentifier.uid(study_uid), deidentifier.uid(series_uid)]
    assert out["00081190"]["Value"] == [
        f"http://127.0.0.1:8080/dicomweb/studies/{deidentifier.uid(study_uid)}"
    ]
    assert study_uid not in json.dumps(out)


def test_cfind_identifier_with_a_date_range(deidentifier: Deidentifier, ct_small: Dataset) -> None:
    identifier = Dataset()
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate"):
        setattr(identifier, keyword, ct_small.get(keyword))
    identifier.StudyDate = "20040101-20041231"
    out = deidentifier.apply_dataset(identifier, "1CT1")
    assert out.StudyDate == "" and out.StudyInstanceUID == deidentifier.uid(ct_small.StudyInstanceUID)
    assert identifier.StudyDate == "20040101-20041231"


def test_bulk_data_uris(deidentifier: Deidentifier, ct_small: Dataset) -> None:
    study, series, sop = ct_small.StudyInstanceUID, ct_small.SeriesInstanceUID, ct_small.SOPInstanceUID
    base = f"http://127.0.0.1:8080/dicomweb/studies/{study}/series/{series}/instances/{sop}/bulkdata"
    doc = dataset_to_json(ct_small, base)
    assert doc["7FE00010"]["BulkDataURI"] == f"{base}/7FE00010"

    out = deidentifier.apply_json(doc, "1CT1")
    u = deidentifier.uid
    assert out["7FE00010"]["BulkDataURI"] == (
        f"http://127.0.0.1:8080/dicomweb/studies/{u(study)}/series/{u(series)}/instances/{u(sop)}/bulkdata/7FE00010"
    )
    hooked = deidentifier.apply_json(
        doc, "1CT1", rewrite_uri=lambda uri: "urn:frame:" + uri.rsplit("/", 1)[1]
    )
    assert hooked["7FE00010"]["BulkDataURI"] == "urn:frame:7FE00010"

    path = get_testdata_file("examples_overlay.dcm")
    assert path is not None
    overlaid = dataset_to_json(_read(Path(path)), base)
    assert overlaid["60003000"]["BulkDataURI"]
    assert "60003000" not in deidentifier.apply_json(overlaid, "p")  # removed with its bulk data (X)


# -- per-role attribute filter ---------------------------------------------------------------


def test_filter_denies_everywhere_and_keeps_the_image(ct_small: Dataset) -> None:
    path = get_testdata_file("rtstruct.dcm")
    assert path is not None
    rtstruct = _read(Path(path))
    role = AttributeFilter(deny=["PatientBirthDate", "(0010,1040)", "OtherPatientIDsSequence", "ROIName"])
    assert parse_attribute("PatientAddress") in role.deny
    out = role.apply_dataset(rtstruct)
    assert "PatientBirthDate" not in out and "PatientName" in out
    assert [e for e in rtstruct.iterall() if e.keyword == "ROIName"]
    assert not [e for e in out.iterall() if e.keyword == "ROIName"]
    assert "ROIName" in rtstruct.StructureSetROISequence[0]  # the input keeps everything

    only = AttributeFilter(allow=["Modality", "StudyDate"])
    shown = only.apply_dataset(ct_small)
    assert "PatientName" not in shown and shown.Modality == "CT" and shown.StudyDate == ct_small.StudyDate
    assert (
        shown.SOPInstanceUID == ct_small.SOPInstanceUID
        and shown.StudyInstanceUID == ct_small.StudyInstanceUID
    )
    assert (shown.pixel_array == ct_small.pixel_array).all()  # the image still decodes
    assert "PatientName" in ct_small
    assert set(only.apply_json(dataset_to_json(ct_small, BASE))) == set(dataset_to_json(shown, BASE))
