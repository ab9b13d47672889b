"""C-STORE under a seeded mutation fuzz: a malformed data set is answered with radstack's own failure
status and an Error Comment that names the problem, never pynetdicom's 0xC211 "unhandled exception"
(PS3.4 §B.2.3), and the association goes on serving."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pynetdicom import _config

from tests.conftest import RunningServer
from tests.dimse.helpers import association, pixels, read_back
from tests.fuzz import mutants, with_unknown_vr
from tests.helpers import part10, synthetic_ct

SEED = 11
COUNT = 100
_SUCCESS = (0x0000, 0xB000)
_OWN_FAILURES = (0xA900, 0xC000, 0xC122)


def test_mutated_data_sets_get_radstack_statuses(
    server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pynetdicom sends a file's data set as it is on disk, without decoding it first.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    files: list[tuple[str, Path, tuple[str, str]]] = []
    for number, mutant in enumerate(mutants(SEED, COUNT, keep_meta=True)):
        path = tmp_path / f"{number:03d}.dcm"
        path.write_bytes(mutant.data)
        meta = pydicom.dcmread(DicomBytesIO(mutant.data[: mutant.dataset_start])).file_meta
        context = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        files.append((mutant.label, path, context))
    before = synthetic_ct(patient_name="Stored^Before")
    good = tmp_path / "good.dcm"
    good.write_bytes(part10(before))
    contexts = sorted(
        {context for _label, _path, context in files} | {(str(before.SOPClassUID), "1.2.840.10008.1.2.1")}
    )
    assert len(contexts) <= 128, "one association proposes at most 128 presentation contexts (PS3.8 §9.3.2.2)"

    statuses: dict[int, int] = {}
    with association(server, [(sop, [syntax]) for sop, syntax in contexts]) as assoc:
        assert assoc.send_c_store(good).Status == 0x0000
        for label, path, _context in files:
            try:
                status = assoc.send_c_store(path)
            except ValueError:
                continue  # the server did not accept this presentation context
            assert "Status" in status, f"{label}: no response (the association was aborted?)"
            code = int(status.Status)
            statuses[code] = statuses.get(code, 0) + 1
            assert code != 0xC211, f"{label}: pynetdicom's unhandled-exception status"
            assert code in (*_SUCCESS, *_OWN_FAILURES), f"{label}: status 0x{code:04X}"
            if code not in _SUCCESS:
                comment = str(status.get("ErrorComment", ""))
                assert comment, f"{label}: 0x{code:04X} without an Error Comment"
                assert "force=True" not in comment, label
        assert assoc.is_established, "the association survived every mutant"
    assert sum(statuses.values()) > COUNT * 3 // 4, f"most mutants are sent: {statuses}"
    assert sum(statuses.get(c, 0) for c in _OWN_FAILURES) > COUNT // 4, statuses
    assert (pixels(read_back(server, before)) == pixels(before)).all(), "what was stored before is intact"


def test_an_unknown_vr_gets_an_error_comment_naming_it(
    server: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ds = synthetic_ct()
    path = tmp_path / "unknown-vr.dcm"
    path.write_bytes(with_unknown_vr(part10(ds), "PatientName"))
    with association(server, [(str(ds.SOPClassUID), ["1.2.840.10008.1.2.1"])]) as assoc:
        status = assoc.send_c_store(path)
    assert status.Status == 0xC000
    assert str(status.ErrorComment).startswith("element (0010,0010) has an unknown VR 'ZZ'")
