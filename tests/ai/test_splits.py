"""The rules of a data set's content: the split by patient (stratified, deterministic), its shares."""

from __future__ import annotations

import pytest

from radstack.ai.splits import DEFAULT_RATIOS, SplitValues, assign_splits, parse_ratios
from radstack.errors import BadRequest


def test_split_is_by_patient_stratified_and_deterministic_by_seed() -> None:
    patients = {f"P{n:03d}": n < 30 for n in range(100)}
    first = assign_splits(patients, 7, DEFAULT_RATIOS)
    assert set(first) == set(patients)  # each patient in exactly one split
    for positive, total in ((True, 30), (False, 70)):
        sizes = {
            s: sum(1 for p, sp in first.items() if sp is s and patients[p] is positive) for s in SplitValues
        }
        assert sum(sizes.values()) == total
        # Stratified: each split holds its share of patients with and without a fracture.
        assert sizes[SplitValues.TRAIN] == round(total * 0.7)
        assert abs(sizes[SplitValues.VALIDATION] - total * 0.15) <= 1
        assert abs(sizes[SplitValues.TEST] - total * 0.15) <= 1
    assert assign_splits(patients, 7, DEFAULT_RATIOS) == first
    assert assign_splits(dict(reversed(patients.items())), 7, DEFAULT_RATIOS) == first
    assert assign_splits(patients, 8, DEFAULT_RATIOS) != first
    # A small stratum still puts one patient with a fracture in every split.
    small = assign_splits(
        {"A": True, "B": True, "C": True, "D": False, "E": False, "F": False}, 1, DEFAULT_RATIOS
    )
    assert sorted(small[p] for p in "ABC") == sorted(SplitValues)


def test_ratios_are_three_positive_shares() -> None:
    assert parse_ratios("70/15/15") == pytest.approx((0.7, 0.15, 0.15))
    assert parse_ratios([0.8, 0.1, 0.1]) == pytest.approx((0.8, 0.1, 0.1))
    for bad in ("70/30", "70/0/30", "a/b/c", "70/-15/45"):
        with pytest.raises(BadRequest, match="three positive shares"):
            parse_ratios(bad)
