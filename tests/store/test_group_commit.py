"""Group commit: instances committed by several threads at once share one index transaction.

A group that holds one instance the index refuses is rolled back and committed one by one: the
refused instance gets its own reason and every other instance of the group is stored.
"""

from __future__ import annotations

import threading
import time

import pytest
from pydicom.dataset import Dataset

from radstack.errors import DataSetMismatch
from radstack.ingest.pipeline import stage_file
from radstack.store.studies import (
    Batch,
    BatchReason,
    CommitOutcome,
    InstanceRecord,
    StoreOutcomeValues,
    StudyStore,
)
from tests.conftest import RunningServer
from tests.helpers import part10, synthetic_ct


@pytest.fixture
def store(backend_server: RunningServer) -> StudyStore:
    return backend_server.platform.store


def staged(store: StudyStore, ds: Dataset) -> InstanceRecord:
    result, new = stage_file(store.blobs, part10(ds), None, True)
    assert result.ok and new is not None, result.error
    return new


def commit_together(store: StudyStore, items: list[tuple[InstanceRecord, Batch]]) -> list[object]:
    """Commit every item from its own thread while the committer is busy, so they form one group."""
    outcomes: list[object] = [None] * len(items)

    def commit(index: int, new: InstanceRecord, batch: Batch) -> None:
        try:
            outcomes[index] = store.commit_instance(new, batch)
        except Exception as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=commit, args=(i, *item)) for i, item in enumerate(items)]
    with store._committer:  # hold the committer: every thread queues its instance
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(store._group) < len(items):
            assert time.monotonic() < deadline, "the threads did not queue their instances"
            time.sleep(0.005)
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


def test_a_group_is_one_study_version(store: StudyStore) -> None:
    study, series_uid = "1.2.826.0.1.3680043.8.498.100", "1.2.826.0.1.3680043.8.498.100.1"
    series = [synthetic_ct(seed=n, study=study, series=series_uid) for n in range(6)]
    batch = Batch(BatchReason.STOW)
    outcomes = commit_together(store, [(staged(store, ds), batch) for ds in series])
    assert all(isinstance(o, CommitOutcome) and o.outcome is StoreOutcomeValues.STORED for o in outcomes)
    assert [v.version for v in store.list_versions(study)] == [1]
    assert len(store.current_instances(study)) == 6


def test_a_refused_instance_does_not_take_its_group_down(store: StudyStore) -> None:
    elsewhere = synthetic_ct(seed=50, study="1.2.826.0.1.3680043.8.498.200")
    first = Batch(BatchReason.STOW)
    assert store.commit_instance(staged(store, elsewhere), first).outcome is StoreOutcomeValues.STORED

    study = "1.2.826.0.1.3680043.8.498.201"
    good = [synthetic_ct(seed=60 + n, study=study) for n in range(4)]
    # The same SOP Instance UID as the instance stored in the other study: the index refuses it.
    bad = synthetic_ct(seed=51, study=study, sop=str(elsewhere.SOPInstanceUID))
    batch = Batch(BatchReason.STOW)
    items = [(staged(store, ds), batch) for ds in [*good[:2], bad, *good[2:]]]
    outcomes = commit_together(store, items)

    assert isinstance(outcomes[2], DataSetMismatch) and "already stored in study" in str(outcomes[2])
    stored = [o for i, o in enumerate(outcomes) if i != 2]
    assert all(isinstance(o, CommitOutcome) and o.outcome is StoreOutcomeValues.STORED for o in stored)
    assert {r.sop_uid for r in store.current_instances(study)} == {str(ds.SOPInstanceUID) for ds in good}
    assert [v.version for v in store.list_versions(study)] == [1], "one request, one version"
    untouched = store.current_instances("1.2.826.0.1.3680043.8.498.200")
    assert [r.study_uid for r in untouched] == ["1.2.826.0.1.3680043.8.498.200"]
