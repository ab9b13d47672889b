"""Many nodes: PostgreSQL + Redis + a shared blob directory, two ``radstack serve --no-workers`` and
two ``radstack worker`` processes. STOW-RS and C-STORE go into both API processes at once (the same
instances to both, too), an import job and the study-stable jobs run on the workers: every instance
is stored exactly once and every job finishes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from tests import authed
from tests.helpers import DICOM_MULTIPART, dicom_body, part10, synthetic_ct
from tests.processes import ServerProcess, start_worker

pytestmark = pytest.mark.postgres

STUDY = "1.2.826.0.1.3680043.8.498.77"


@pytest.fixture
def cluster(tmp_path: Path, pg_database_url: str, redis_url: str) -> Iterator[list[ServerProcess]]:
    env = {
        "RADSTACK_DATABASE_URL": pg_database_url,
        "RADSTACK_QUEUE_URL": redis_url,
        "RADSTACK_BLOB_URL": f"file://{tmp_path / 'shared-blobs'}",
        "RADSTACK_KEY_URL": f"file://{tmp_path / 'shared-keys'}",  # every node reads every node's blobs
        "RADSTACK_INGEST_PROCESSES": "0",
        "RADSTACK_STABLE_SECONDS": "1",
    }
    apis = [ServerProcess(tmp_path / f"api-{n}", env, dicom=True) for n in range(2)]
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for api in apis:
            api.start("--no-workers")
        workers = [start_worker(tmp_path / f"worker-{n}", env) for n in range(2)]
        yield apis
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
        for api in apis:
            api.stop()


def c_store(api: ServerProcess, datasets: list[Dataset]) -> list[int]:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(str(datasets[0].SOPClassUID), [str(datasets[0].file_meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", api.dicom_port, ae_title="RADSTACK")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def stow(api: ServerProcess, datasets: list[Dataset]) -> int:
    response = authed.post(
        f"{api.url}/dicomweb/studies",
        content=dicom_body(*datasets),
        headers={"Content-Type": DICOM_MULTIPART},
        timeout=60,
    )
    return response.status_code


def test_two_api_nodes_and_two_workers_store_everything_once(
    cluster: list[ServerProcess], tmp_path: Path
) -> None:
    first, second = cluster
    series = [synthetic_ct(seed=n, study=STUDY, series=f"{STUDY}.{n % 3}") for n in range(60)]
    shared = series[:10]  # sent to both nodes at the same time, by both protocols
    archive = tmp_path / "archive"
    archive.mkdir()
    for n, ds in enumerate(series[50:]):
        (archive / f"{n}.dcm").write_bytes(part10(ds))

    with ThreadPoolExecutor(6) as pool:
        futures: list[Future[Any]] = [
            pool.submit(stow, first, series[10:30]),
            pool.submit(stow, second, shared),
            pool.submit(c_store, first, shared),
            pool.submit(c_store, second, series[30:50]),
            pool.submit(stow, first, shared),
        ]
        job_id = authed.post(f"{second.url}/api/v1/import-jobs", json={"source": str(archive)}).json()["id"]
        assert futures[0].result() == 200 and futures[1].result() == 200 and futures[4].result() == 200
        assert futures[2].result() == [0] * 10 and futures[3].result() == [0] * 20

    deadline = time.monotonic() + 120
    while True:
        jobs = authed.get(f"{first.url}/api/v1/jobs", params={"limit": 1000}).json()
        kinds = {j["kind"] for j in jobs}
        if {j["state"] for j in jobs} == {"SUCCEEDED"} and {"import", "study-stable"} <= kinds:
            break
        assert not {j["state"] for j in jobs} & {"FAILED", "DEAD"}, jobs
        assert time.monotonic() < deadline, f"jobs did not finish: {jobs}"
        time.sleep(0.2)
    assert next(j for j in jobs if j["id"] == job_id)["progress"]["stored"] == 10

    for api in cluster:  # both nodes see the same, complete study
        instances = authed.get(f"{api.url}/dicomweb/studies/{STUDY}/instances", params={"limit": 1000}).json()
        uids = [i["00080018"]["Value"][0] for i in instances]
        assert len(uids) == len(set(uids)) == 60, "every instance stored exactly once"
        assert set(uids) == {str(ds.SOPInstanceUID) for ds in series}
