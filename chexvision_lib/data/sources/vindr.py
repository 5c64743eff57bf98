"""VinDr-CXR (Nguyen et al. 2022) as published on PhysioNet (vindr-cxr 1.0.0), or on Kaggle.

PhysioNet layout (found by walking the root):
    annotations/image_labels_train.csv  image_id, rad_id, one 0/1 column per label (22 local, 6
                                        global incl. "Other diseases" and "No finding"); one row
                                        per reader, 3 readers per training image
    annotations/image_labels_test.csv   one consensus row per test image (no rad_id; the test file
                                        spells "Other disease", read as "Other diseases")
    annotations/annotations_{train,test}.csv  image_id, rad_id, class_name, x_min, y_min, x_max,
                                        y_max; "No finding" rows have empty boxes
    train/<image_id>.dicom, test/<image_id>.dicom
Splits: the official train / test; validation is carved from train by patient (finish_index).
Kaggle competition layout (vinbigdata-chest-xray-abnormalities-detection) is read too: train.csv
(image_id, class_name, class_id, rad_id, x_min, ...: the 14 local classes and "No finding", a row
per box or per "No finding" reader) and train/<image_id>.dicom. A reader's labels there are the
classes of its boxes, so the global labels (Pneumonia, ...) and the classes the competition
dropped (Edema, Emphysema, ...) are UNKNOWN; its test images have no labels, so whole patients
are dealt into train / val / test with a seed.

Label rule (option `labels`), per image over its readers' rows:
- "majority" (default): a label is 1 when more than half the readers marked it (>= 2 of the 3
  training readers; the test set's single consensus row counts as it is);
- "any": 1 when at least one reader marked it.
Each label then maps to the NIH findings through data/label_space (VinDr map; unmapped NIH
findings are UNKNOWN). Abnormal follows the same rule applied to each reader's "not No finding":
under "majority" an image is abnormal when most readers found something, under "any" when one
did. A reader row with "No finding" and a finding is an error naming the row; a row with neither
counts as that reader finding nothing (the source counts such rows: `reader_rows_without_labels`).

Patient: VinDr's DICOM headers are anonymised and most carry no PatientID; patient = the header's
PatientID where present, else the image_id (the image is its own patient; the source counts
them). View: the header's ViewPosition; where it is absent, "FRONTAL" (the release holds frontal
adult radiographs only). Boxes: `read_boxes(source)` returns every reader's boxes of the classes
that map to an NIH finding, as explain/gradcam.read_bbox_list does (image_id, finding, x, y, w, h
in the DICOM's pixels; train images may carry up to three readers' boxes of one lesion).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from chexvision_lib.core.hashing import file_sha256
from chexvision_lib.core.labels import ABNORMAL, UNKNOWN
from chexvision_lib.core.text_files import read_table
from chexvision_lib.data.dicom import header_columns
from chexvision_lib.data.label_space import label_map, to_nih_findings
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

KIND = "vindr"
OPTIONS = {"labels": ("majority", "any")}
NO_FINDING = "No finding"
BOX_COLUMNS = ("image_id", "finding", "x", "y", "w", "h")  # = explain/gradcam.BBOX_COLUMNS
ANNOTATION_COLUMNS = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")
# The Kaggle competition's classes (class_id 0..14, "No finding" = 14).
KAGGLE_CLASSES = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    NO_FINDING,
)
# The test file's spelling of the training file's "Other diseases" (the same label).
SPELLINGS = {"Other disease": "Other diseases"}
KAGGLE_COLUMNS = (
    "image_id",
    "class_name",
    "class_id",
    "rad_id",
    "x_min",
    "y_min",
    "x_max",
    "y_max",
)
PATTERNS = {
    "image_labels_train": re.compile(r"image_labels_train\.csv"),
    "image_labels_test": re.compile(r"image_labels_test\.csv"),
    "annotations_train": re.compile(r"annotations_train\.csv"),
    "annotations_test": re.compile(r"annotations_test\.csv"),
    "train_csv": re.compile(r"train\.csv"),
    "dicom": re.compile(r".+\.dicom", re.IGNORECASE),
}
HINT = (
    "expected VinDr-CXR as on PhysioNet (annotations/image_labels_train.csv, "
    "annotations/image_labels_test.csv, train/, test/) or the Kaggle competition's train.csv "
    "and train/"
)


def _kaggle_header(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            first = handle.readline().strip()
    except (OSError, UnicodeDecodeError):
        return False
    return first.split(",")[: len(KAGGLE_COLUMNS)] == list(KAGGLE_COLUMNS)


def is_marker(path: Path) -> bool:
    """image_labels_train.csv (PhysioNet), or a train.csv with the Kaggle competition's header."""
    path = Path(path)
    if path.name == "image_labels_train.csv":
        return True
    return path.name == "train.csv" and _kaggle_header(path)


def _row(mask: pd.Series | np.ndarray) -> int:
    """The CSV line (header = 1) of the first True in `mask`."""
    return int(np.asarray(mask).nonzero()[0][0]) + 2


def _reader_column(frame: pd.DataFrame) -> str | None:
    return next((c for c in frame.columns if c.lower() == "rad_id"), None)


def read_reader_labels(path: Path) -> pd.DataFrame:
    """image_labels_{train,test}.csv, checked: image_id, one 0/1 column per label, one row per
    reader (or one consensus row)."""
    raw = read_table(path, dtype=str, keep_default_na=False)
    check_columns(raw, ["image_id", NO_FINDING], path)
    reader = _reader_column(raw)
    names = [c for c in raw.columns if c not in ("image_id", reader)]
    known = label_map(KIND)
    unknown = [c for c in names if c not in known]
    if unknown:
        raise ValueError(f"{path}: unknown label column(s) {unknown}; VinDr's are {sorted(known)}")
    values = raw[names].apply(lambda c: pd.to_numeric(c.str.strip(), errors="coerce"))
    bad = ~values.isin([0, 1])
    if bad.any().any():
        column = bad.any()[bad.any()].index[0]
        row = _row(bad[column])
        raise ValueError(
            f"{path}, row {row}: {column!r} is {raw[column][row - 2]!r}; expected 0 or 1"
        )
    values = values.astype("int8")
    found = values.drop(columns=[NO_FINDING]).max(axis=1)
    contradiction = (values[NO_FINDING] == 1) & (found == 1)
    if contradiction.any():
        raise ValueError(
            f"{path}, row {_row(contradiction)}: {NO_FINDING!r} together with findings"
        )
    keys = raw[["image_id"] + ([reader] if reader else [])].apply(lambda c: c.str.strip())
    repeated = keys.duplicated()
    if repeated.any():
        what = "image and reader" if reader else "image"
        raise ValueError(f"{path}, row {_row(repeated)}: the same {what} appears twice")
    return pd.concat([keys[["image_id"]], values], axis=1)


def apply_rule(readers: pd.DataFrame, rule: str) -> pd.DataFrame:
    """Per image (first-appearance order): each label 0/1 under `rule` over its reader rows
    (module docstring), and Abnormal under the same rule over "the reader marked a finding"."""
    findings = readers.drop(columns=["image_id", NO_FINDING])
    readers = readers.assign(**{ABNORMAL: findings.max(axis=1)})
    grouped = readers.groupby("image_id", sort=False)
    votes, count = grouped.sum(), grouped.size()
    marked = votes.mul(2).gt(count, axis=0) if rule == "majority" else votes.ge(1)
    return marked.astype("int8").reset_index()


def _kaggle_readers(path: Path) -> pd.DataFrame:
    """train.csv of the Kaggle competition -> one row per (image, reader) with a 0/1 column per
    class, the same frame read_reader_labels gives."""
    boxes = read_annotations(path)
    check_columns(boxes, ["rad_id"], path)
    other = ~boxes["class_name"].isin(KAGGLE_CLASSES)
    if other.any():
        row = _row(other)
        raise ValueError(
            f"{path}, row {row}: {boxes['class_name'][row - 2]!r} is not a class of "
            f"the Kaggle competition ({list(KAGGLE_CLASSES)})"
        )
    table = pd.crosstab([boxes["image_id"], boxes["rad_id"]], boxes["class_name"]).clip(upper=1)
    table = table.reindex(columns=list(KAGGLE_CLASSES), fill_value=0).astype("int8")
    order = boxes.drop_duplicates(["image_id", "rad_id"])[["image_id", "rad_id"]]
    table = table.loc[pd.MultiIndex.from_frame(order)]
    mixed = (table[NO_FINDING] == 1) & (table.drop(columns=[NO_FINDING]).max(axis=1) == 1)
    if mixed.any():
        image, reader = table.index[mixed.to_numpy()][0]
        row = _row((boxes["image_id"] == image) & (boxes["rad_id"] == reader))
        raise ValueError(f"{path}, row {row}: reader {reader} marks {NO_FINDING!r} and findings")
    return table.reset_index().drop(columns=["rad_id"])


def read_annotations(path: Path) -> pd.DataFrame:
    """annotations_{train,test}.csv or Kaggle's train.csv, checked: boxes with x_min < x_max and
    y_min < y_max; "No finding" rows with empty boxes; class names VinDr's."""
    raw = read_table(path, dtype=str, keep_default_na=False)
    check_columns(raw, ANNOTATION_COLUMNS, path)
    frame = raw.apply(lambda c: c.str.strip())
    known = label_map(KIND)
    unknown = ~frame["class_name"].isin(list(known))
    if unknown.any():
        row = _row(unknown)
        raise ValueError(f"{path}, row {row}: class_name {raw['class_name'][row - 2]!r} unknown")
    corners = frame[["x_min", "y_min", "x_max", "y_max"]]
    values = corners.apply(pd.to_numeric, errors="coerce")
    empty = (corners == "").all(axis=1)
    boxed = frame["class_name"] != NO_FINDING
    valid = np.isfinite(values).all(axis=1)
    valid &= (values["x_max"] > values["x_min"]) & (values["y_max"] > values["y_min"])
    bad = boxed & ~valid | ~boxed & ~empty
    if bad.any():
        row = _row(bad)
        raise ValueError(
            f"{path}, row {row}: {raw['class_name'][row - 2]!r} with box "
            f"{corners.iloc[row - 2].tolist()}; a finding needs x_min < x_max, y_min < y_max and "
            f"{NO_FINDING!r} an empty box"
        )
    return pd.concat([frame.drop(columns=list(corners.columns)), values], axis=1)


def _check_annotated_images(path: Path, boxes: pd.DataFrame, images: set[str], where: Path):
    alone = ~boxes["image_id"].isin(images)
    if alone.any():
        row = _row(alone)
        raise ValueError(
            f"{path}, row {row}: image {boxes['image_id'][row - 2]!r} is not in {where}"
        )


def _locate(root: Path) -> tuple[str, dict[str, Path], dict[tuple[str, str], Path]]:
    """(layout, the metadata files, (split folder, image_id) -> DICOM path)."""
    found = find_files(root, PATTERNS)
    files: dict[str, Path] = {}
    if found["image_labels_train"]:
        layout = "physionet"
        for key in ("image_labels_train", "image_labels_test"):
            files[key] = exactly_one(found[key], f"{key}.csv", root, HINT)
        for key in ("annotations_train", "annotations_test"):
            if found[key]:
                files[key] = exactly_one(found[key], f"{key}.csv", root, HINT)
    else:
        kaggle = [p for p in found["train_csv"] if _kaggle_header(p)]
        if not kaggle:
            raise DatasetLayoutError(f"no VinDr-CXR label file found anywhere below {root}; {HINT}")
        layout = "kaggle"
        files["train_csv"] = exactly_one(kaggle, "Kaggle VinDr train.csv", root, HINT)
    images: dict[tuple[str, str], Path] = {}
    for path in found["dicom"]:
        key = (path.parent.name, path.stem)
        if key in images:
            raise DatasetLayoutError(
                f"image {path.name} is in two {key[0]}/ folders ({images[key]}, {path}); point "
                "the root at one copy"
            )
        images[key] = path
    return layout, files, images


def _blank_rows(readers: pd.DataFrame) -> int:
    """Reader rows that mark nothing, not even "No finding"."""
    return int((readers.drop(columns=["image_id"]).max(axis=1) == 0).sum())


def _labelled_images(layout: str, files: dict[str, Path], rule: str) -> tuple[pd.DataFrame, int]:
    """Per image: split (NA without an official one), the labels under `rule`, Abnormal; and the
    number of reader rows that mark nothing."""
    if layout == "kaggle":
        readers = _kaggle_readers(files["train_csv"])
        table = apply_rule(readers, rule).assign(split=pd.NA, folder="train")
        return table, _blank_rows(readers)
    parts, blank = [], 0
    for split in ("train", "test"):
        labels_path = files[f"image_labels_{split}"]
        readers = read_reader_labels(labels_path)
        if f"annotations_{split}" in files:
            path = files[f"annotations_{split}"]
            _check_annotated_images(
                path, read_annotations(path), set(readers["image_id"]), labels_path
            )
        readers = readers.rename(columns=SPELLINGS)
        blank += _blank_rows(readers)
        parts.append(apply_rule(readers, rule).assign(split=split, folder=split))
    both = set(parts[0]["image_id"]) & set(parts[1]["image_id"])
    if both:
        raise ValueError(
            f"{len(both)} image(s) are in both {files['image_labels_train']} and "
            f"{files['image_labels_test']}, e.g. {sorted(both)[:3]}"
        )
    table = pd.concat(parts, ignore_index=True)
    # A label only one split's file has is unknown for the other split's images.
    return table.fillna({c: UNKNOWN for c in table.columns if c in label_map(KIND)}), blank


def build_index(
    root: Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    views: tuple[str, ...] | None = None,
    skip_bad: bool = False,
    **options: object,
) -> tuple[pd.DataFrame, dict]:
    """Index a VinDr-CXR copy below `root` (see the module docstring)."""
    chosen = resolve_options(KIND, OPTIONS, options)
    root = dataset_root(root)
    layout, files, images = _locate(root)
    table, blank = _labelled_images(layout, files, str(chosen["labels"]))
    keys = zip(table["folder"], table["image_id"], strict=True)
    paths = pd.Series([str(images[k]) if k in images else None for k in keys], index=table.index)
    where = " / ".join(str(p) for k, p in files.items() if not k.startswith("annotations"))
    skipped: dict[str, int] = {}
    table, skipped["missing_images"] = attach_paths(table, paths, skip_bad=skip_bad, where=where)
    table, skipped["unreadable_dicom"], no_patient = header_columns(
        table, skip_bad=skip_bad, what=KIND
    )
    table, skipped["other_views"] = filter_views(table, views)
    label_names = [c for c in table.columns if c in label_map(KIND)]
    findings = to_nih_findings(table[label_names].astype(int), KIND)
    table = pd.concat([table.drop(columns=[*label_names, "folder"]), findings], axis=1)
    table, source = finish_index(
        table,
        kind=KIND,
        root=root,
        files=files,
        val_fraction=val_fraction,
        seed=seed,
        skipped=skipped,
        options={**chosen, "layout": layout},
    )
    source["patient_from"] = "DICOM PatientID; the image_id where the header has none"
    source["images_without_patient_id"] = no_patient
    source["reader_rows_without_labels"] = blank
    boxes = ["annotations_train", "annotations_test"] if layout == "physionet" else ["train_csv"]
    source["boxes_files"] = [source["files"][k] for k in boxes if k in source["files"]]
    return table, source


def read_boxes(source: dict) -> pd.DataFrame:
    """Every reader's boxes of the classes that map to an NIH finding, from the annotation files
    a source was built from (checked against their recorded SHA-256): image_id, finding, x, y,
    w, h in the DICOM's pixels. Classes without an NIH finding (Nodule/Mass, Aortic enlargement,
    ...) are left out."""
    mapping = label_map(KIND)
    by_path = {path: key for key, path in source.get("files", {}).items()}
    frames = []
    for name in source["boxes_files"]:
        path = Path(name)
        recorded = source.get("sha256", {}).get(by_path.get(name, ""))
        if recorded and file_sha256(path) != recorded:
            raise ValueError(f"{path} has changed since the index was built (SHA-256 differs)")
        boxes = read_annotations(path)
        boxes = boxes[boxes["class_name"].map(mapping).notna()]
        frames.append(
            pd.DataFrame(
                {
                    "image_id": boxes["image_id"],
                    "finding": boxes["class_name"].map(mapping),
                    "x": boxes["x_min"],
                    "y": boxes["y_min"],
                    "w": boxes["x_max"] - boxes["x_min"],
                    "h": boxes["y_max"] - boxes["y_min"],
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=BOX_COLUMNS)
    return frame.loc[:, list(BOX_COLUMNS)].astype(
        {"image_id": str, "finding": str, "x": float, "y": float, "w": float, "h": float}
    )
