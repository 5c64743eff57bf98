"""Patient-wise splits: the official test list, and validation carved from train_val BY PATIENT.

No patient may appear in two splits. `check_patient_disjoint` is called whenever a table with a
split column is built or loaded, so a leaking split cannot be trained on silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chexvision_lib.core.text_files import read_text


class SplitLeakError(ValueError):
    """A patient appears in more than one split."""


def read_split_list(path: str | Path) -> list[str]:
    """Image names of an NIH split list (one per line; the official files lack a final newline)."""
    names = [line.strip() for line in read_text(path).splitlines()]
    names = [name for name in names if name]
    if len(set(names)) != len(names):
        seen: set[str] = set()
        duplicate = next(name for name in names if name in seen or seen.add(name))
        raise ValueError(f"{path}: image {duplicate!r} is listed more than once")
    return names


def carve_validation(patients: pd.Series, val_fraction: float, seed: int) -> pd.Series:
    """Mark a seeded random `val_fraction` of the PATIENTS (not images) as validation.

    Returns a boolean Series aligned with `patients` (True = validation). Patients are sorted
    before shuffling so the result depends only on the set of patients and the seed.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    unique = np.sort(patients.unique())
    n_val = int(round(val_fraction * len(unique)))
    if val_fraction > 0 and len(unique) > 1:
        n_val = min(max(n_val, 1), len(unique) - 1)
    rng = np.random.default_rng(seed)
    val_patients = set(rng.permutation(unique)[:n_val].tolist())
    return patients.isin(val_patients)


def grouped_split(patients: pd.Series, fractions: dict[str, float], seed: int) -> pd.Series:
    """Assign whole patients to named splits in the given proportions (e.g. train/val/test).

    Used for datasets without an official split list (external sets, k-fold studies).
    """
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6 or any(f < 0 for f in fractions.values()):
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    unique = np.random.default_rng(seed).permutation(np.sort(patients.unique()))
    bounds = np.round(np.cumsum(list(fractions.values())) * len(unique)).astype(int)
    assignment: dict[object, str] = {}
    start = 0
    for name, stop in zip(fractions, bounds, strict=True):
        assignment.update(dict.fromkeys(unique[start:stop].tolist(), name))
        start = stop
    return patients.map(assignment)


def check_patient_disjoint(table: pd.DataFrame, where: str = "index") -> None:
    """Raise SplitLeakError if any patient has images in more than one split."""
    splits_per_patient = table.groupby("patient")["split"].nunique()
    leaking = splits_per_patient[splits_per_patient > 1]
    if len(leaking):
        examples = ", ".join(map(str, leaking.index[:5]))
        raise SplitLeakError(
            f"{where}: {len(leaking)} patient(s) appear in more than one split (e.g. {examples})"
        )


def cross_validation_splits(table: pd.DataFrame, folds: int, fold: int, seed: int) -> pd.Series:
    """k-fold cross-validation grouped by patient over the cache's train + val images.

    Patients of train and val are dealt into `folds` groups (seeded); group `fold` becomes "val",
    the others "train"; the test split is untouched, so every fold's model meets the same test set.
    """
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(
            f"folds must be >= 2 and fold in [0, folds), got folds={folds}, fold={fold}"
        )
    pool = table["split"].isin(["train", "val"])
    patients = np.sort(table.loc[pool, "patient"].unique())
    if len(patients) < folds:
        raise ValueError(f"{len(patients)} patients cannot make {folds} folds")
    shuffled = np.random.default_rng(seed).permutation(patients)
    fold_of = {patient: i % folds for i, patient in enumerate(shuffled)}
    in_fold = table["patient"].map(fold_of) == fold
    return table["split"].where(~pool, np.where(in_fold, "val", "train"))
