"""CheXpert (Irvin et al. 2019): CheXpert-v1.0 and CheXpert-v1.0-small, as Stanford publishes them
and as Kaggle mounts them ("ashery/chexpert").

Layout: a dataset folder with
    train.csv, valid.csv
    train/patient00001/study1/view1_frontal.jpg, .../view2_lateral.jpg, ...
    valid/patient64541/study1/view1_frontal.jpg, ...
Columns: Path, Sex, Age, Frontal/Lateral, AP/PA, then the 14 observations (1.0 / 0.0 / -1.0 /
blank; data/sources/chexpert_labels.py says how they become our labels, under the `uncertainty`
option). `Path` is relative to the folder ABOVE the dataset folder
("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"); it is resolved from the
CSV's own folder (the part from "train/" or "valid/" on), which holds in every copy seen: the
release, Kaggle's mount with or without the CheXpert-v1.0-small level, a root given above it.

- Patient: the patientNNNNN folder. Image id: `Path` as written in the CSV.
- Views: Frontal with AP/PA "PA"/"AP" -> PA/AP, blank -> FRONTAL, anything else (the few "LL"/"RL"
  frontals) -> OTHER; Lateral -> LATERAL. Sex Male/Female -> M/F, Unknown -> "".
- Split: valid.csv (234 images of 200 patients, labelled by radiologist consensus) is our TEST
  split; validation is carved by patient from train.csv. (The later test.csv of 500 studies and
  the CheXbert-labelled train_cheXbert.csv are not read.)
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from chexvision_lib.data.label_space import CHEXPERT_OBSERVATIONS
from chexvision_lib.data.sources.chexpert_labels import UNCERTAINTY_POLICIES, chexpert_targets
from chexvision_lib.data.sources.common import (
    attach_paths,
    dataset_root,
    exactly_one,
    find_files,
    finish_index,
    resolve_options,
)
from chexvision_lib.data.sources.reader_parts import (
    check_unique,
    csv_row,
    drop_views,
    first_row,
    numeric_column,
    read_csv_text,
)

KIND = "chexpert"
OPTIONS: dict[str, tuple[str, ...]] = {"uncertainty": UNCERTAINTY_POLICIES}
CSV_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS)
_SPLIT_FOLDERS = ("train", "valid", "test")
_MARKER_COLUMNS = {"Path", "Frontal/Lateral"}
_SEX = {"Male": "M", "Female": "F"}
_FRONTAL_VIEWS = {"PA": "PA", "AP": "AP", "": "FRONTAL"}
_HINT = (
    "expected CheXpert-v1.0 or CheXpert-v1.0-small: train.csv and valid.csv with Path and "
    "Frontal/Lateral columns (Kaggle: /kaggle/input/chexpert)"
)


def _is_chexpert_csv(path: Path) -> bool:
    """The header names Path and Frontal/Lateral (read cheaply: the first line only)."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return {name.strip() for name in header} >= _MARKER_COLUMNS


def is_marker(path: Path) -> bool:
    """CheXpert's train.csv (the name alone is too common: its header must match too)."""
    return path.name == "train.csv" and _is_chexpert_csv(path)


def _below_csv(relative: str, csv_dir: Path) -> str:
    """Resolve "CheXpert-v1.0-small/train/p/s/v.jpg" to csv_dir/train/p/s/v.jpg, whatever the
    prefix; a Path with no split folder is taken as relative to the folder above the CSV's."""
    # str.split, not PurePosixPath: this runs once per image (223k times for CheXpert).
    parts = [part for part in relative.replace("\\", "/").split("/") if part not in ("", ".")]
    for at, part in enumerate(parts):
        if part in _SPLIT_FOLDERS:
            return str(csv_dir.joinpath(*parts[at:]))
    return str(csv_dir.parent / relative)


def image_paths(relative: pd.Series, csv_dir: Path) -> pd.Series:
    """Absolute image paths for the CSV's `Path` column: below the CSV's folder from the split
    folder on; failing that (a copy that moved the CSV), relative to the folder above the CSV's
    (the documented base) or to the CSV's own. The first way that finds a file among the first
    rows is used for all (only that one is computed for every row); attach_paths reports what
    is still missing."""
    ways = (
        lambda p: _below_csv(p, csv_dir),
        lambda p: str(csv_dir.parent / p),
        lambda p: str(csv_dir / p),
    )
    probe = relative.head(20)
    chosen = next((way for way in ways if any(map(os.path.isfile, probe.map(way)))), ways[0])
    return relative.map(chosen)


def _views(raw: pd.DataFrame, path: Path) -> pd.Series:
    kind = raw["Frontal/Lateral"].str.strip()
    bad = ~kind.isin(["Frontal", "Lateral"])
    if bad.any():
        at = first_row(bad)
        raise ValueError(
            f"{path}, row {csv_row(at)}: Frontal/Lateral is {raw['Frontal/Lateral'].iloc[at]!r}; "
            "expected Frontal or Lateral"
        )
    frontal = raw["AP/PA"].str.strip().map(_FRONTAL_VIEWS).fillna("OTHER")
    return pd.Series(np.where(kind == "Lateral", "LATERAL", frontal), index=raw.index)


def read_chexpert_csv(path: Path, split: str, *, uncertainty: str) -> pd.DataFrame:
    """One of CheXpert's CSVs -> index rows (path resolved, split set; see the module docstring)."""
    raw = read_csv_text(path, CSV_COLUMNS)
    raw = raw.assign(Path=raw["Path"].str.strip())
    check_unique(raw["Path"], "Path", path)
    patient = raw["Path"].str.extract(r"(?:^|/)(patient\d+)/", expand=False)
    if patient.isna().any():
        at = first_row(patient.isna())
        raise ValueError(
            f"{path}, row {csv_row(at)}: Path {raw['Path'].iloc[at]!r} names no patientNNNNN folder"
        )
    table = pd.DataFrame(
        {
            "image_id": raw["Path"],
            "path": image_paths(raw["Path"], path.parent),
            "patient": patient,
            "age": numeric_column(raw, "Age", path),
            "sex": raw["Sex"].str.strip().map(_SEX).fillna(""),
            "view": _views(raw, path),
        }
    )
    labels = chexpert_targets(raw, path, uncertainty=uncertainty, dataset=KIND)
    return pd.concat([table, labels], axis=1).assign(split=split)


def _find_csvs(root: Path) -> tuple[Path, Path]:
    found = find_files(
        root, {"train": re.compile(r"train\.csv"), "valid": re.compile(r"valid\.csv")}
    )
    train_csv = exactly_one(
        [p for p in found["train"] if is_marker(p)], "CheXpert train.csv", root, _HINT
    )
    valids = [p for p in found["valid"] if _is_chexpert_csv(p)]
    beside = [p for p in valids if p.parent == train_csv.parent]
    return train_csv, exactly_one(beside or valids, "CheXpert valid.csv", root, _HINT)


def build_index(
    root: Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    views: tuple[str, ...] | None = None,
    skip_bad: bool = False,
    **options: object,
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Index a CheXpert copy below `root` (see the module docstring). Options: uncertainty =
    ignore (default) | ones | zeros. `views` default: frontal only; the others are counted in
    `skipped`. Missing images are an error, or with `skip_bad` dropped and counted."""
    chosen = resolve_options(KIND, OPTIONS, options)
    root = dataset_root(root)
    train_csv, valid_csv = _find_csvs(root)
    table = pd.concat(
        [
            read_chexpert_csv(train_csv, "train", uncertainty=chosen["uncertainty"]),
            read_chexpert_csv(valid_csv, "test", uncertainty=chosen["uncertainty"]),
        ],
        ignore_index=True,
    )
    table, skipped = drop_views(table, views)
    table, missing = attach_paths(
        table, table["path"], skip_bad=skip_bad, where=f"{train_csv} and {valid_csv}"
    )
    skipped["missing_images"] = missing
    return finish_index(
        table,
        kind=KIND,
        root=root,
        files={"train_csv": train_csv, "valid_csv": valid_csv},
        val_fraction=val_fraction,
        seed=seed,
        skipped=skipped,
        options=chosen,
    )
