"""The fast raw-element DICOM JSON encoder must agree with pydicom's own conversion on real files."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from radstack.dicom.json_model import dataset_to_json
from tests.dicomweb.test_corpus import corpus

BASE = "/dicomweb/studies/1/series/2/instances/3/bulkdata"


def _parsed(ds: Dataset) -> Dataset:
    """A copy whose every element has been parsed by pydicom (so the slow path is taken)."""
    parsed = copy.deepcopy(ds)
    for elem in parsed.iterall():
        _ = elem.value
    return parsed


@pytest.mark.parametrize("path", corpus(), ids=lambda p: p.name)
def test_fast_json_matches_pydicom(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True)
        try:
            slow = dataset_to_json(_parsed(ds), BASE)
        except Exception:
            pytest.skip("pydicom itself cannot parse every element of this file")
        fast = dataset_to_json(pydicom.dcmread(path, force=True), BASE)
    assert fast == slow
