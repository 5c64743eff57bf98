"""PadChest (Bustos et al. 2020, BIMCV), as published.

Layout: PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv (or .csv.gz) with, among ~35 columns,
ImageID, ImageDir, StudyDate_DICOM, StudyID, PatientID, PatientBirth, PatientSex_DICOM,
ViewPosition_DICOM, Projection, MethodProjection, ..., Labels, Localizations,
LabelsLocalizationsBySentence, labelCUIS, LocalizationsCUIS; the images, 16-bit grey PNGs, in
numbered folders <ImageDir>/<ImageID> (0/ .. 54/, one per zip of the release). Images are found
by their (unique) name anywhere below the root, so re-packed copies are read too.

- Labels: a Python-literal list of report terms, "['pleural effusion', 'cardiomegaly']", read
  with ast.literal_eval (never eval); terms are stripped and lower-cased. A value that is not such
  a list is an error naming the row, or with `skip_bad` skipped and counted; a blank one (the
  release has a few) is always skipped and counted ("no_labels").
- Findings (label_space's PadChest map): 1 where a term mapping to the finding is present, else 0
  (labels read from reports, as NIH's are).
- Abnormal: 0 when the terms are exactly {"normal"}; 1 when any term is other than "normal" and
  the tags that describe the study rather than the patient: NON_FINDING_TERMS ("exclude",
  "suboptimal study", "unchanged"); else UNKNOWN (e.g. only "unchanged", or no terms at all).
- Views (Projection): PA, AP, AP_horizontal -> AP_SUPINE, L -> LATERAL, COSTAL, EXCLUDE and any
  other value -> OTHER.
- Age: study year (StudyDate_DICOM, yyyymmdd) minus PatientBirth (a year): whole years, +-1.
  Sex (PatientSex_DICOM): M/F, anything else "". Patient: PatientID. Image id: ImageID.
- Split: none is published; whole patients are dealt into train/val/test with the seed.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd

from chexvision_lib.core.labels import ABNORMAL, UNKNOWN
from chexvision_lib.data.label_space import label_map, to_nih_findings
from chexvision_lib.data.sources.common import (
    attach_paths,
    dataset_root,
    exactly_one,
    find_files,
    finish_index,
)
from chexvision_lib.data.sources.reader_parts import (
    check_unique,
    csv_row,
    drop_views,
    first_row,
    numeric_column,
    paths_by_name,
    read_csv_text,
)

KIND = "padchest"
OPTIONS: dict[str, tuple[str, ...]] = {}
CSV_PATTERN = re.compile(r"PADCHEST_chest_x_ray_images_labels_160K.*\.csv(\.gz)?", re.IGNORECASE)
IMAGE_PATTERN = re.compile(r".+\.png", re.IGNORECASE)
REQUIRED_COLUMNS = (
    "ImageID",
    "StudyDate_DICOM",
    "PatientID",
    "PatientBirth",
    "PatientSex_DICOM",
    "Projection",
    "Labels",
)
NORMAL = "normal"
NON_FINDING_TERMS: tuple[str, ...] = ("exclude", "suboptimal study", "unchanged")
PROJECTIONS = {
    "PA": "PA",
    "AP": "AP",
    "AP_horizontal": "AP_SUPINE",
    "L": "LATERAL",
    "COSTAL": "OTHER",
    "EXCLUDE": "OTHER",
}
_HINT = "expected PadChest: PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv and its PNGs"


def is_marker(path: Path) -> bool:
    """PadChest's label CSV."""
    return CSV_PATTERN.fullmatch(path.name) is not None


def parse_terms(text: str) -> list[str] | None:
    """The terms of a Labels cell: "['pleural effusion', ' cardiomegaly']" -> ["pleural
    effusion", "cardiomegaly"]; None when it is not a Python-literal list of strings."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(t, str) for t in value):
        return None
    return [t.strip().lower() for t in value if t.strip()]


def abnormal_of(terms: list[str]) -> int:
    """The Abnormal target of one image's terms (see the module docstring)."""
    present = set(terms)
    if present == {NORMAL}:
        return 0
    return 1 if present - {NORMAL, *NON_FINDING_TERMS} else UNKNOWN


def _read_terms(raw: pd.DataFrame, path: Path, skip_bad: bool) -> tuple[list, dict[str, int]]:
    """Each row's terms, None for the rows to skip, and the counts of those."""
    terms: list[list[str] | None] = []
    blank = unparseable = 0
    for position, text in enumerate(raw["Labels"].tolist()):
        if not text.strip():
            terms.append(None)
            blank += 1
            continue
        parsed = parse_terms(text)
        if parsed is None:
            if not skip_bad:
                raise ValueError(
                    f"{path}, row {csv_row(position)}: Labels {text!r} is not a list of terms "
                    "such as \"['pleural effusion', 'cardiomegaly']\" (pass --skip-bad to skip "
                    "and count such rows)"
                )
            unparseable += 1
        terms.append(parsed)
    return terms, {"no_labels": blank, "unparseable_labels": unparseable}


def _age(raw: pd.DataFrame, path: Path) -> pd.Series:
    date = raw["StudyDate_DICOM"].str.strip().str.replace(r"\.0$", "", regex=True)
    bad = (date != "") & ~date.str.fullmatch(r"\d{8}")
    if bad.any():
        at = first_row(bad)
        raise ValueError(
            f"{path}, row {csv_row(at)}: StudyDate_DICOM {raw['StudyDate_DICOM'].iloc[at]!r} "
            "is not a yyyymmdd date"
        )
    year = pd.to_numeric(date.str[:4].where(date != ""), errors="coerce")
    return (year - numeric_column(raw, "PatientBirth", path)).astype(float)


def _labels(terms: list[list[str]], index: pd.Index) -> pd.DataFrame:
    mapped = list(label_map(KIND))
    sets = [set(row) for row in terms]
    present = pd.DataFrame(
        [[int(term in row) for term in mapped] for row in sets],
        columns=mapped,
        index=index,
        dtype="int8",
    )
    findings = to_nih_findings(present, KIND)
    abnormal = np.array([abnormal_of(row) for row in terms], dtype=np.int8)
    return findings.assign(**{ABNORMAL: abnormal})


def read_padchest_csv(path: Path, skip_bad: bool) -> tuple[pd.DataFrame, dict[str, int]]:
    """The label CSV -> index rows without paths or split, and the rows skipped."""
    raw = read_csv_text(path, REQUIRED_COLUMNS)
    check_unique(raw["ImageID"].str.strip(), "ImageID", path)
    terms, skipped = _read_terms(raw, path, skip_bad)
    table = pd.DataFrame(
        {
            "image_id": raw["ImageID"].str.strip(),
            "patient": raw["PatientID"].str.strip(),
            "age": _age(raw, path),
            "sex": raw["PatientSex_DICOM"].str.strip().where(lambda s: s.isin(["M", "F"]), ""),
            "view": raw["Projection"].str.strip().map(PROJECTIONS).fillna("OTHER"),
        }
    )
    keep = np.array([t is not None for t in terms], dtype=bool)
    table = table[keep].reset_index(drop=True)
    labels = _labels([t for t in terms if t is not None], table.index)
    return pd.concat([table, labels], axis=1), skipped


def build_index(
    root: Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    views: tuple[str, ...] | None = None,
    skip_bad: bool = False,
    **options: object,
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Index a PadChest copy below `root` (see the module docstring). PadChest takes no options.
    `views` default: frontal only (PA, AP, AP_SUPINE); the others are counted in `skipped`.
    Unparseable Labels and missing images are errors, or with `skip_bad` skipped and counted."""
    if options:
        raise ValueError(f"{KIND}: unknown option(s) {sorted(options)} (it takes none)")
    root = dataset_root(root)
    found = find_files(root, {"csv": CSV_PATTERN, "images": IMAGE_PATTERN})
    csv_path = exactly_one(found["csv"], "PadChest label CSV", root, _HINT)
    table, skipped = read_padchest_csv(csv_path, skip_bad)
    table, view_skips = drop_views(table, views)
    images = paths_by_name(found["images"], root)
    table, missing = attach_paths(
        table, table["image_id"].map(images), skip_bad=skip_bad, where=str(csv_path)
    )
    return finish_index(
        table,
        kind=KIND,
        root=root,
        files={"labels_csv": csv_path},
        val_fraction=val_fraction,
        seed=seed,
        skipped={**skipped, **view_skips, "missing_images": missing},
        options={"non_finding_terms": list(NON_FINDING_TERMS)},
    )
