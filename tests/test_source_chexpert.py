"""The CheXpert reader on a fixture in the published layout: every count it reports equals the
count worked out here from the fixture's own CSVs with pandas, under each uncertainty policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dataset_fixtures import drop_column, rewrite_cell, write_chexpert

from chexvision_lib.core.labels import ABNORMAL, FINDINGS, UNKNOWN
from chexvision_lib.data.cache import open_cache, prepare_cache
from chexvision_lib.data.image_io import load_grey
from chexvision_lib.data.nih_index import DatasetLayoutError
from chexvision_lib.data.sources import chexpert
from chexvision_lib.data.splits import check_patient_disjoint

# NIH finding <- CheXpert observation, written out here rather than read from label_space.
MAPPED = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural Effusion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
}
PATHOLOGIES = [
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_chexpert(tmp_path_factory.mktemp("chexpert"), seed=1)


def csvs(root: Path) -> pd.DataFrame:
    folder = root / "CheXpert-v1.0-small"
    train = pd.read_csv(folder / "train.csv").assign(official="train")
    valid = pd.read_csv(folder / "valid.csv").assign(official="test")
    return pd.concat([train, valid], ignore_index=True)


def frontal_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """What the reader keeps by default: Frontal with AP/PA "AP", "PA" or blank (not "LL")."""
    view = rows["AP/PA"]
    kept = (rows["Frontal/Lateral"] == "Frontal") & (view.isna() | view.isin(["AP", "PA"]))
    return rows[kept].reset_index(drop=True)


def after_policy(values: pd.Series, policy: str) -> pd.Series:
    """-1 by the policy, blank (NaN) -> 0."""
    uncertain = {"ignore": UNKNOWN, "ones": 1, "zeros": 0}[policy]
    return values.fillna(0).replace(-1.0, uncertain).astype(int)


def test_the_fixture_holds_every_value_convention(root):
    rows = csvs(root)
    labels = rows[["No Finding", *PATHOLOGIES, "Support Devices"]]
    for value in (1.0, 0.0, -1.0):
        assert (labels == value).any().any(), value
    assert labels.isna().any().any()
    assert set(rows["Frontal/Lateral"]) == {"Frontal", "Lateral"}
    assert {"Male", "Female", "Unknown"} <= set(rows["Sex"])
    assert rows.loc[rows["Frontal/Lateral"] == "Frontal", "AP/PA"].isna().any()


@pytest.mark.parametrize("policy", ["ignore", "ones", "zeros"])
def test_counts_equal_those_of_the_csvs(root, policy):
    table, source = chexpert.build_index(root, uncertainty=policy)
    frontal = frontal_rows(csvs(root))
    assert len(table) == len(frontal) == source["summary"]["images"]
    assert source["summary"]["frontal"] == len(frontal)
    patients = frontal["Path"].str.extract(r"(patient\d+)", expand=False)
    assert table["patient"].nunique() == patients.nunique()
    labels = source["summary"]["labels"]
    for finding, observation in MAPPED.items():
        values = after_policy(frontal[observation], policy)
        for name, value in (("positive", 1), ("negative", 0), ("unknown", UNKNOWN)):
            assert labels[finding][name] == int((values == value).sum()), (finding, name)
    for finding in set(FINDINGS) - set(MAPPED):
        assert labels[finding]["unknown"] == len(table)
    positive = pd.concat([after_policy(frontal[o], policy) == 1 for o in PATHOLOGIES], axis=1)
    positive = positive.any(axis=1)
    normal = ~positive & (frontal["No Finding"] == 1)
    assert labels[ABNORMAL]["positive"] == int(positive.sum())
    assert labels[ABNORMAL]["negative"] == int(normal.sum())
    assert labels[ABNORMAL]["unknown"] == int((~positive & ~normal).sum())
    assert source["options"] == {"uncertainty": policy}


def test_policies_differ_on_uncertain_labels(root):
    """The -1 of the fixture become UNKNOWN, 1 or 0: the three indexes differ exactly there."""
    tables = {p: chexpert.build_index(root, uncertainty=p)[0] for p in ("ignore", "ones", "zeros")}
    uncertain = tables["ignore"]["Edema"] == UNKNOWN
    assert uncertain.any()
    assert (tables["ones"].loc[uncertain, "Edema"] == 1).all()
    assert (tables["zeros"].loc[uncertain, "Edema"] == 0).all()
    assert (
        tables["ones"].loc[~uncertain, "Edema"] == tables["ignore"].loc[~uncertain, "Edema"]
    ).all()


def test_valid_csv_is_the_test_split_and_splits_are_patient_disjoint(root):
    table, source = chexpert.build_index(root, val_fraction=0.2, seed=3)
    valid = pd.read_csv(root / "CheXpert-v1.0-small" / "valid.csv")
    frontal_valid = valid.loc[valid["Frontal/Lateral"] == "Frontal", "Path"]
    assert set(table.loc[table["split"] == "test", "image_id"]) == set(frontal_valid)
    assert set(table.loc[table["image_id"].str.contains("/train/"), "split"]) == {"train", "val"}
    check_patient_disjoint(table)
    by_split = table.groupby("split")["patient"].apply(set)
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert source["counts"] == table["split"].value_counts().to_dict() | {
        s: 0 for s in ("train", "val", "test") if s not in set(table["split"])
    }
    assert "official split" in source["split_policy"]


def test_views_laterals_are_counted_and_can_be_asked_for(root):
    rows = csvs(root)
    laterals = int((rows["Frontal/Lateral"] == "Lateral").sum())
    frontal = rows[rows["Frontal/Lateral"] == "Frontal"]
    odd = int((~frontal["AP/PA"].isin(["AP", "PA"]) & frontal["AP/PA"].notna()).sum())
    table, source = chexpert.build_index(root)
    assert source["skipped"]["lateral_views"] == laterals
    assert source["skipped"].get("other_views", 0) == odd == 1
    assert set(table["view"]) == {"AP", "PA", "FRONTAL"}
    assert int((table["view"] == "FRONTAL").sum()) == int(frontal["AP/PA"].isna().sum())
    lateral_table, _ = chexpert.build_index(root, views=("LATERAL",))
    assert len(lateral_table) == laterals and set(lateral_table["view"]) == {"LATERAL"}


def test_sex_age_patient_and_path(root):
    table, _ = chexpert.build_index(root)
    rows = csvs(root).set_index("Path")
    row = table.iloc[0]
    assert (
        row["sex"] == {"Male": "M", "Female": "F", "Unknown": ""}[rows.loc[row["image_id"], "Sex"]]
    )
    assert row["age"] == rows.loc[row["image_id"], "Age"]
    assert set(table["sex"]) <= {"M", "F", ""}
    assert all(Path(p).is_file() and Path(p).is_absolute() for p in table["path"])
    assert all(f"/{pid}/" in i for pid, i in zip(table["patient"], table["image_id"], strict=True))


@pytest.mark.parametrize("layout", ["small", "full", "kaggle_flat"])
def test_root_at_any_level_and_every_layout(tmp_path, layout):
    root = write_chexpert(tmp_path / "input" / "chexpert", seed=1, layout=layout)
    expected, _ = chexpert.build_index(write_chexpert(tmp_path / "reference", seed=1))
    folder = (
        root
        if layout == "kaggle_flat"
        else root / f"CheXpert-v1.0{'' if layout == 'full' else '-small'}"
    )
    for start in {root, folder, root.parent}:
        table, source = chexpert.build_index(start)
        assert len(table) == len(expected)
        assert (table[list(FINDINGS)].to_numpy() == expected[list(FINDINGS)].to_numpy()).all()
        assert source["files"]["train_csv"] == str((folder / "train.csv").resolve())


@pytest.mark.parametrize("where", ["above the dataset folder", "in a sibling folder"])
def test_csvs_moved_away_from_the_images_still_find_them(tmp_path, where):
    """image_paths' fallbacks: Path relative to the CSV's own folder (CSVs moved up beside
    CheXpert-v1.0-small/) or to the folder above it (CSVs in labels/ beside the images)."""
    expected, _ = chexpert.build_index(write_chexpert(tmp_path / "reference", seed=1))
    root = write_chexpert(tmp_path / "moved", seed=1)
    target = root if where == "above the dataset folder" else root / "labels"
    target.mkdir(exist_ok=True)
    for name in ("train.csv", "valid.csv"):
        (root / "CheXpert-v1.0-small" / name).rename(target / name)
    table, source = chexpert.build_index(root)
    assert source["files"]["train_csv"] == str((target / "train.csv").resolve())
    assert table["image_id"].tolist() == expected["image_id"].tolist()
    relative = [Path(p).relative_to(root) for p in table["path"]]
    assert relative == [Path(p).relative_to(tmp_path / "reference") for p in expected["path"]]
    assert all(Path(p).is_file() for p in table["path"])


def test_is_marker(root, tmp_path):
    folder = root / "CheXpert-v1.0-small"
    assert chexpert.is_marker(folder / "train.csv")
    assert not chexpert.is_marker(folder / "valid.csv")
    other = tmp_path / "train.csv"
    other.write_text("patientId,Target\nabc,1\n")
    assert not chexpert.is_marker(other)
    assert not chexpert.is_marker(tmp_path / "absent" / "train.csv")


def test_bad_options_name_the_accepted_values(root):
    with pytest.raises(ValueError, match="ignore, ones, zeros"):
        chexpert.build_index(root, uncertainty="maybe")
    with pytest.raises(ValueError, match="unknown option 'labeler'.*uncertainty"):
        chexpert.build_index(root, labeler="negbio")


def test_bad_label_value_names_file_row_and_column(tmp_path):
    root = write_chexpert(tmp_path, seed=2)
    train_csv = root / "CheXpert-v1.0-small" / "train.csv"
    rewrite_cell(train_csv, 4, "Edema", "2.0")
    with pytest.raises(ValueError, match=r"train\.csv, row 4: 'Edema' is '2\.0'; expected 1\.0"):
        chexpert.build_index(root)


def test_bad_view_and_missing_column(tmp_path):
    root = write_chexpert(tmp_path, seed=2)
    valid_csv = root / "CheXpert-v1.0-small" / "valid.csv"
    rewrite_cell(valid_csv, 3, "Frontal/Lateral", "Oblique")
    with pytest.raises(ValueError, match=r"valid\.csv, row 3: Frontal/Lateral is 'Oblique'"):
        chexpert.build_index(root)
    drop_column(valid_csv, "AP/PA")
    with pytest.raises(ValueError, match=r"valid\.csv: missing column\(s\) \['AP/PA'\]"):
        chexpert.build_index(root)


def test_missing_image_is_an_error_or_counted(tmp_path):
    root = write_chexpert(tmp_path, seed=2)
    (
        root / "CheXpert-v1.0-small" / "train" / "patient00001" / "study1" / "view1_frontal.jpg"
    ).unlink()
    with pytest.raises(DatasetLayoutError, match="1 image.*not found.*--skip-bad"):
        chexpert.build_index(root)
    table, source = chexpert.build_index(root, skip_bad=True)
    assert source["skipped"]["missing_images"] == 1
    assert not table["image_id"].str.endswith("patient00001/study1/view1_frontal.jpg").any()


def test_prepare_cache_decodes_every_image(root, tmp_path):
    table, source = chexpert.build_index(root)
    cache = prepare_cache(
        table, tmp_path / "cache", size=32, workers=1, source=source, progress=False
    )
    index, images, info = open_cache(cache)
    assert info["n_failed"] == 0 and len(index) == len(table)
    assert info["source"]["kind"] == "chexpert"
    for i, path in enumerate(table["path"]):
        assert np.array_equal(images[i], load_grey(path, 32))
    assert images.std() > 0
