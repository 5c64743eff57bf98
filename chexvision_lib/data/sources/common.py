"""What every dataset reader shares: finding files, views, splits, and the recorded source.

A reader (data/sources/<kind>.py) turns one dataset's published files into our index table
(data/nih_index.INDEX_COLUMNS) and hands it to `finish_index`, which gives it its splits, checks
that no patient is in two of them, and records what was read (files and their SHA-256, counts) in
the source dict that travels into the cache, the run and the model card.

Splits: a reader fills `split` with the dataset's official assignment where it has one ("train",
"val", "test"; NA for images it does not place). Without an official test split, whole patients
are dealt into train / val / test with a seed; with an official test split but no validation one,
validation is carved from the official training patients, as for NIH.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from chexvision_lib.core.hashing import file_sha256
from chexvision_lib.core.labels import ABNORMAL, FINDINGS, UNKNOWN
from chexvision_lib.data.label_space import provided_findings
from chexvision_lib.data.nih_index import (  # noqa: F401  exactly_one: for the readers
    INDEX_COLUMNS,
    DatasetLayoutError,
    exactly_one,
    split_counts,
)
from chexvision_lib.data.provenance import holds_synthetic_marker
from chexvision_lib.data.splits import carve_validation, check_patient_disjoint, grouped_split

# Canonical view names: every reader maps its dataset's spelling onto these.
# FRONTAL is a frontal view whose PA/AP is not recorded (Indiana's "Frontal").
FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP", "AP_SUPINE", "FRONTAL")
VIEW_NAMES: tuple[str, ...] = (*FRONTAL_VIEWS, "LATERAL", "OTHER")
SPLITS = ("train", "val", "test")
DEFAULT_TEST_FRACTION = 0.2  # of the patients, for datasets without an official test split


def resolve_options(
    kind: str, accepted: Mapping[str, tuple[str, ...]], given: Mapping[str, object]
) -> dict[str, str]:
    """A reader's options with defaults filled in: the first accepted value of each is its
    default. An unknown option or value is an error naming what would be accepted."""
    for name, value in given.items():
        if name not in accepted:
            takes = ", ".join(sorted(accepted)) or "none"
            raise ValueError(f"{kind}: unknown option {name!r} (its options: {takes})")
        if value not in accepted[name]:
            raise ValueError(
                f"{kind}: option {name}={value!r} is not one of {', '.join(accepted[name])}"
            )
    return {name: str(given.get(name, values[0])) for name, values in accepted.items()}


def find_files(root: Path, patterns: dict[str, re.Pattern[str]]) -> dict[str, list[Path]]:
    """One walk below `root` (following links, as Kaggle mounts may be links): for each named
    pattern, the files whose NAME matches it."""
    found: dict[str, list[Path]] = {key: [] for key in patterns}
    for directory, _dirs, files in os.walk(root, followlinks=True):
        for name in files:
            for key, pattern in patterns.items():
                if pattern.fullmatch(name):
                    found[key].append(Path(directory, name))
    return found


def dataset_root(root: str | Path) -> Path:
    """The root as an absolute path (recorded: later steps may run elsewhere), or an error."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise DatasetLayoutError(f"data root {root} does not exist or is not a folder")
    return root


def check_columns(frame: pd.DataFrame, required: Iterable[str], path: Path) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")


def filter_views(table: pd.DataFrame, views: tuple[str, ...] | None) -> tuple[pd.DataFrame, int]:
    """Keep the rows whose `view` is in `views` (default: the frontal views); return the table and
    how many rows were dropped. Models here are trained on frontal radiographs; laterals are kept
    only when asked for."""
    views = tuple(v.upper() for v in views) if views else FRONTAL_VIEWS
    unknown = sorted(set(views) - set(VIEW_NAMES))
    if unknown:
        raise ValueError(f"views: unknown {unknown}; accepted: {list(VIEW_NAMES)}")
    keep = table["view"].isin(views)
    return table[keep].reset_index(drop=True), int((~keep).sum())


def attach_paths(
    table: pd.DataFrame, paths: pd.Series, *, skip_bad: bool, where: str
) -> tuple[pd.DataFrame, int]:
    """Set `path` from `paths` (aligned with the table; missing files are NA or absent on disk).
    Missing images are an error naming a few, or with `skip_bad` dropped and counted."""
    exists = paths.notna() & paths.map(lambda p: isinstance(p, str) and os.path.isfile(p))
    if not exists.all() and not skip_bad:
        examples = table.loc[~exists, "image_id"].head(3).tolist()
        raise DatasetLayoutError(
            f"{int((~exists).sum())} image(s) named in {where} were not found, e.g. {examples} "
            "(pass --skip-bad to index only the images present and count the rest)"
        )
    table = table.assign(path=paths)[exists].reset_index(drop=True)
    return table, int((~exists).sum())


def assign_splits(
    table: pd.DataFrame,
    *,
    val_fraction: float,
    seed: int,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> tuple[pd.DataFrame, str]:
    """Complete the `split` column (see the module docstring); return the table and the policy
    in words, for the source record."""
    split = table["split"] if "split" in table.columns else pd.Series(pd.NA, index=table.index)
    official = set(split.dropna())
    if not official <= set(SPLITS):
        raise ValueError(f"split: unknown values {sorted(official - set(SPLITS))}")
    if not official:
        fractions = {
            "train": (1 - test_fraction) * (1 - val_fraction),
            "val": (1 - test_fraction) * val_fraction,
            "test": test_fraction,
        }
        table = table.assign(split=grouped_split(table["patient"], fractions, seed))
        policy = f"seeded patient-wise split (seed {seed}, test {test_fraction:g} of patients)"
    else:
        if split.isna().any():
            raise ValueError(f"{int(split.isna().sum())} image(s) have no official split")
        table = table.assign(split=split.astype(str))
        policy = "official split"
        if "val" not in official:
            is_train = table["split"] == "train"
            is_val = carve_validation(table.loc[is_train, "patient"], val_fraction, seed)
            table.loc[is_val[is_val].index, "split"] = "val"
            policy += f"; validation carved from train by patient (seed {seed})"
    check_patient_disjoint(table, policy)
    return table, policy


def dataset_summary(table: pd.DataFrame) -> dict[str, object]:
    """What `prepare` reports: images, patients, views, and per output the positives, negatives and
    unknowns (an output the dataset does not label is all unknown)."""
    labels = {}
    for name in (*FINDINGS, ABNORMAL):
        values = table[name]
        labels[name] = {
            "positive": int((values == 1).sum()),
            "negative": int((values == 0).sum()),
            "unknown": int((values == UNKNOWN).sum()),
        }
    return {
        "images": len(table),
        "patients": int(table["patient"].nunique()),
        "views": {str(k): int(v) for k, v in table["view"].value_counts().sort_index().items()},
        "frontal": int(table["view"].isin(FRONTAL_VIEWS).sum()),
        "labels": labels,
    }


def finish_index(
    table: pd.DataFrame,
    *,
    kind: str,
    root: Path,
    files: dict[str, Path],
    val_fraction: float,
    seed: int,
    skipped: dict[str, int],
    options: dict[str, object] | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Splits, checks and the source record for a reader's table (see the module docstring).

    `files` are the metadata files read (recorded absolute, with their SHA-256); `options` the
    reader's own choices (an uncertainty policy, a label rule), recorded as given. The findings
    recorded as provided are those of the label map that hold a known label here (a layout may
    label fewer than its dataset's map: VinDr's Kaggle copy).
    """
    missing = [c for c in INDEX_COLUMNS if c != "split" and c not in table.columns]
    if missing:
        raise AssertionError(f"{kind} reader: table lacks {missing}")  # a bug of ours, not input
    if table.empty:
        raise DatasetLayoutError(f"{root}: no images left to index for {kind}")
    table, policy = assign_splits(
        table, val_fraction=val_fraction, seed=seed, test_fraction=test_fraction
    )
    extra = [c for c in table.columns if c not in INDEX_COLUMNS]
    table = table.loc[:, [*INDEX_COLUMNS, *extra]].reset_index(drop=True)
    source: dict[str, object] = {
        "kind": kind,
        "root": str(root.resolve()),
        "synthetic": holds_synthetic_marker({p.parent for p in files.values()}),
        "files": {name: str(path.resolve()) for name, path in files.items()},
        "sha256": {name: file_sha256(path) for name, path in files.items()},
        "split_policy": policy,
        "val_fraction": val_fraction,
        "seed": seed,
        "options": options or {},
        "provided_findings": [f for f in provided_findings(kind) if (table[f] != UNKNOWN).any()],
        "skipped": {k: v for k, v in skipped.items() if v},
        "counts": split_counts(table),
        "summary": dataset_summary(table),
    }
    return table, source
