"""The DICOM service is built from the services it uses (store, policy, views, audit, …), not from
the whole platform: the platform assembles it, and anything else can too."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE

from radstack.config import Settings
from radstack.dimse.scp import DimseConfig, DimseServer
from radstack.platform import Platform
from tests.conftest import free_port
from tests.dimse.helpers import STUDY_FIND, query
from tests.helpers import synthetic_ct


def test_no_dicom_port_means_no_dicom_service(tmp_path: Path) -> None:
    platform = Platform.open(Settings(data_dir=tmp_path, dicom_port=0, ingest_processes=0))
    try:
        assert platform.dimse_server() is None
    finally:
        platform.close()


def test_a_service_from_its_parts_stores_finds_and_refuses_strangers(tmp_path: Path) -> None:
    platform = Platform.open(Settings(data_dir=tmp_path, ingest_processes=0))
    port = free_port()
    config = DimseConfig(
        ae_title="PARTS",
        host="127.0.0.1",
        port=port,
        allowed_calling_aes=("MODALITY",),
        default_role="technologist",
    )
    server = DimseServer(
        config,
        store=platform.store,
        peers=platform.peers,
        accounts=platform.accounts,
        policy=platform.policy,
        views=platform.view,
        audit=platform.audit,
        ingest_options=platform.ingest_options,
    )
    server.start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.add_requested_context(STUDY_FIND)
        assoc = ae.associate("127.0.0.1", server.port, ae_title="PARTS")
        assert assoc.is_established
        ct = synthetic_ct(rows=8, columns=8)
        assert assoc.send_c_store(ct).Status == 0x0000
        found = [
            identifier
            for status, identifier in assoc.send_c_find(
                query(QueryRetrieveLevel="STUDY", StudyInstanceUID=ct.StudyInstanceUID, RetrieveAETitle=""),
                STUDY_FIND,
            )
            if status and status.Status == 0xFF00 and identifier is not None
        ]
        assoc.release()
        assert [str(f.StudyInstanceUID) for f in found] == [str(ct.StudyInstanceUID)]
        assert found[0].RetrieveAETitle == "PARTS", "the configured AE title answers"

        stranger = AE(ae_title="STRANGER")
        stranger.add_requested_context(CTImageStorage)
        refused = stranger.associate("127.0.0.1", server.port, ae_title="PARTS")
        assert refused.is_rejected, "only the allowed calling AE titles associate"
    finally:
        server.stop()
        platform.close()
