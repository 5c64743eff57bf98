"""MIMIC-CXR-JPG 2.0.0 / 2.1.0 (Johnson et al. 2019), as PhysioNet publishes it.

Layout (physionet.org/files/mimic-cxr-jpg/<version>/):
    mimic-cxr-2.0.0-metadata.csv.gz   one row per image: dicom_id, subject_id, study_id,
                                      PerformedProcedureStepDescription, ViewPosition, Rows, ...
    mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split (train/validate/test)
    mimic-cxr-2.0.0-chexpert.csv.gz   one row per STUDY: subject_id, study_id, the 14 CheXpert
    mimic-cxr-2.0.0-negbio.csv.gz     observations (1.0 / 0.0 / -1.0 / blank), by either labeler
    files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg
                                      (p + the subject's first two digits / p<subject> / s<study>)
Release 2.1.0 ships the same four files (still named 2.0.0) and adds a radiologist-labelled test
set, which is not read here; any mimic-cxr-2.x.y-* name is accepted, plain .csv copies too.

- Options: labeler = chexpert (default) | negbio: which label file; uncertainty = ignore
  (default) | ones | zeros, as for CheXpert (data/sources/chexpert_labels.py). Each image takes
  its study's labels; images of a study without a label row are skipped and counted.
- Patient: subject_id. Image id: dicom_id. Age and sex are not in MIMIC-CXR-JPG (they live in
  MIMIC-IV): NaN and "".
- Views (ViewPosition): PA, AP as such; LATERAL, LL, RL, XTABLE LATERAL -> LATERAL; blank and
  everything else (AP AXIAL, LAO, SWIMMERS, ...) -> OTHER.
- Split: the official split file (validate -> val), patient-wise by construction.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from chexvision_lib.core.labels import ABNORMAL
from chexvision_lib.data.label_space import CHEXPERT_OBSERVATIONS
from chexvision_lib.data.nih_index import DatasetLayoutError
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
    read_csv_text,
)

KIND = "mimic"
OPTIONS: dict[str, tuple[str, ...]] = {
    "labeler": ("chexpert", "negbio"),
    "uncertainty": UNCERTAINTY_POLICIES,
}
PATTERNS = {
    name: re.compile(rf"mimic-cxr-2\.\d+\.\d+-{name}\.csv(\.gz)?")
    for name in ("metadata", "split", "chexpert", "negbio")
}
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
LABEL_COLUMNS = ("subject_id", "study_id", *CHEXPERT_OBSERVATIONS)
_SPLITS = {"train": "train", "validate": "val", "test": "test"}
_VIEWS = {
    "PA": "PA",
    "AP": "AP",
    "LATERAL": "LATERAL",
    "LL": "LATERAL",
    "RL": "LATERAL",
    "XTABLE LATERAL": "LATERAL",
}
_HINT = (
    "expected MIMIC-CXR-JPG: mimic-cxr-2.0.0-{metadata,split,chexpert,negbio}.csv.gz beside a "
    "files/ folder (physionet.org/files/mimic-cxr-jpg/2.0.0/)"
)


def is_marker(path: Path) -> bool:
    """MIMIC-CXR-JPG's metadata file."""
    return PATTERNS["metadata"].fullmatch(path.name) is not None


def _ids(raw: pd.DataFrame, columns: tuple[str, ...], path: Path) -> pd.DataFrame:
    """subject_id / study_id (digits; paths are built from them) stripped, checked."""
    out = raw.copy()
    for column in columns:
        out[column] = raw[column].str.strip()
        bad = ~out[column].str.fullmatch(r"\d+")
        if bad.any():
            at = first_row(bad)
            raise ValueError(
                f"{path}, row {csv_row(at)}: {column} {raw[column].iloc[at]!r} is not a number"
            )
    return out


def _read_split(path: Path) -> pd.DataFrame:
    raw = read_csv_text(path, SPLIT_COLUMNS)
    split = raw["split"].str.strip().map(_SPLITS)
    if split.isna().any():
        at = first_row(split.isna())
        raise ValueError(
            f"{path}, row {csv_row(at)}: split {raw['split'].iloc[at]!r} is not one of "
            f"{', '.join(_SPLITS)}"
        )
    dicom = raw["dicom_id"].str.strip()
    check_unique(dicom, "dicom_id", path)
    return pd.DataFrame({"dicom_id": dicom, "split": split})


def _read_labels(path: Path, uncertainty: str) -> pd.DataFrame:
    raw = _ids(read_csv_text(path, LABEL_COLUMNS), ("subject_id", "study_id"), path)
    check_unique(raw["subject_id"] + "/s" + raw["study_id"], "subject/study", path)
    labels = chexpert_targets(raw, path, uncertainty=uncertainty, dataset=KIND)
    return pd.concat([raw[["subject_id", "study_id"]], labels], axis=1)


def _files_folder(metadata_csv: Path, root: Path) -> Path:
    for base in (metadata_csv.parent, root):
        if (base / "files").is_dir():
            return base / "files"
    raise DatasetLayoutError(f"no files/ folder beside {metadata_csv} or in {root}; {_HINT}")


def _image_table(meta: pd.DataFrame, files: Path) -> pd.DataFrame:
    subject, study, dicom = meta["subject_id"], meta["study_id"], meta["dicom_id"].str.strip()
    paths = [
        str(files / f"p{s[:2]}" / f"p{s}" / f"s{t}" / f"{d}.jpg")
        for s, t, d in zip(subject, study, dicom, strict=True)
    ]
    view = meta["ViewPosition"].str.strip().str.upper().map(_VIEWS).fillna("OTHER")
    return pd.DataFrame(
        {
            "dicom_id": dicom,
            "path": paths,
            "patient": subject,
            "age": np.nan,
            "sex": "",
            "view": view,
            "subject_id": subject,
            "study_id": study,
        }
    )


def _with_split(table: pd.DataFrame, split_csv: Path, skip_bad: bool) -> tuple[pd.DataFrame, int]:
    table = table.merge(_read_split(split_csv), on="dicom_id", how="left", validate="one_to_one")
    unlisted = table["split"].isna()
    if unlisted.any() and not skip_bad:
        raise ValueError(
            f"{int(unlisted.sum())} image(s) of the metadata file are not in {split_csv}, e.g. "
            f"{table.loc[unlisted, 'dicom_id'].head(3).tolist()} (pass --skip-bad to skip them)"
        )
    return table[~unlisted].reset_index(drop=True), int(unlisted.sum())


def build_index(
    root: Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    views: tuple[str, ...] | None = None,
    skip_bad: bool = False,
    **options: object,
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Index a MIMIC-CXR-JPG copy below `root` (see the module docstring). `views` default:
    frontal only; the others are counted in `skipped`, as are images of unlabelled studies.
    Missing images (or images absent from the split file) are an error, or with `skip_bad`
    dropped and counted."""
    chosen = resolve_options(KIND, OPTIONS, options)
    root = dataset_root(root)
    found = find_files(root, PATTERNS)
    metadata_csv = exactly_one(found["metadata"], "MIMIC-CXR-JPG metadata file", root, _HINT)
    split_csv = exactly_one(found["split"], "MIMIC-CXR-JPG split file", root, _HINT)
    labels_csv = exactly_one(
        found[chosen["labeler"]], f"MIMIC-CXR-JPG {chosen['labeler']} label file", root, _HINT
    )
    meta = _ids(
        read_csv_text(metadata_csv, METADATA_COLUMNS), ("subject_id", "study_id"), metadata_csv
    )
    check_unique(meta["dicom_id"].str.strip(), "dicom_id", metadata_csv)
    table = _image_table(meta, _files_folder(metadata_csv, root))
    table, not_in_split = _with_split(table, split_csv, skip_bad)
    labels = _read_labels(labels_csv, chosen["uncertainty"])
    table = table.merge(labels, on=["subject_id", "study_id"], how="left", validate="many_to_one")
    unlabelled = table[ABNORMAL].isna()
    table = table[~unlabelled].drop(columns=["subject_id", "study_id"])
    table = table.rename(columns={"dicom_id": "image_id"}).reset_index(drop=True)
    table[labels.columns[2:]] = table[labels.columns[2:]].astype("int8")
    table, skipped = drop_views(table, views)
    table, missing = attach_paths(table, table["path"], skip_bad=skip_bad, where=str(metadata_csv))
    skipped.update(
        not_in_split_file=not_in_split,
        images_of_unlabelled_studies=int(unlabelled.sum()),
        missing_images=missing,
    )
    return finish_index(
        table,
        kind=KIND,
        root=root,
        files={"metadata_csv": metadata_csv, "split_csv": split_csv, "labels_csv": labels_csv},
        val_fraction=val_fraction,
        seed=seed,
        skipped=skipped,
        options=chosen,
    )
