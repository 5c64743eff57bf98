"""Index an NIH ChestX-ray14 copy: find the metadata CSV, split lists and images below a root.

Output: one table, one row per image, with columns
    image_id, path, patient, age, sex, view, <14 findings>, Abnormal, split
plus a `source` dict recording which files were used (absolute, resolved paths), whether the
folder is the built-in synthetic set (its marker file is present) and the files' SHA-256. The
source travels into every run and model card, which may be built later from any working
directory: `data.provenance.verify_nih_source` decides from it alone whether the data is NIH's
release with its official split.

Kaggle mounts the dataset at different depths over time
(`/kaggle/input/nih-chest-xrays/data/images_001/images/...`,
`/kaggle/input/datasets/<owner>/<slug>/...`), so everything is found by walking the root rather than
by fixed paths.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from chexvision_lib.core.hashing import file_sha256
from chexvision_lib.core.labels import ABNORMAL, FINDINGS, parse_finding_labels
from chexvision_lib.core.text_files import read_table
from chexvision_lib.data.provenance import content_sha256
from chexvision_lib.data.splits import carve_validation, check_patient_disjoint, read_split_list
from chexvision_lib.data.synthetic import MARKER_NAME

DATA_ENTRY_PATTERN = re.compile(r"^Data_Entry_2017.*\.csv(\.gz)?$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")
SEX_COLUMNS = ("Patient Gender", "Patient Sex")
VIEWS = ("PA", "AP")
INDEX_COLUMNS = ("image_id", "path", "patient", "age", "sex", "view", *FINDINGS, ABNORMAL, "split")


class DatasetLayoutError(FileNotFoundError):
    """The root does not hold what an NIH copy needs; the message says what was looked for."""


@dataclass
class NIHIndex:
    table: pd.DataFrame
    source: dict[str, object] = field(default_factory=dict)


@dataclass
class _Found:
    data_entry: list[Path] = field(default_factory=list)
    train_val: list[Path] = field(default_factory=list)
    test: list[Path] = field(default_factory=list)
    images: dict[str, Path] = field(default_factory=dict)
    duplicate_images: list[str] = field(default_factory=list)
    synthetic_markers: list[Path] = field(default_factory=list)


def _walk(root: Path) -> _Found:
    found = _Found()
    for directory, _dirs, files in os.walk(root, followlinks=True):
        for name in files:
            if DATA_ENTRY_PATTERN.match(name):
                found.data_entry.append(Path(directory, name))
            elif name == "train_val_list.txt":
                found.train_val.append(Path(directory, name))
            elif name == "test_list.txt":
                found.test.append(Path(directory, name))
            elif name == MARKER_NAME:
                found.synthetic_markers.append(Path(directory, name))
            elif name.lower().endswith(IMAGE_SUFFIXES):
                if name in found.images:
                    found.duplicate_images.append(name)
                found.images[name] = Path(directory, name)
    return found


def exactly_one(paths: list[Path], what: str, root: Path, hint: str) -> Path:
    if not paths:
        raise DatasetLayoutError(f"no {what} found anywhere below {root}; {hint}")
    if len(paths) > 1:
        listed = ", ".join(str(p) for p in sorted(paths))
        raise DatasetLayoutError(f"several {what} files below {root} ({listed}); {hint}")
    return paths[0]


def _parse_age(value: object, row: int, csv_path: Path) -> float:
    """Ages are integers in the 2017/2020 CSVs; very old copies wrote '058Y' (or M/D units)."""
    if pd.isna(value):
        return float("nan")
    text = str(value).strip()
    match = re.fullmatch(r"(\d+)\s*([YMD]?)", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"{csv_path}, row {row}: cannot read Patient Age {text!r}")
    number, unit = int(match.group(1)), match.group(2).upper()
    return {"": number, "Y": number, "M": number / 12, "D": number / 365}[unit]


def read_data_entry(csv_path: str | Path) -> pd.DataFrame:
    """Read a Data_Entry_2017 CSV (Kaggle's 2017 copy or NIH's v2020) into the index columns.

    Returns image_id, patient, age, sex, view, the 14 findings (0/1) and Abnormal; `split` and
    `path` are filled in by `build_nih_index`. Errors name the file and the CSV row (1 = header).
    """
    csv_path = Path(csv_path)
    raw = read_table(csv_path, dtype=str, keep_default_na=False)
    # Kaggle's 2017 copy ends every line with a comma: an empty, unnamed trailing column.
    raw = raw.loc[:, [c for c in raw.columns if not c.startswith("Unnamed:")]]
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise ValueError(
            f"{csv_path}: missing required column(s) {missing}; found {list(raw.columns)}"
        )
    sex_column = next((c for c in SEX_COLUMNS if c in raw.columns), None)

    # Compared as they are used (stripped): "a.png" and "a.png " are the same image.
    names = raw["Image Index"].str.strip()
    duplicated = names.duplicated()
    if duplicated.any():
        first = int(duplicated.to_numpy().nonzero()[0][0])
        earlier = int((names == names.iloc[first]).to_numpy().nonzero()[0][0])
        raise ValueError(
            f"{csv_path}, row {first + 2}: image {raw['Image Index'].iloc[first]!r} appears "
            f"twice (also row {earlier + 2}, as {raw['Image Index'].iloc[earlier]!r})"
        )

    labels = []
    for position, text in enumerate(raw["Finding Labels"].tolist()):
        try:
            labels.append(parse_finding_labels(text))
        except ValueError as error:
            raise ValueError(f"{csv_path}, row {position + 2}: {error}") from None
    label_frame = pd.DataFrame(labels, columns=list(FINDINGS), dtype="int8")

    patient = pd.to_numeric(raw["Patient ID"], errors="coerce")
    if patient.isna().any():
        first = int(patient.isna().to_numpy().nonzero()[0][0])
        raise ValueError(
            f"{csv_path}, row {first + 2}: Patient ID {raw['Patient ID'].iloc[first]!r} "
            "is not an integer"
        )
    table = pd.DataFrame(
        {
            "image_id": raw["Image Index"].str.strip(),
            "patient": patient.astype("int64").astype(str),
            "age": [
                _parse_age(v, i + 2, csv_path) for i, v in enumerate(raw.get("Patient Age", []))
            ]
            if "Patient Age" in raw.columns
            else float("nan"),
            "sex": raw[sex_column].str.strip() if sex_column else "",
            "view": raw["View Position"].str.strip() if "View Position" in raw.columns else "",
        }
    )
    table = pd.concat([table, label_frame], axis=1)
    table[ABNORMAL] = label_frame.max(axis=1).astype("int8")
    return table


def assign_official_splits(
    table: pd.DataFrame,
    train_val_list: str | Path,
    test_list: str | Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    skip_unlisted: bool = False,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Add the `split` column: test = test_list, val carved by patient from train_val_list.

    A split list naming an image absent from the table is an error (or, with `skip_unlisted`,
    counted); so is a table image that no list names.
    """
    train_val = read_split_list(train_val_list)
    test = read_split_list(test_list)
    overlap = set(train_val) & set(test)
    if overlap:
        raise ValueError(
            f"{train_val_list} and {test_list} share {len(overlap)} image(s), "
            f"e.g. {sorted(overlap)[:3]}"
        )
    known = set(table["image_id"])
    counts: dict[str, int] = {}
    for path, names in ((train_val_list, train_val), (test_list, test)):
        unknown = [n for n in names if n not in known]
        counts[f"listed_not_in_csv:{Path(path).name}"] = len(unknown)
        if unknown and not skip_unlisted:
            raise ValueError(
                f"{path}: {len(unknown)} image(s) are not in the Data_Entry CSV, "
                f"e.g. {unknown[:3]} (pass skip_unlisted / --skip-bad to count and skip them)"
            )
    split = pd.Series(pd.NA, index=table.index, dtype="object")
    split[table["image_id"].isin(set(train_val))] = "train"
    split[table["image_id"].isin(set(test))] = "test"
    unlisted = split.isna()
    counts["in_csv_not_listed"] = int(unlisted.sum())
    if unlisted.any() and not skip_unlisted:
        raise ValueError(
            f"{int(unlisted.sum())} image(s) of the CSV are in neither {train_val_list} nor "
            f"{test_list}, e.g. {table.loc[unlisted, 'image_id'].head(3).tolist()}"
        )
    table = table.assign(split=split)[~unlisted].reset_index(drop=True)
    is_train = table["split"] == "train"
    is_val = carve_validation(table.loc[is_train, "patient"], val_fraction, seed)
    table.loc[is_val[is_val].index, "split"] = "val"
    check_patient_disjoint(table, "official split")
    return table, counts


def build_nih_index(
    root: str | Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    views: tuple[str, ...] | None = None,
    skip_bad: bool = False,
    images: pd.DataFrame | None = None,
) -> NIHIndex:
    """Find and index an NIH ChestX-ray14 copy below `root` (see the module docstring).

    `views` restricts to view positions (e.g. ("PA",)); `skip_bad` turns missing images and
    unlisted/unknown names from errors into counted skips (reported in `source["skipped"]`).
    `images` (columns image_id, path[, parquet_row]) supplies the pixels from elsewhere, e.g. the
    Hub's parquet variant, while `root` supplies the metadata CSV and the split lists.
    """
    # Absolute, so that the paths recorded here (and in the run, and the card) mean the same
    # files whatever the working directory of a later step.
    root = Path(root).absolute()
    if not root.is_dir():
        raise DatasetLayoutError(f"data root {root} does not exist or is not a folder")
    found = _walk(root)
    hint = "expected an NIH ChestX-ray14 copy (Kaggle: /kaggle/input/nih-chest-xrays/data)"
    csv_path = exactly_one(found.data_entry, "Data_Entry_2017*.csv", root, hint)
    train_val_path = exactly_one(found.train_val, "train_val_list.txt", root, hint)
    test_path = exactly_one(found.test, "test_list.txt", root, hint)
    if images is None:
        if found.duplicate_images:
            raise DatasetLayoutError(
                f"{len(found.duplicate_images)} image name(s) occur in more than one folder "
                f"below {root}, e.g. {found.duplicate_images[:3]}; point the root at one copy"
            )
        images = pd.DataFrame(
            {"image_id": list(found.images), "path": [str(p) for p in found.images.values()]}
        )
    if images["image_id"].duplicated().any():
        duplicate = images.loc[images["image_id"].duplicated(), "image_id"].iloc[0]
        raise DatasetLayoutError(f"image {duplicate!r} is supplied more than once")

    table = read_data_entry(csv_path)
    skipped: dict[str, int] = {}
    if views:
        unknown_views = sorted(set(views) - set(VIEWS))
        if unknown_views:
            raise ValueError(f"views: unknown {unknown_views}; accepted: {list(VIEWS)}")
        keep = table["view"].isin(views)
        skipped["other_views"] = int((~keep).sum())
        table = table[keep].reset_index(drop=True)
    # With a view filter, the lists legitimately name images that were filtered out.
    table, counts = assign_official_splits(
        table,
        train_val_path,
        test_path,
        val_fraction=val_fraction,
        seed=seed,
        skip_unlisted=skip_bad or bool(views),
    )
    skipped.update({k: v for k, v in counts.items() if v})

    table = table.merge(images, on="image_id", how="left", validate="one_to_one")
    missing = table["path"].isna()
    if missing.any():
        if not skip_bad:
            raise DatasetLayoutError(
                f"{int(missing.sum())} image(s) named in {csv_path} were not found below {root}, "
                f"e.g. {table.loc[missing, 'image_id'].head(3).tolist()} (pass --skip-bad to "
                "index only the images present and count the rest)"
            )
        skipped["missing_images"] = int(missing.sum())
    extra = [c for c in images.columns if c not in ("image_id", "path")]
    table = table[~missing].reset_index(drop=True).loc[:, [*INDEX_COLUMNS, *extra]]
    csv_sha256 = file_sha256(csv_path)
    source = {
        "kind": "nih",
        "root": str(root.resolve()),
        "data_entry_csv": str(csv_path.resolve()),
        "train_val_list": str(train_val_path.resolve()),
        "test_list": str(test_path.resolve()),
        # The synthetic set's marker anywhere below the root: recorded now, while the folder is
        # at hand, so that no later step (run elsewhere, or after the data moved) has to guess.
        "synthetic": bool(found.synthetic_markers),
        "sha256": {
            "data_entry_csv": csv_sha256,
            "train_val_list": file_sha256(train_val_path),
            "test_list": file_sha256(test_path),
        },
        # The CSV's uncompressed bytes, so a .csv.gz copy is recognised as the release it holds.
        "data_entry_csv_content_sha256": content_sha256(csv_path)
        if csv_path.suffix == ".gz"
        else csv_sha256,
        "val_fraction": val_fraction,
        "seed": seed,
        "views": list(views) if views else None,
        "skipped": skipped,
        "counts": split_counts(table),
    }
    return NIHIndex(table=table, source=source)


def split_counts(table: pd.DataFrame) -> dict[str, int]:
    counts = table["split"].value_counts()
    return {name: int(counts.get(name, 0)) for name in ("train", "val", "test")}
