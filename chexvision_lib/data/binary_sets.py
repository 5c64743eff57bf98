"""Binary (normal vs abnormal) datasets from elsewhere: a folder per class, or a CSV.

Tang et al. (2020) validated externally on such sets (e.g. the paediatric pneumonia set: `NORMAL/`,
`PNEUMONIA/`). The result is an index table with the same columns as the NIH index; the 14 finding
columns hold labels.UNKNOWN, so training and metrics use the abnormal output only.
Splits are grouped by patient whenever patients are known.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from chexvision_lib.core.hashing import file_sha256
from chexvision_lib.core.labels import ABNORMAL, FINDINGS, UNKNOWN
from chexvision_lib.core.text_files import read_table
from chexvision_lib.data.nih_index import IMAGE_SUFFIXES, INDEX_COLUMNS, split_counts
from chexvision_lib.data.provenance import holds_synthetic_marker
from chexvision_lib.data.splits import grouped_split

NORMAL_CLASS_NAMES = ("NORMAL", "Normal", "normal", "0", "negative", "NEGATIVE")
# Paediatric set (Kermany et al. 2018): person123_bacteria_456.jpeg, IM-0001-0001.jpeg,
# NORMAL2-IM-0012-0001.jpeg -> patient = the prefix before the view number.
DEFAULT_PATIENT_PATTERN = r"^(person\d+|(?:NORMAL2-)?IM-\d+)"


def patient_from_filename(name: str, pattern: str = DEFAULT_PATIENT_PATTERN) -> str | None:
    match = re.match(pattern, name)
    return match.group(1) if match else None


def _folder_table(root: Path, patient_pattern: str | None) -> pd.DataFrame:
    rows = []
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    for folder in classes:
        label = 0 if folder.name in NORMAL_CLASS_NAMES else 1
        for path in sorted(folder.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                patient = (
                    patient_from_filename(path.name, patient_pattern) if patient_pattern else None
                )
                rows.append(
                    {
                        "image_id": f"{folder.name}/{path.name}",
                        "path": str(path),
                        "patient": patient,
                        ABNORMAL: label,
                    }
                )
    labels = {0 if f.name in NORMAL_CLASS_NAMES else 1 for f in classes}
    if labels != {0, 1}:
        raise ValueError(
            f"{root}: need one normal folder (one of {NORMAL_CLASS_NAMES}) and at least one "
            f"abnormal folder; found {[f.name for f in classes]}"
        )
    return pd.DataFrame(rows)


def _csv_table(csv_path: Path) -> pd.DataFrame:
    raw = read_table(csv_path, dtype=str, keep_default_na=False)
    for column in ("path", "label"):
        if column not in raw.columns:
            raise ValueError(
                f"{csv_path}: needs columns path,label[,patient]; found {list(raw.columns)}"
            )
    bad = ~raw["label"].isin(["0", "1"])
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise ValueError(
            f"{csv_path}, row {row + 2}: label must be 0 or 1, got {raw['label'].iloc[row]!r}"
        )
    paths = [p if Path(p).is_absolute() else str(csv_path.parent / p) for p in raw["path"]]
    return pd.DataFrame(
        {
            "image_id": raw["path"],
            "path": paths,
            "patient": raw["patient"] if "patient" in raw.columns else None,
            ABNORMAL: raw["label"].astype(int),
        }
    )


def build_binary_index(
    source: str | Path,
    *,
    fractions: dict[str, float] | None = None,
    seed: int = 0,
    patient_pattern: str | None = DEFAULT_PATIENT_PATTERN,
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Index a folder-per-class tree or a `path,label[,patient]` CSV as a binary dataset.

    Splits (default train 0.6 / val 0.1 / test 0.3) are drawn by patient; images whose patient
    cannot be read from the name count as their own patient (and the source says how many).
    """
    source = Path(source).resolve()  # recorded: later steps may run from another directory
    fractions = fractions or {"train": 0.6, "val": 0.1, "test": 0.3}
    if source.is_dir():
        table = _folder_table(source, patient_pattern)
    elif source.is_file():
        table = _csv_table(source)
    else:
        raise FileNotFoundError(f"external dataset {source} is neither a folder nor a CSV file")
    if table.empty:
        raise ValueError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    missing_patient = table["patient"].isna() | (table["patient"] == "")
    table.loc[missing_patient, "patient"] = "image:" + table.loc[missing_patient, "image_id"]
    table["split"] = grouped_split(table["patient"], fractions, seed)
    for finding in FINDINGS:
        table[finding] = UNKNOWN
    table["age"], table["sex"], table["view"] = float("nan"), "", ""
    table = table.loc[:, list(INDEX_COLUMNS)]
    info: dict[str, object] = {
        "kind": "binary",
        "root": str(source),
        "synthetic": holds_synthetic_marker([source if source.is_dir() else source.parent]),
        "fractions": fractions,
        "seed": seed,
        "patient_pattern": patient_pattern,
        "images_without_patient": int(missing_patient.sum()),
        "counts": split_counts(table),
    }
    if source.is_file():  # the labels file identifies the data; a folder tree has no one file
        info.update(labels_csv=str(source), sha256={"labels_csv": file_sha256(source)})
    return table, info
