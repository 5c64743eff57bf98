"""The RSNA Pneumonia reader on a tiny copy in the Kaggle layout (dicom_fixtures.write_rsna)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dicom_fixtures import write_rsna

from chexvision_lib.core.labels import ABNORMAL, FINDINGS, UNKNOWN
from chexvision_lib.data.cache import open_cache, prepare_cache
from chexvision_lib.data.image_io import load_grey
from chexvision_lib.data.sources import rsna
from chexvision_lib.data.splits import check_patient_disjoint


@pytest.fixture(scope="module")
def rsna_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rsna(tmp_path_factory.mktemp("rsna") / "rsna-pneumonia-detection-challenge")


def _expected(root: Path, stage: int = 2) -> pd.DataFrame:
    """Per image, from the fixture's CSVs alone: class, DICOM patient, number of boxes."""
    labels = pd.read_csv(root / f"stage_{stage}_train_labels.csv")
    classes = pd.read_csv(root / f"stage_{stage}_detailed_class_info.csv").drop_duplicates()
    boxes = labels.groupby("patientId")["Target"].sum().rename("boxes")
    return classes.set_index("patientId").join(boxes)


@pytest.mark.parametrize("target", ["abnormal", "lung-opacity"])
def test_counts_match_the_csvs(rsna_root: Path, target: str):
    from pydicom import dcmread

    expected = _expected(rsna_root)
    if target == "lung-opacity":
        expected = expected[expected["class"].isin(["Normal", "Lung Opacity"])]
    table, source = rsna.build_index(rsna_root, target=target)
    assert len(table) == len(expected) and set(table["image_id"]) == set(expected.index)
    images = rsna_root / "stage_2_train_images"
    patients = {dcmread(images / f"{i}.dcm").PatientID for i in expected.index}
    assert table["patient"].nunique() == len(patients)
    row = table.set_index("image_id")
    assert (row["Pneumonia"] == (expected["class"] == "Lung Opacity").astype(int)).all()
    assert (row[ABNORMAL] == (expected["class"] != "Normal").astype(int)).all()
    assert (table[[f for f in FINDINGS if f != "Pneumonia"]] == UNKNOWN).all().all()
    dropped = int((_expected(rsna_root)["class"] == "No Lung Opacity / Not Normal").sum())
    assert source["skipped"].get("no_lung_opacity_not_normal", 0) == (
        dropped if target == "lung-opacity" else 0
    )
    assert source["options"] == {"target": target} and source["kind"] == "rsna"
    assert source["summary"]["labels"]["Pneumonia"]["positive"] == int(
        (expected["class"] == "Lung Opacity").sum()
    )
    check_patient_disjoint(table)
    assert {"train", "test"} <= set(table["split"]) <= {"train", "val", "test"}
    assert table.groupby("patient")["split"].nunique().max() == 1


def test_header_fields_and_sizes(rsna_root: Path):
    from pydicom import dcmread

    table, source = rsna.build_index(rsna_root)
    for row in table.head(4).itertuples():
        ds = dcmread(row.path, stop_before_pixels=True)
        assert (row.patient, row.sex, row.view) == (ds.PatientID, ds.PatientSex, ds.ViewPosition)
        assert row.age == float(ds.PatientAge) and (row.width, row.height) == (64, 64)
    assert source["images_without_patient_id"] == 0
    assert source["files"]["labels_csv"].endswith("stage_2_train_labels.csv")
    assert source["split_policy"].startswith("seeded patient-wise split")


def test_boxes_come_back_in_read_bbox_list_format(rsna_root: Path):
    from chexvision_lib.explain.gradcam import BBOX_COLUMNS

    _, source = rsna.build_index(rsna_root)
    boxes = rsna.read_boxes(source)
    labels = pd.read_csv(rsna_root / "stage_2_train_labels.csv")
    positive = labels[labels["Target"] == 1]
    assert tuple(boxes.columns) == tuple(BBOX_COLUMNS) and len(boxes) == len(positive)
    assert set(boxes["finding"]) == {"Pneumonia"}
    assert np.allclose(boxes[["x", "y", "w", "h"]], positive[["x", "y", "width", "height"]])
    assert boxes["image_id"].tolist() == positive["patientId"].tolist()
    assert source["boxes_files"] == [source["files"]["labels_csv"]]


def test_boxes_of_a_changed_labels_file_are_refused(rsna_root: Path, tmp_path: Path):
    root = _copy(rsna_root, tmp_path)
    _, source = rsna.build_index(root)
    with open(root / "stage_2_train_labels.csv", "a") as handle:
        handle.write("extra,1.0,2.0,3.0,4.0,1\n")
    with pytest.raises(ValueError, match="stage_2_train_labels.csv has changed since the index"):
        rsna.read_boxes(source)


def test_options_are_checked(rsna_root: Path):
    accepted = r"option target='pneumonia' is not one of abnormal, lung-opacity"
    with pytest.raises(ValueError, match=accepted):
        rsna.build_index(rsna_root, target="pneumonia")
    with pytest.raises(ValueError, match=r"unknown option 'labels' \(its options: target\)"):
        rsna.build_index(rsna_root, labels="any")
    assert rsna.is_marker(rsna_root / "stage_2_train_labels.csv")
    assert not rsna.is_marker(rsna_root / "stage_2_detailed_class_info.csv")


def _copy(root: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(root, tmp_path / "copy"))


def test_inconsistent_csvs_are_errors_naming_file_and_row(rsna_root: Path, tmp_path: Path):
    root = _copy(rsna_root, tmp_path)
    labels_path = root / "stage_2_train_labels.csv"
    classes_path = root / "stage_2_detailed_class_info.csv"
    labels, classes = pd.read_csv(labels_path), pd.read_csv(classes_path)

    normal = int((classes["class"] == "Normal").to_numpy().nonzero()[0][0])
    broken = classes.copy()
    broken.loc[normal, "class"] = "Lung Opacity"  # but Target 0 in the labels
    broken.to_csv(classes_path, index=False)
    with pytest.raises(
        ValueError, match=rf"stage_2_train_labels.csv, row {normal + 2}: .*Target 0"
    ):
        rsna.build_index(root)

    classes.iloc[:-1].to_csv(classes_path, index=False)  # the last image only in the labels
    last = labels["patientId"].iloc[-1]
    with pytest.raises(ValueError, match=rf"train_labels.csv, row {len(labels) + 1}: .*{last}.*"):
        rsna.build_index(root)

    extra = pd.concat([classes, pd.DataFrame({"patientId": ["stray"], "class": ["Normal"]})])
    extra.to_csv(classes_path, index=False)
    with pytest.raises(ValueError, match=rf"class_info.csv, row {len(classes) + 2}: .*'stray'"):
        rsna.build_index(root)
    classes.to_csv(classes_path, index=False)

    positive = int((labels["Target"] == 1).to_numpy().nonzero()[0][0])
    emptied = labels.astype(object)
    emptied.loc[positive, "width"] = None
    emptied.to_csv(labels_path, index=False)
    with pytest.raises(ValueError, match=rf"train_labels.csv, row {positive + 2}: Target 1 needs"):
        rsna.build_index(root)
    labels.to_csv(labels_path, index=False)
    assert len(rsna.build_index(root)[0]) == len(_expected(root))


def test_missing_images_and_bad_dicoms_with_skip_bad(rsna_root: Path, tmp_path: Path):
    root = _copy(rsna_root, tmp_path)
    images = sorted((root / "stage_2_train_images").glob("*.dcm"))
    images[0].unlink()
    images[1].write_text("not a DICOM")
    with pytest.raises(FileNotFoundError, match="1 image"):
        rsna.build_index(root)
    table, source = rsna.build_index(root, skip_bad=True)
    assert len(table) == len(_expected(root)) - 2
    assert source["skipped"]["missing_images"] == 1 and source["skipped"]["unreadable_dicom"] == 1


def test_stage_1_names_are_accepted(tmp_path: Path):
    root = write_rsna(tmp_path / "stage1", stage=1, size=32)
    table, source = rsna.build_index(root)
    assert len(table) == len(_expected(root, stage=1))
    assert source["files"]["labels_csv"].endswith("stage_1_train_labels.csv")


def test_a_cache_from_the_index_decodes_every_dicom(rsna_root: Path, tmp_path: Path):
    table, source = rsna.build_index(rsna_root)
    out = prepare_cache(
        table, tmp_path / "cache", size=32, workers=1, source=source, progress=False
    )
    index, pixels, info = open_cache(out)
    assert info["n_failed"] == 0 and info["source"]["kind"] == "rsna" and len(index) == len(table)
    for k in (0, len(table) - 1):
        assert np.array_equal(pixels[k], load_grey(table["path"][k], 32))
    assert pixels.reshape(len(table), -1).std(axis=1).min() > 5  # real pictures, not zeros
