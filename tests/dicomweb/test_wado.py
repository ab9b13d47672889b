"""WADO-RS: transfer-syntax negotiation, metadata, frames, progressive access, rendered (PS3.18 §10.4)."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator

import httpx
import imagecodecs
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from radstack.dicomweb.multipart import parse_media_type
from tests import authed
from tests.conftest import RunningServer
from tests.helpers import dicom_body, instance_url, response_parts, stow, synthetic_ct

EXPLICIT_LE = "1.2.840.10008.1.2.1"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"


def multiframe(frames: int = 5, rows: int = 64, columns: int = 48) -> Dataset:
    """A synthetic 16-bit multi-frame image whose frames all differ."""
    ds = copy.deepcopy(pydicom.dcmread(str(get_testdata_file("CT_small.dcm"))))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    yy, xx = np.mgrid[:rows, :columns]
    cube = np.stack([((xx * (f + 1) + yy * 7) % 4096) for f in range(frames)]).astype(np.uint16)
    ds.PixelData = cube.tobytes()
    return ds


@pytest.fixture
def ct(server: RunningServer) -> Iterator[Dataset]:
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    DICOMwebClient(server.dicomweb, headers=server.auth).store_instances([ds])
    yield ds


@pytest.mark.parametrize(
    ("accept", "syntax"),
    [
        ('multipart/related; type="application/dicom"', EXPLICIT_LE),
        ("*/*", EXPLICIT_LE),
        ('multipart/related; type="application/dicom"; transfer-syntax=*', HTJ2K_RPCL),
        (f'multipart/related; type="application/dicom"; transfer-syntax={HTJ2K_RPCL}', HTJ2K_RPCL),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.201',
            "1.2.840.10008.1.2.4.201",
        ),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90',
            "1.2.840.10008.1.2.4.90",
        ),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2',
            "1.2.840.10008.1.2",
        ),
        (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50, '
            f'multipart/related; type="application/dicom"; transfer-syntax={HTJ2K_RPCL}; q=0.5',
            HTJ2K_RPCL,
        ),
    ],
)
def test_instance_negotiation(server: RunningServer, ct: Dataset, accept: str, syntax: str) -> None:
    response = authed.get(instance_url(server, ct), headers={"Accept": accept})
    assert response.status_code == 200
    [(content_type, data)] = response_parts(response)
    assert parse_media_type(content_type)[1]["transfer-syntax"] == syntax
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(back.pixel_array, ct.pixel_array)
    assert back.PatientName == ct.PatientName


def test_lossy_input_served_byte_for_byte(server: RunningServer) -> None:
    original = pydicom.dcmread(str(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")))
    DICOMwebClient(server.dicomweb, headers=server.auth).store_instances([original])
    stored = authed.get(
        instance_url(server, original),
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    back = pydicom.dcmread(io.BytesIO(response_parts(stored)[0][1]))
    assert back.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert list(generate_frames(back.PixelData, number_of_frames=1)) == list(
        generate_frames(original.PixelData, number_of_frames=1)
    )
    frame = authed.get(
        f"{instance_url(server, original)}/frames/1",
        headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
    )
    [(content_type, data)] = response_parts(frame)
    assert content_type.startswith("image/jpeg")
    assert data == next(generate_frames(original.PixelData, number_of_frames=1))


@pytest.mark.parametrize(
    ("accept", "asked"),
    [
        (
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50',
            "1.2.840.10008.1.2.4.50",  # JPEG baseline cannot carry 16-bit CT
        ),
        ('multipart/related; type="application/pdf"', "application/pdf"),
    ],
)
def test_unsatisfiable_accept_is_406(server: RunningServer, ct: Dataset, accept: str, asked: str) -> None:
    response = authed.get(instance_url(server, ct), headers={"Accept": accept})
    assert response.status_code == 406
    assert response.headers["content-type"] == "application/problem+json"
    detail = response.json()["detail"]
    assert asked in detail, "the message names what was asked for"
    assert 'type="application/dicom"' in detail and EXPLICIT_LE in detail, "and what is available"


def test_metadata_at_every_level(server: RunningServer, ct: Dataset) -> None:
    base = f"{server.dicomweb}/studies/{ct.StudyInstanceUID}"
    for url in (
        f"{base}/metadata",
        f"{base}/series/{ct.SeriesInstanceUID}/metadata",
        f"{instance_url(server, ct)}/metadata",
    ):
        for encoding in ("gzip", "identity"):
            response = authed.get(url, headers={"Accept-Encoding": encoding})
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/dicom+json"
            assert (response.headers.get("content-encoding") == "gzip") == (
                encoding == "gzip" and "instances" not in url
            )
            [item] = response.json()
            assert item["00080018"]["Value"] == [ct.SOPInstanceUID]
            assert item["00100010"]["Value"][0]["Alphabetic"] == str(ct.PatientName)
            assert item["7FE00010"]["BulkDataURI"].endswith(
                f"/instances/{ct.SOPInstanceUID}/bulkdata/7FE00010"
            )


def test_frames_single_list_and_errors(server: RunningServer) -> None:
    ds = multiframe()
    DICOMwebClient(server.dicomweb, headers=server.auth).store_instances([ds])
    cube = np.frombuffer(ds.PixelData, dtype="<u2").reshape(5, ds.Rows, ds.Columns)
    url = f"{instance_url(server, ds)}/frames"
    response = authed.get(
        f"{url}/1,3,5", headers={"Accept": 'multipart/related; type="application/octet-stream"'}
    )
    assert response.status_code == 200
    got = [
        np.frombuffer(data, dtype="<u2").reshape(ds.Rows, ds.Columns) for _t, data in response_parts(response)
    ]
    assert [np.array_equal(g, cube[i]) for g, i in zip(got, (0, 2, 4), strict=True)] == [True] * 3
    stored = authed.get(
        f"{url}/2",
        headers={"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'},
    )
    [(content_type, data)] = response_parts(stored)
    assert content_type == f"image/jphc; transfer-syntax={HTJ2K_RPCL}"
    assert np.array_equal(imagecodecs.htj2k_decode(data), cube[1])
    bad = authed.get(f"{url}/0")
    assert bad.status_code == 400 and "'0'" in bad.json()["detail"]
    missing = authed.get(f"{url}/9")
    assert missing.status_code == 404 and "frame 9" in missing.json()["detail"]


def test_progressive_access_by_range_and_level(server: RunningServer) -> None:
    ds = multiframe(frames=1, rows=512, columns=384)
    DICOMwebClient(server.dicomweb, headers=server.auth).store_instances([ds])
    api = (
        f"{server.url}/api/v1/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/1"
    )
    levels = authed.get(f"{api}/levels").json()
    assert [level["level"] for level in levels] == list(range(len(levels)))
    assert [level["bytes"] for level in levels] == sorted(level["bytes"] for level in levels)
    assert (levels[-1]["columns"], levels[-1]["rows"]) == (384, 512)
    low = levels[2]
    ranged = authed.get(
        f"{instance_url(server, ds)}/frames/1",
        headers={"Accept": "image/jphc", "Range": f"bytes=0-{low['bytes'] - 1}"},
    )
    assert ranged.status_code == 206
    assert len(ranged.content) == low["bytes"]
    skip = len(levels) - 1 - low["level"]
    image = imagecodecs.htj2k_decode(ranged.content + b"\xff\xd9", skipres=skip)
    assert image.shape == (low["rows"], low["columns"])
    cut = authed.get(api, params={"level": 1})
    assert cut.headers["content-type"].startswith("image/jphc")
    assert imagecodecs.htj2k_decode(cut.content, skipres=len(levels) - 2).shape == (
        levels[1]["rows"],
        levels[1]["columns"],
    )
    assert authed.get(api, params={"level": 99}).status_code == 400


def test_rendered_and_thumbnail(server: RunningServer, ct: Dataset) -> None:
    url = instance_url(server, ct)
    jpeg = authed.get(f"{url}/rendered", params={"viewport": "64,32"}, headers={"Accept": "image/jpeg"})
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (32, 32), "aspect kept inside the viewport"
    narrow = authed.get(f"{url}/rendered", params={"window": "40,80"}, headers={"Accept": "image/png"})
    wide = authed.get(f"{url}/rendered", params={"window": "40,2000"}, headers={"Accept": "image/png"})
    assert narrow.headers["content-type"] == "image/png"
    assert (
        np.asarray(Image.open(io.BytesIO(narrow.content))).std()
        != np.asarray(Image.open(io.BytesIO(wide.content))).std()
    )
    thumb = authed.get(f"{server.dicomweb}/studies/{ct.StudyInstanceUID}/thumbnail")
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 128
    for params in ({"viewport": "0,10"}, {"window": "40"}, {"quality": "101"}):
        response = authed.get(f"{url}/rendered", params=params)
        assert response.status_code == 400
        assert next(iter(params.values())) in response.json()["detail"]


def test_invalid_pixel_spacing_is_served_as_absent_and_retrieved_as_received(server: RunningServer) -> None:
    """Pixel Spacing 0\\0 (common in CR/DX headers) is left out of the metadata viewers read, so
    OHIF treats the image as uncalibrated instead of drawing it black; the stored object is
    unchanged (docs/store.md)."""
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PixelSpacing = ["0.000", "0.000"]
    DICOMwebClient(server.dicomweb, headers=server.auth).store_instances([ds])
    base = f"{server.dicomweb}/studies/{ds.StudyInstanceUID}"
    for url in (f"{base}/metadata", f"{base}/series/{ds.SeriesInstanceUID}/metadata"):
        [item] = authed.get(url).json()
        assert item["00080018"]["Value"] == [ds.SOPInstanceUID]
        assert "00280030" not in item, url
        assert item["00280010"]["Value"] == [ds.Rows]
    [(_type, data)] = response_parts(
        authed.get(
            instance_url(server, ds), headers={"Accept": 'multipart/related; type="application/dicom"'}
        )
    )
    back = pydicom.dcmread(io.BytesIO(data))
    assert back["PixelSpacing"].value == [0, 0]
    assert b"0.000\\0.000" in data, "the header is retrieved as it was received"


@pytest.mark.parametrize(
    ("accept", "served"),
    [
        ("image/x-foo", "image/jpeg"),  # nothing offered is acceptable: the Default, not 406
        ("image/gif", "image/gif"),
        ("image/x-foo, image/gif;q=0.5", "image/gif"),  # the unsupported value is ignored
        ("image/webp, image/png;q=0.9, image/gif;q=0.8", "image/png"),
        ('multipart/related; type="image/png"', "image/jpeg"),
        ("image/*", "image/jpeg"),
        ("text/html;q=0.9, image/gif;q=0.2", "image/gif"),
    ],
)
def test_rendered_media_type_negotiation(
    server: RunningServer, ct: Dataset, accept: str, served: str
) -> None:
    """PS3.18 §8.7.7: unsupported Accept values are ignored; §8.3.3.1: then the Default, image/jpeg."""
    url = instance_url(server, ct)
    for resource in (f"{url}/rendered", f"{url}/frames/1/rendered", f"{url}/thumbnail"):
        response = authed.get(resource, headers={"Accept": accept})
        assert response.status_code == 200, (resource, response.text)
        assert response.headers["content-type"] == served
        image = Image.open(io.BytesIO(response.content))
        assert Image.MIME[image.format or ""] == served
        expected = (ct.Columns, ct.Rows) if not resource.endswith("thumbnail") else (128, 128)
        assert image.size == expected
        assert np.asarray(image.convert("L")).std() > 10, "an image, not a blank"


def test_monochrome1_renders_inverted(server: RunningServer, ct: Dataset) -> None:
    inverted = copy.deepcopy(ct)
    inverted.SOPInstanceUID = generate_uid()
    inverted.PhotometricInterpretation = "MONOCHROME1"
    DICOMwebClient(server.dicomweb, headers=server.auth).store_instances([inverted])
    params = {"window": "0,2000"}
    normal = np.asarray(
        Image.open(
            io.BytesIO(
                authed.get(
                    f"{instance_url(server, ct)}/rendered", params=params, headers={"Accept": "image/png"}
                ).content
            )
        )
    )
    flipped = np.asarray(
        Image.open(
            io.BytesIO(
                authed.get(
                    f"{instance_url(server, inverted)}/rendered",
                    params=params,
                    headers={"Accept": "image/png"},
                ).content
            )
        )
    )
    assert np.array_equal(flipped.astype(int), 255 - normal.astype(int))


def test_bulkdata(server: RunningServer, ct: Dataset) -> None:
    response = authed.get(f"{instance_url(server, ct)}/bulkdata/7FE00010")
    [(content_type, data)] = response_parts(response)
    assert content_type == "application/octet-stream"
    assert np.array_equal(np.frombuffer(data, dtype="<i2").reshape(ct.Rows, ct.Columns), ct.pixel_array)
    assert authed.get(f"{instance_url(server, ct)}/bulkdata/00091001").status_code == 404


def test_render_cache_is_bounded_and_reuses_renderings() -> None:
    from radstack.dicomweb.wado import RenderCache

    cache = RenderCache(max_bytes=10)
    calls: list[str] = []

    def make(name: str, size: int) -> bytes:
        calls.append(name)
        return b"x" * size

    assert cache.get_or_render(("a",), lambda: make("a", 4)) == b"xxxx"
    assert cache.get_or_render(("a",), lambda: make("a", 4)) == b"xxxx"
    cache.get_or_render(("b",), lambda: make("b", 4))
    cache.get_or_render(("c",), lambda: make("c", 4))  # over 10 bytes: the oldest ("a") goes
    cache.get_or_render(("a",), lambda: make("a", 4))
    assert calls == ["a", "b", "c", "a"]


def test_series_metadata_lists_every_instance_with_bulk_data_uris(server: RunningServer) -> None:
    study, series = generate_uid(), generate_uid()
    datasets = [synthetic_ct(study=study, series=series, seed=n) for n in range(3)]
    blob = bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8))
    block = datasets[1].private_block(0x0009, "RADSTACK TEST", create=True)
    block.add_new(0x10, "OB", blob)
    assert stow(server, dicom_body(*datasets)).status_code == 200
    base = f"{server.dicomweb}/studies/{study}"
    for url in (f"{base}/metadata", f"{base}/series/{series}/metadata"):
        for encoding in ("gzip", "identity"):
            response = authed.get(url, headers={"Accept-Encoding": encoding})
            assert response.status_code == 200
            items = {item["00080018"]["Value"][0]: item for item in response.json()}
            assert sorted(items) == sorted(str(ds.SOPInstanceUID) for ds in datasets)
            for ds in datasets:
                pixel_uri = items[str(ds.SOPInstanceUID)]["7FE00010"]["BulkDataURI"]
                assert pixel_uri.endswith(f"/instances/{ds.SOPInstanceUID}/bulkdata/7FE00010")
            private = items[str(datasets[1].SOPInstanceUID)]["00091010"]
            assert private["vr"] == "OB" and "InlineBinary" not in private
    private_uri = authed.get(f"{instance_url(server, datasets[1])}/metadata").json()[0]["00091010"][
        "BulkDataURI"
    ]
    # root-relative (RFC 3986 §4.2): it resolves against the server the metadata came from
    [(_type, value)] = response_parts(authed.get(httpx.URL(server.url).join(private_uri)))
    assert value == blob
    [(_type, pixels)] = response_parts(authed.get(f"{instance_url(server, datasets[2])}/bulkdata/7FE00010"))
    assert pixels == datasets[2].PixelData


def test_frames_in_an_unavailable_media_type_are_406(server: RunningServer) -> None:
    ds = synthetic_ct()
    assert stow(server, dicom_body(ds)).status_code == 200
    response = authed.get(f"{instance_url(server, ds)}/frames/1", headers={"Accept": "image/jpeg"})
    assert response.status_code == 406
    detail = response.json()["detail"]
    assert "image/jpeg" in detail and "image/jphc" in detail and "application/octet-stream" in detail


def test_an_object_without_pixels_is_stored_and_served_whole(server: RunningServer) -> None:
    """A structured report (OHIF saves measurements as one) is kept whole and comes back whole."""
    report = pydicom.dcmread(str(get_testdata_file("test-SR.dcm")))
    response = stow(server, dicom_body(report))
    assert response.status_code == 200, response.text
    [match] = authed.get(
        f"{server.dicomweb}/studies/{report.StudyInstanceUID}/series", params={"Modality": "SR"}
    ).json()
    assert match["0020000E"]["Value"] == [str(report.SeriesInstanceUID)]
    [(_type, data)] = response_parts(
        authed.get(
            instance_url(server, report), headers={"Accept": 'multipart/related; type="application/dicom"'}
        )
    )
    back = pydicom.dcmread(io.BytesIO(data))
    assert back.ContentSequence == report.ContentSequence
    assert back.ConceptNameCodeSequence[0].CodeMeaning == report.ConceptNameCodeSequence[0].CodeMeaning
    assert "PixelData" not in back
