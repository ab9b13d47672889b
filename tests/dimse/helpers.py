"""DIMSE test helpers: pynetdicom peers of the server under test, WADO read-back, a dcmtk storescp."""

from __future__ import annotations

import io
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from tests import authed
from tests.conftest import RunningServer, free_port, require_binary
from tests.helpers import instance_url, response_parts

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
VERIFICATION = "1.2.840.10008.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
QUERY_RETRIEVE = (PATIENT_FIND, PATIENT_MOVE, PATIENT_GET, STUDY_FIND, STUDY_MOVE, STUDY_GET)

Context = tuple[str, list[str]]


def no_delay(event: Any) -> None:
    """TCP_NODELAY on a pynetdicom socket: without it each small request waits ~40 ms for the
    server's delayed acknowledgement (Nagle's algorithm)."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@contextmanager
def association(
    server: RunningServer,
    contexts: Iterable[Context | str],
    *,
    calling: str = "TESTSCU",
    roles: Iterable[str] = (),
    handlers: list[tuple[Any, Callable[..., Any]]] | None = None,
) -> Iterator[Association]:
    """An established association with the server under test, released at the end.

    ``contexts`` are SOP class UIDs (default transfer syntaxes) or (UID, [syntaxes]); ``roles``
    names the SOP classes for which this side proposes the SCP role (C-GET).
    """
    ae = AE(ae_title=calling)
    for context in contexts:
        if isinstance(context, str):
            ae.add_requested_context(context)
        else:
            ae.add_requested_context(context[0], context[1])
    assoc = ae.associate(
        "127.0.0.1",
        server.dicom_port,
        ae_title=server.platform.settings.ae_title,
        ext_neg=[build_role(uid, scp_role=True) for uid in roles],
        evt_handlers=[(evt.EVT_CONN_OPEN, no_delay), *(handlers or [])],
    )
    assert assoc.is_established, "association with the server under test was not established"
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def store(server: RunningServer, *datasets: Dataset, calling: str = "TESTSCU") -> list[Dataset]:
    """C-STORE ``datasets`` on one association, each in the syntax of its file meta; the statuses."""
    contexts: dict[tuple[str, str], None] = {}
    for ds in datasets:
        contexts[(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))] = None
    with association(server, [(sop, [syntax]) for sop, syntax in contexts], calling=calling) as assoc:
        return [assoc.send_c_store(ds) for ds in datasets]


def read_back(server: RunningServer, ds: Dataset, syntax: str = EXPLICIT_LE) -> Dataset:
    """The stored instance of ``ds`` as WADO-RS returns it in ``syntax``."""
    response = authed.get(
        instance_url(server, ds),
        headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={syntax}'},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    [(_content_type, data)] = response_parts(response)
    return pydicom.dcmread(io.BytesIO(data))


def pixels(ds: Dataset) -> NDArray[Any]:
    return np.asarray(ds.pixel_array)


def query(**keys: object) -> Dataset:
    """A C-FIND/C-GET/C-MOVE identifier from keywords (``None`` or ``""``: a return key; bytes:
    the raw value as sent, even one that is not valid in the element's VR)."""
    ds = Dataset()
    with warnings.catch_warnings():
        # Wildcards, ranges and deliberately bad values are not valid values of their VR to pydicom.
        warnings.simplefilter("ignore", UserWarning)
        for keyword, value in keys.items():
            if isinstance(value, bytes):
                tag = Tag(keyword)
                ds[tag] = RawDataElement(tag, None, len(value), value, 0, True, True)  # implicit VR LE
            else:
                setattr(ds, keyword, None if value == "" else value)
    return ds


def storage_contexts(*sop_classes: str, syntaxes: list[str] | None = None) -> list[PresentationContext]:
    return [build_context(uid, syntaxes or [EXPLICIT_LE, IMPLICIT_LE]) for uid in sop_classes]


class StorageSCP:
    """A pynetdicom Storage SCP: a C-MOVE destination that records what it receives.

    ``refuse`` names SOP Instance UIDs answered with 0xA700 (out of resources).
    """

    def __init__(self, ae_title: str = "PYSCP", syntaxes: list[str] | None = None) -> None:
        self.ae_title = ae_title
        self.received: list[Dataset] = []
        self.refuse: set[str] = set()
        self._ae = AE(ae_title=ae_title)
        self._ae.add_supported_context(VERIFICATION)
        for uid in (CT_STORAGE, MR_STORAGE):
            self._ae.add_supported_context(uid, syntaxes or [EXPLICIT_LE, IMPLICIT_LE])
        self.port = free_port()
        server = self._ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        assert server is not None  # non-blocking: pynetdicom returns the running server
        self._server = server

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        if str(ds.SOPInstanceUID) in self.refuse:
            return 0xA700
        self.received.append(ds)
        return 0x0000

    def close(self) -> None:
        self._server.shutdown()


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextmanager
def storescp(directory: Path, ae_title: str = "STORESCP") -> Iterator[int]:
    """dcmtk's storescp as a real process on a free port, preferring explicit VR little endian
    (``+xe``) and writing what it receives to ``directory``; yields its port."""
    binary = require_binary("storescp")
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    log = (directory.parent / "storescp.log").open("wb")
    process = subprocess.Popen(
        [binary, "+xe", "-aet", ae_title, "-od", str(directory), str(port)], stdout=log, stderr=log
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def run_tool(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool (first argument: its name), capturing its output."""
    binary = require_binary(args[0])
    return subprocess.run([binary, *args[1:]], capture_output=True, text=True, timeout=timeout, check=False)
