"""RSNA Pneumonia Detection Challenge (Kaggle: rsna-pneumonia-detection-challenge).

Published files (stage 2; stage 1's `stage_1_*` names are accepted when stage 2's are absent):
    stage_2_train_labels.csv          patientId,x,y,width,height,Target: one row per box (Target 1),
                                      one row with empty box fields per image without (Target 0)
    stage_2_detailed_class_info.csv   patientId,class: "Normal", "No Lung Opacity / Not Normal" or
                                      "Lung Opacity", its row repeated once per box
    stage_2_train_images/<patientId>.dcm   1024 x 1024 8-bit DICOMs (JPEG Baseline)
The CSVs' `patientId` names an image (it is our image_id). Patient, sex, age and view come from
each DICOM's header; patient = the header's PatientID (in the release it is the image's own
patientId, so in practice every image is its own patient; an image whose header has none is
its own patient too, and the source counts them). So the split is image-wise in effect: the
release does not say which images share an NIH patient, and one person's images may sit in two
splits (said in the source's `split_policy` and the README). The test images have no labels:
whole PatientIDs are dealt into train / val / test with a seed (common.finish_index).

Targets (option `target`, after Tang et al. 2020):
- "abnormal" (default): all three classes kept; Abnormal = class != "Normal".
- "lung-opacity": "Normal" and "Lung Opacity" kept, Abnormal = "Lung Opacity"; the "No Lung
  Opacity / Not Normal" images are dropped and counted in the source's `skipped`.
Findings: Pneumonia = (class == "Lung Opacity") through data/label_space (RSNA map); every other
NIH finding is UNKNOWN. View: the header's ViewPosition (PA or AP in the release; "FRONTAL"
where absent: the images are NIH's frontal radiographs). Inconsistent CSVs (Target 1 on a class
other than Lung Opacity, an id in one file but not the other, box rows without a box) are errors
naming the file and row.

Boxes: `read_boxes(source)` returns the Target-1 boxes as explain/gradcam.read_bbox_list does
(image_id, finding "Pneumonia", x, y, w, h in the DICOM's pixels); the source lists the file
under `boxes_files`.

The challenge's images are NIH ChestX-ray14 images re-read by radiologists, with new ids: its
patients overlap NIH's (and any NIH split), so an NIH-trained model scored on RSNA is NOT an
independent external test; report it as a re-labelled NIH subset.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from chexvision_lib.core.hashing import file_sha256
from chexvision_lib.core.labels import ABNORMAL
from chexvision_lib.core.text_files import read_table
from chexvision_lib.data.dicom import header_columns
from chexvision_lib.data.label_space import to_nih_findings
from chexvision_lib.data.nih_index import DatasetLayoutError
from chexvision_lib.data.sources.common import (
    attach_paths,
    check_columns,
    dataset_root,
    exactly_one,
    filter_views,
    find_files,
    finish_index,
    resolve_options,
)

KIND = "rsna"
OPTIONS = {"target": ("abnormal", "lung-opacity")}
CLASSES = ("Normal", "No Lung Opacity / Not Normal", "Lung Opacity")
OPACITY = "Lung Opacity"
FINDING = "Pneumonia"  # what a Lung Opacity box marks, in NIH's names (label_space's RSNA map)
BOX_COLUMNS = ("image_id", "finding", "x", "y", "w", "h")  # = explain/gradcam.BBOX_COLUMNS
LABEL_COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
CLASS_COLUMNS = ("patientId", "class")
PATTERNS = {
    "labels": re.compile(r"stage_([12])_train_labels\.csv"),
    "classes": re.compile(r"stage_([12])_detailed_class_info\.csv"),
    "dicom": re.compile(r".+\.dcm", re.IGNORECASE),
}
HINT = (
    "expected the RSNA Pneumonia Detection Challenge files (Kaggle: "
    "rsna-pneumonia-detection-challenge): stage_2_train_labels.csv, "
    "stage_2_detailed_class_info.csv, stage_2_train_images/"
)


def is_marker(path: Path) -> bool:
    return PATTERNS["labels"].fullmatch(Path(path).name) is not None


def _first_row(mask: pd.Series) -> int:
    """The CSV line (header = 1) of the first True in `mask`."""
    return int(mask.to_numpy().nonzero()[0][0]) + 2


def read_labels_csv(path: Path) -> pd.DataFrame:
    """stage_N_train_labels.csv, checked: patientId, x, y, w, h (NaN for negatives), Target."""
    raw = read_table(path, dtype=str, keep_default_na=False)
    check_columns(raw, LABEL_COLUMNS, path)
    ids = raw["patientId"].str.strip()
    if (ids == "").any():
        raise ValueError(f"{path}, row {_first_row(ids == '')}: empty patientId")
    target = raw["Target"].str.strip()
    if not target.isin(["0", "1"]).all():
        row = _first_row(~target.isin(["0", "1"]))
        raise ValueError(f"{path}, row {row}: Target {raw['Target'][row - 2]!r} is not 0 or 1")
    box = raw[["x", "y", "width", "height"]].apply(lambda c: c.str.strip())
    values = box.apply(pd.to_numeric, errors="coerce")
    positive = target == "1"
    bad_box = positive & ~(
        np.isfinite(values).all(axis=1) & (values["width"] > 0) & (values["height"] > 0)
    )
    if bad_box.any():
        row = _first_row(bad_box)
        raise ValueError(
            f"{path}, row {row}: Target 1 needs a box x,y,width,height with positive width and "
            f"height; got {box.iloc[row - 2].tolist()}"
        )
    stray = ~positive & (box != "").any(axis=1)
    if stray.any():
        raise ValueError(f"{path}, row {_first_row(stray)}: Target 0 with box fields filled in")
    frame = pd.DataFrame(
        {
            "image_id": ids,
            "x": values["x"],
            "y": values["y"],
            "w": values["width"],
            "h": values["height"],
            "target": positive.astype(int),
        }
    )
    mixed = frame.groupby("image_id")["target"].transform("nunique") > 1
    if mixed.any():
        row = _first_row(mixed)
        raise ValueError(f"{path}, row {row}: {ids[row - 2]!r} has rows with Target 0 and 1")
    repeated = ~positive & ids.duplicated(keep=False)
    if repeated.any():
        row = _first_row(repeated)
        raise ValueError(f"{path}, row {row}: {ids[row - 2]!r} has more than one Target 0 row")
    return frame


def read_class_csv(path: Path) -> pd.DataFrame:
    """stage_N_detailed_class_info.csv, checked: image_id, class (one row per box)."""
    raw = read_table(path, dtype=str, keep_default_na=False)
    check_columns(raw, CLASS_COLUMNS, path)
    frame = pd.DataFrame(
        {"image_id": raw["patientId"].str.strip(), "class": raw["class"].str.strip()}
    )
    unknown = ~frame["class"].isin(CLASSES)
    if unknown.any():
        row = _first_row(unknown)
        raise ValueError(
            f"{path}, row {row}: class {frame['class'][row - 2]!r} is not one of {list(CLASSES)}"
        )
    mixed = frame.groupby("image_id")["class"].transform("nunique") > 1
    if mixed.any():
        row = _first_row(mixed)
        raise ValueError(f"{path}, row {row}: {frame['image_id'][row - 2]!r} has several classes")
    return frame


def read_images(labels_csv: Path, class_csv: Path) -> pd.DataFrame:
    """One row per image (first-appearance order): image_id, class, boxes; the two CSVs checked
    against each other."""
    labels, classes = read_labels_csv(labels_csv), read_class_csv(class_csv)
    for path, frame, other, other_path in (
        (class_csv, classes, labels, labels_csv),
        (labels_csv, labels, classes, class_csv),
    ):
        alone = ~frame["image_id"].isin(set(other["image_id"]))
        if alone.any():
            row = _first_row(alone)
            raise ValueError(
                f"{path}, row {row}: patientId {frame['image_id'][row - 2]!r} is not in "
                f"{other_path}"
            )
    per_image = labels.groupby("image_id", sort=False).agg(
        target=("target", "first"), boxes=("target", "sum"), rows=("target", "size")
    )
    kinds = classes.groupby("image_id", sort=False).agg(
        **{"class": ("class", "first"), "class_rows": ("class", "size")}
    )
    table = per_image.join(kinds).reset_index()
    wrong = (table["target"] == 1) != (table["class"] == OPACITY)
    if wrong.any():
        image = table.loc[wrong, "image_id"].iloc[0]
        row = _first_row(labels["image_id"] == image)
        target, got = table.loc[wrong, ["target", "class"]].iloc[0]
        raise ValueError(
            f"{labels_csv}, row {row}: {image!r} has Target {target} but class {got!r} in "
            f"{class_csv} (Target 1 goes with {OPACITY!r} only)"
        )
    uneven = table["rows"] != table["class_rows"]
    if uneven.any():
        image = table.loc[uneven, "image_id"].iloc[0]
        raise ValueError(
            f"{class_csv}, row {_first_row(classes['image_id'] == image)}: {image!r} has "
            f"{int(table.loc[uneven, 'class_rows'].iloc[0])} row(s) but "
            f"{int(table.loc[uneven, 'rows'].iloc[0])} in {labels_csv} (one per box in both)"
        )
    return table[["image_id", "class", "boxes"]]


def _locate(root: Path) -> tuple[Path, Path, dict[str, Path]]:
    """The labels and class CSVs of the newest stage found, and that stage's train images."""
    found = find_files(root, PATTERNS)
    stages = {int(PATTERNS["labels"].fullmatch(p.name).group(1)) for p in found["labels"]}
    if not stages:
        raise DatasetLayoutError(f"no stage_2_train_labels.csv found anywhere below {root}; {HINT}")
    stage = max(stages)  # stage 2's train set holds stage 1's train and test images, relabelled
    labels = exactly_one(
        [p for p in found["labels"] if p.name.startswith(f"stage_{stage}_")],
        f"stage_{stage}_train_labels.csv",
        root,
        HINT,
    )
    classes = exactly_one(
        [p for p in found["classes"] if p.name.startswith(f"stage_{stage}_")],
        f"stage_{stage}_detailed_class_info.csv",
        root,
        HINT,
    )
    folder = f"stage_{stage}_train_images"
    images: dict[str, Path] = {}
    for path in found["dicom"]:
        if path.parent.name != folder:
            continue
        if path.stem in images:
            raise DatasetLayoutError(
                f"image {path.name} is in two {folder} folders ({images[path.stem]}, {path}); "
                "point the root at one copy"
            )
        images[path.stem] = path
    return labels, classes, images


def build_index(
    root: Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    views: tuple[str, ...] | None = None,
    skip_bad: bool = False,
    **options: object,
) -> tuple[pd.DataFrame, dict]:
    """Index an RSNA copy below `root` (see the module docstring)."""
    chosen = resolve_options(KIND, OPTIONS, options)
    root = dataset_root(root)
    labels_csv, class_csv, images = _locate(root)
    table = read_images(labels_csv, class_csv)
    skipped: dict[str, int] = {}
    if chosen["target"] == "lung-opacity":
        keep = table["class"].isin(["Normal", OPACITY])
        skipped["no_lung_opacity_not_normal"] = int((~keep).sum())
        table = table[keep].reset_index(drop=True)
    paths = table["image_id"].map(lambda i: str(images[i]) if i in images else None)
    table, skipped["missing_images"] = attach_paths(
        table, paths, skip_bad=skip_bad, where=str(labels_csv)
    )
    table, skipped["unreadable_dicom"], no_patient = header_columns(
        table, skip_bad=skip_bad, what=KIND
    )
    table, skipped["other_views"] = filter_views(table, views)
    one_hot = pd.DataFrame({name: (table["class"] == name).astype(int) for name in CLASSES})
    findings = to_nih_findings(one_hot, KIND)
    abnormal = table["class"] != "Normal"
    table = pd.concat([table, findings], axis=1).assign(**{ABNORMAL: abnormal.astype("int8")})
    table = table.drop(columns=["class", "boxes"])
    table, source = finish_index(
        table,
        kind=KIND,
        root=root,
        files={"labels_csv": labels_csv, "class_info_csv": class_csv},
        val_fraction=val_fraction,
        seed=seed,
        skipped=skipped,
        options=chosen,
    )
    source["patient_from"] = "DICOM PatientID; the image's patientId where the header has none"
    if table["patient"].nunique() == len(table):  # the release: one PatientID per image
        source["split_policy"] += (
            "; every PatientID has one image, so the split is image-wise in effect (RSNA does "
            "not say which images share an NIH patient)"
        )
    source["images_without_patient_id"] = no_patient
    source["boxes_files"] = [source["files"]["labels_csv"]]
    return table, source


def read_boxes(source: dict) -> pd.DataFrame:
    """The Lung Opacity boxes of the labels CSV a source was built from (`boxes_files`; checked
    against its recorded SHA-256): image_id, finding ("Pneumonia"), x, y, w, h in the DICOM's
    pixels, one row per box."""
    (name,) = source["boxes_files"]
    path = Path(name)
    recorded = source.get("sha256", {}).get("labels_csv")
    if recorded and file_sha256(path) != recorded:
        raise ValueError(f"{path} has changed since the index was built (SHA-256 differs)")
    labels = read_labels_csv(path)
    boxes = labels[labels["target"] == 1].assign(finding=FINDING)
    return (
        boxes.loc[:, list(BOX_COLUMNS)]
        .reset_index(drop=True)
        .astype({"image_id": str, "finding": str, "x": float, "y": float, "w": float, "h": float})
    )
