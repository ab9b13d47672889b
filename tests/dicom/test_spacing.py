"""Invalid spacing is served as absent (radstack.dicom.spacing); valid spacing is untouched."""

from __future__ import annotations

from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

from radstack.dicom.header import instance_json
from radstack.dicom.spacing import valid_spacing, without_invalid_spacing


@pytest.mark.parametrize(
    ("element", "multiplicity", "valid"),
    [
        ({"vr": "DS", "Value": [0.139, 0.139]}, 2, True),
        ({"vr": "DS", "Value": ["0.5", "0.25"]}, 2, True),
        ({"vr": "DS"}, 2, True),  # Type 2, sent empty: claims nothing
        ({"vr": "DS", "Value": [0.0, 0.0]}, 2, False),  # RG1's 0.000\0.000
        ({"vr": "DS", "Value": [0.2, 0.0]}, 2, False),
        ({"vr": "DS", "Value": [-0.2, 0.2]}, 2, False),
        ({"vr": "DS", "Value": [0.2]}, 2, False),  # wrong multiplicity
        ({"vr": "DS", "Value": [0.2, 0.2, 0.2]}, 2, False),
        ({"vr": "DS", "Value": ["nan", "0.2"]}, 2, False),
        ({"vr": "DS", "Value": ["inf", "0.2"]}, 2, False),
        ({"vr": "DS", "Value": ["abc", "0.2"]}, 2, False),
        ({"vr": "DS", "Value": [None, 0.2]}, 2, False),
        ({"vr": "UN", "InlineBinary": "MC4wXDA="}, 2, False),  # kept raw: unparsable
        ({"vr": "DS", "Value": [0.0]}, 1, False),
        ({"vr": "DS", "Value": [1.2]}, 1, True),
    ],
)
def test_valid_spacing(element: dict[str, Any], multiplicity: int, valid: bool) -> None:
    assert valid_spacing(element, multiplicity) is valid


def test_only_the_invalid_attributes_are_left_out() -> None:
    attrs = {
        "00080060": {"vr": "CS", "Value": ["CR"]},
        "00181114": {"vr": "DS", "Value": [1.1]},
        "00181164": {"vr": "DS", "Value": [0.15, 0.15]},
        "00280030": {"vr": "DS", "Value": [0.0, 0.0]},
    }
    served = without_invalid_spacing(attrs)
    assert "00280030" not in served
    assert served == {k: v for k, v in attrs.items() if k != "00280030"}
    assert "00280030" in attrs, "the caller's object is not changed"
    valid = {k: v for k, v in attrs.items() if k != "00280030"}
    assert without_invalid_spacing(valid) is valid


def test_instance_json_of_a_zero_spacing_radiograph() -> None:
    """The one place the served DICOM JSON is built applies the rule; the header keeps the value."""
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.PixelSpacing = ["0.000", "0.000"]
    ds.ImagerPixelSpacing = ["0.143", "0.143"]
    attrs, encoded = instance_json(ds, None)
    assert "00280030" not in attrs and b'"00280030"' not in encoded
    assert attrs["00181164"]["Value"] == [0.143, 0.143]
    assert ds.PixelSpacing == [0, 0]
