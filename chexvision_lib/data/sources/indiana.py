"""Indiana University chest X-rays (Open-i; Demner-Fushman et al. 2016), as Kaggle mounts them
("raddar/chest-xrays-indiana-university").

Layout:
    indiana_reports.csv       uid, MeSH, Problems, image, indication, comparison, findings,
                              impression (one row per report)
    indiana_projections.csv   uid, filename, projection (Frontal / Lateral; one row per image)
    images/images_normalized/1_IM-0001-4001.dcm.png, ...
Images are found by their (unique) name anywhere below the root.

- Problems: ';'-separated MeSH-style terms ("Cardiomegaly;Pulmonary Artery"), stripped.
  Abnormal: 0 when Problems is "normal" alone (case and spaces aside), else 1 (so also for
  "technical quality of image unsatisfactory" alone). Findings (label_space's Indiana map,
  matched without regard to case): 1 where a term mapping to the finding is present, else 0;
  Pleural Thickening has no Indiana term and is UNKNOWN. A report with a blank Problems is
  skipped and counted ("reports_without_problems").
- Patient: uid (the report; Open-i does not link reports of one person). Image id: filename.
  Age and sex are not published: NaN and "".
- Views: Frontal -> FRONTAL (PA/AP is not recorded), Lateral -> LATERAL; by default only the
  frontal images are kept and the laterals counted ("lateral_views").
- Split: none is published; whole reports are dealt into train/val/test with the seed.
  (Tang et al. 2020 fine-tuned on 3,381 and tested on 432 Indiana images.)
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from chexvision_lib.core.labels import ABNORMAL
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
    paths_by_name,
    read_csv_text,
)

KIND = "indiana"
OPTIONS: dict[str, tuple[str, ...]] = {}
REPORT_COLUMNS = ("uid", "Problems")
PROJECTION_COLUMNS = ("uid", "filename", "projection")
PATTERNS = {
    "reports": re.compile(r"indiana_reports\.csv"),
    "projections": re.compile(r"indiana_projections\.csv"),
    "images": re.compile(r".+\.png", re.IGNORECASE),
}
NORMAL = "normal"
_VIEWS = {"Frontal": "FRONTAL", "Lateral": "LATERAL"}
_HINT = (
    "expected the Kaggle Indiana University set: indiana_reports.csv, indiana_projections.csv "
    "and images/images_normalized/ (/kaggle/input/chest-xrays-indiana-university)"
)


def is_marker(path: Path) -> bool:
    """The Kaggle copy's projections file."""
    return path.name == "indiana_projections.csv"


def problem_terms(text: str) -> list[str]:
    """The terms of a Problems cell: "Cardiomegaly; Pulmonary Artery" -> ["Cardiomegaly",
    "Pulmonary Artery"]."""
    return [term.strip() for term in text.split(";") if term.strip()]


def _report_labels(reports_csv: Path) -> tuple[pd.DataFrame, set[str]]:
    """One row per report with a Problems entry (uid, the 14 findings, Abnormal), and the uids of
    the reports whose Problems is blank."""
    raw = read_csv_text(reports_csv, REPORT_COLUMNS)
    raw = raw.assign(uid=raw["uid"].str.strip())
    check_unique(raw["uid"], "uid", reports_csv)
    blank = raw["Problems"].str.strip() == ""
    blank_uids = set(raw.loc[blank, "uid"])
    raw = raw[~blank].reset_index(drop=True)
    terms = [{t.lower() for t in problem_terms(text)} for text in raw["Problems"]]
    mapped = list(label_map(KIND))
    present = pd.DataFrame(
        [[int(name.lower() in row) for name in mapped] for row in terms],
        columns=mapped,
        dtype="int8",
    )
    abnormal = np.array([0 if row == {NORMAL} else 1 for row in terms], dtype=np.int8)
    labels = to_nih_findings(present, KIND).assign(**{ABNORMAL: abnormal})
    return pd.concat([raw[["uid"]], labels], axis=1), blank_uids


def _projections(path: Path) -> pd.DataFrame:
    raw = read_csv_text(path, PROJECTION_COLUMNS)
    view = raw["projection"].str.strip().map(_VIEWS)
    if view.isna().any():
        at = first_row(view.isna())
        raise ValueError(
            f"{path}, row {csv_row(at)}: projection {raw['projection'].iloc[at]!r} is not "
            "Frontal or Lateral"
        )
    filename = raw["filename"].str.strip()
    check_unique(filename, "filename", path)
    return pd.DataFrame({"uid": raw["uid"].str.strip(), "image_id": filename, "view": view})


def _labelled_images(
    images: pd.DataFrame, reports_csv: Path, projections_csv: Path, skip_bad: bool
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Images with their report's labels. An image whose uid has no report is an error, or with
    `skip_bad` dropped and counted; images of a report with a blank Problems are dropped and
    counted."""
    labels, blank_uids = _report_labels(reports_csv)
    without_report = ~images["uid"].isin(set(labels["uid"]) | blank_uids)
    if without_report.any() and not skip_bad:
        at = first_row(without_report)
        raise ValueError(
            f"{projections_csv}, row {csv_row(at)}: uid {images['uid'].iloc[at]!r} has no "
            f"report in {reports_csv} (pass --skip-bad to skip and count such images)"
        )
    unlabelled = images["uid"].isin(blank_uids)
    table = images[~without_report & ~unlabelled].merge(
        labels, on="uid", how="left", validate="many_to_one"
    )
    return table, {
        "reports_without_problems": len(blank_uids),
        "images_of_reports_without_problems": int(unlabelled.sum()),
        "images_without_report": int(without_report.sum()),
    }


def build_index(
    root: Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    views: tuple[str, ...] | None = None,
    skip_bad: bool = False,
    **options: object,
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Index the Kaggle Indiana University copy below `root` (see the module docstring); it
    takes no options. `views` default: frontal only; the laterals are counted in `skipped`.
    Missing images are an error, or with `skip_bad` dropped and counted."""
    if options:
        raise ValueError(f"{KIND}: unknown option(s) {sorted(options)} (it takes none)")
    root = dataset_root(root)
    found = find_files(root, PATTERNS)
    reports_csv = exactly_one(found["reports"], "indiana_reports.csv", root, _HINT)
    projections_csv = exactly_one(found["projections"], "indiana_projections.csv", root, _HINT)
    table, unlabelled = _labelled_images(
        _projections(projections_csv), reports_csv, projections_csv, skip_bad
    )
    table = table.assign(patient=table["uid"], age=np.nan, sex="").drop(columns="uid")
    table, skipped = drop_views(table, views)
    by_name = paths_by_name(found["images"], root)
    table, missing = attach_paths(
        table, table["image_id"].map(by_name), skip_bad=skip_bad, where=str(projections_csv)
    )
    skipped.update(unlabelled, missing_images=missing)
    return finish_index(
        table,
        kind=KIND,
        root=root,
        files={"reports_csv": reports_csv, "projections_csv": projections_csv},
        val_fraction=val_fraction,
        seed=seed,
        skipped=skipped,
        options={},
    )
