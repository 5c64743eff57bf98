from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_ROWS, realdata, write_tiny_nih

from chexvision_lib.core.hashing import file_sha256
from chexvision_lib.core.labels import ABNORMAL, FINDINGS
from chexvision_lib.data.nih_index import (
    DatasetLayoutError,
    assign_official_splits,
    build_nih_index,
    read_data_entry,
)
from chexvision_lib.data.splits import SplitLeakError, check_patient_disjoint


@pytest.mark.parametrize("variant", ["2017", "2020"])
def test_both_csv_variants_index_the_same(tmp_path: Path, variant: str):
    root = write_tiny_nih(tmp_path / variant, TINY_ROWS, {5, 6}, variant=variant)
    index = build_nih_index(root, val_fraction=0.25, seed=1)
    table = index.table
    assert len(table) == len(TINY_ROWS)
    assert list(table.columns[:6]) == ["image_id", "path", "patient", "age", "sex", "view"]
    row = table.set_index("image_id").loc["00000001_001.png"]
    assert row["Cardiomegaly"] == 1 and row["Emphysema"] == 1 and row[ABNORMAL] == 1
    assert row[[f for f in FINDINGS if f not in ("Cardiomegaly", "Emphysema")]].sum() == 0
    assert row["sex"] == "M" and row["view"] == "PA"
    assert table.set_index("image_id").loc["00000002_000.png", ABNORMAL] == 0
    assert set(table.loc[table["patient"].isin(["5", "6"]), "split"]) == {"test"}
    assert (table["split"] == "val").any()
    check_patient_disjoint(table)
    assert Path(table["path"].iloc[0]).exists()
    assert index.source["sha256"]["test_list"] == file_sha256(root / "test_list.txt")


def test_kaggle_style_nested_mount(tmp_path: Path):
    # /kaggle/input/datasets/<owner>/<slug>/... with images spread over several folders
    root = tmp_path / "input"
    nested = write_tiny_nih(root / "datasets" / "owner" / "slug", TINY_ROWS, {5, 6})
    second = nested / "images_002" / "images"
    second.mkdir(parents=True)
    moved = nested / "images_001" / "images" / "00000004_000.png"
    moved.rename(second / moved.name)
    table = build_nih_index(root).table
    assert table.set_index("image_id").loc["00000004_000.png", "path"] == str(second / moved.name)


def test_validation_is_carved_by_patient_and_seeded(tiny_nih: Path):
    a = build_nih_index(tiny_nih, val_fraction=0.5, seed=0).table
    b = build_nih_index(tiny_nih, val_fraction=0.5, seed=0).table
    assert a["split"].tolist() == b["split"].tolist()
    val_patients = set(a.loc[a["split"] == "val", "patient"])
    train_patients = set(a.loc[a["split"] == "train", "patient"])
    assert val_patients and train_patients and not (val_patients & train_patients)


def test_view_filter(tiny_nih: Path):
    table = build_nih_index(tiny_nih, views=("PA",)).table
    assert set(table["view"]) == {"PA"} and len(table) == 6
    with pytest.raises(ValueError, match="views"):
        build_nih_index(tiny_nih, views=("LL",))


def test_missing_image_is_an_error_or_counted(tiny_nih: Path):
    (tiny_nih / "images_001" / "images" / "00000003_000.png").unlink()
    with pytest.raises(DatasetLayoutError, match="00000003_000.png"):
        build_nih_index(tiny_nih)
    index = build_nih_index(tiny_nih, skip_bad=True)
    assert index.source["skipped"]["missing_images"] == 1 and len(index.table) == 7


def test_csv_lacking_a_column_names_file_and_column(tiny_nih: Path):
    csv = tiny_nih / "Data_Entry_2017.csv"
    frame = pd.read_csv(csv).drop(columns=["Patient ID"])
    frame.to_csv(csv, index=False)
    with pytest.raises(
        ValueError, match=r"Data_Entry_2017.csv: missing required column.*Patient ID"
    ):
        build_nih_index(tiny_nih)


def test_unknown_label_names_the_row(tiny_nih: Path):
    csv = tiny_nih / "Data_Entry_2017.csv"
    csv.write_text(csv.read_text().replace("Pleural_Thickening", "Pleural_Thickenin"))
    with pytest.raises(ValueError, match=r"row 5: unknown finding 'Pleural_Thickenin'"):
        build_nih_index(tiny_nih)


def test_split_list_naming_unknown_images(tiny_nih: Path):
    listed = tiny_nih / "test_list.txt"
    listed.write_text(listed.read_text() + "\n99999999_000.png")
    with pytest.raises(ValueError, match=r"test_list.txt: 1 image\(s\) are not in the Data_Entry"):
        build_nih_index(tiny_nih)
    index = build_nih_index(tiny_nih, skip_bad=True)
    assert index.source["skipped"]["listed_not_in_csv:test_list.txt"] == 1


def test_no_data_root_says_what_it_looked_for(tmp_path: Path):
    with pytest.raises(DatasetLayoutError, match="Data_Entry_2017"):
        build_nih_index(tmp_path)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        build_nih_index(tmp_path / "nope")


def test_leak_detection():
    table = pd.DataFrame({"patient": ["1", "1", "2"], "split": ["train", "test", "test"]})
    with pytest.raises(SplitLeakError, match="1 patient"):
        check_patient_disjoint(table)


def test_synthetic_set_indexes(synth_root: Path):
    index = build_nih_index(synth_root)
    assert index.source["counts"]["test"] > 0 and index.source["counts"]["val"] > 0
    check_patient_disjoint(index.table)


# --- the real NIH metadata (../shared/realdata/nih) ---------------------------------------------
REAL_COUNTS = {
    "Infiltration": 19894,
    "Effusion": 13317,
    "Atelectasis": 11559,
    "Nodule": 6331,
    "Mass": 5782,
    "Pneumothorax": 5302,
    "Consolidation": 4667,
    "Pleural_Thickening": 3385,
    "Cardiomegaly": 2776,
    "Emphysema": 2516,
    "Edema": 2303,
    "Fibrosis": 1686,
    "Pneumonia": 1431,
    "Hernia": 227,
}


@pytest.fixture(scope="module")
def real_table() -> pd.DataFrame:
    return read_data_entry(realdata("nih", "Data_Entry_2017_v2020.csv.gz"))


def test_real_metadata_counts(real_table: pd.DataFrame):
    assert len(real_table) == 112_120
    assert real_table["patient"].nunique() == 30_805
    assert real_table[list(FINDINGS)].sum().to_dict() == REAL_COUNTS
    assert int((real_table[ABNORMAL] == 0).sum()) == 60_361
    assert set(real_table["view"]) == {"PA", "AP"}


def test_real_official_split(real_table: pd.DataFrame):
    nih = realdata("nih")
    table, counts = assign_official_splits(
        real_table, nih / "train_val_list.txt", nih / "test_list.txt", val_fraction=0.1, seed=0
    )
    sizes = table["split"].value_counts()
    assert sizes["test"] == 25_596 and sizes["train"] + sizes["val"] == 86_524
    assert not any(counts.values())
    per_split = {
        s: set(table.loc[table["split"] == s, "patient"]) for s in ("train", "val", "test")
    }
    assert len(per_split["test"]) == 2_797
    assert len(per_split["train"]) + len(per_split["val"]) == 28_008
    assert not per_split["train"] & per_split["val"]
    assert not per_split["train"] & per_split["test"]
    assert not per_split["val"] & per_split["test"]
    # ~10% of the train_val PATIENTS are validation
    assert abs(len(per_split["val"]) / 28_008 - 0.1) < 0.001


def test_real_images_index_with_skip(tmp_path: Path):
    nih = realdata("nih")
    index = build_nih_index(nih, skip_bad=True)
    assert len(index.table) == 103
    assert index.source["skipped"]["missing_images"] == 112_120 - 103
