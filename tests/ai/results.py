"""Studies with AI results for the tests of ``ai/findings.py`` and its pages: small synthetic radiographs
(:mod:`radstack.ai.synthetic`) and results recorded through :meth:`AiResults.record`, as the
inference code records them once it has written the SR."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from radstack.ai import synthetic
from radstack.ai.findings import AiResults, FindingRecord, ResultRecord, priority_of
from radstack.ingest.pipeline import ingest_dataset
from radstack.store.studies import BatchReason, StudyStore

#: The operating points of tests.ai.tiny_models.metrics(): suspicious 0.3, definite 0.7.
SUSPICIOUS, DEFINITE = 0.3, 0.7


def radiograph(seed: int, index: int = 0) -> Dataset:
    """A small synthetic radiograph (96 × 80 pixels), a study of its own."""
    image = synthetic.generate(seed, index, synthetic.Options(size=(96, 80)))
    return synthetic.to_dataset(image)


def ingest(store: StudyStore, *datasets: Dataset) -> None:
    with store.batch(BatchReason.STOW) as batch:
        for ds in datasets:
            assert ingest_dataset(store, ds, batch).ok


def record(
    results: AiResults,
    ds: Dataset,
    scores: Sequence[float],
    *,
    model: str = "fracture",
    version: int = 1,
    trigger: str = "rule:new-radiographs",
) -> ResultRecord:
    """Record a run of ``model`` on ``ds``'s study with one finding per score (the study's probability
    is the highest, 0.05 when there is none)."""
    findings = [
        FindingRecord(
            index=i,
            label="fracture",
            probability=score,
            box=(10.0 + i, 20.0, 30.0 + i, 40.0),
            sop_uid=str(ds.SOPInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            tracking_uid=generate_uid(),
            level=priority_of(score, SUSPICIOUS, DEFINITE)[1],
        )
        for i, score in enumerate(scores)
    ]
    probability = max(scores, default=0.05)
    priority, level = priority_of(probability, SUSPICIOUS, DEFINITE)
    return results.record(
        study_uid=str(ds.StudyInstanceUID),
        model=model,
        model_version=version,
        probability=probability,
        priority=priority,
        level=level,
        findings=findings,
        input_key=generate_uid()[-40:],
        sr_series_uid=generate_uid(),
        sr_sop_uid=generate_uid(),
        trigger=trigger,
        job_id=None,
    )
