"""The VinDr-CXR reader on tiny copies in the PhysioNet and Kaggle layouts (dicom_fixtures)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dicom_fixtures import write_dicom, write_vindr

from chexvision_lib.core.labels import ABNORMAL, UNKNOWN
from chexvision_lib.data.cache import open_cache, prepare_cache
from chexvision_lib.data.image_io import load_grey
from chexvision_lib.data.sources import vindr
from chexvision_lib.data.splits import SplitLeakError, check_patient_disjoint

# NIH finding <- VinDr label, written out here rather than read from label_space.
NIH_FROM_VINDR = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural effusion",
    "Infiltration": "Infiltration",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Emphysema": "Emphysema",
    "Fibrosis": "Pulmonary fibrosis",
    "Pleural_Thickening": "Pleural thickening",
}
NOT_IN_VINDR = ("Mass", "Nodule", "Hernia")


@pytest.fixture(scope="module")
def physionet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_vindr(tmp_path_factory.mktemp("vindr") / "vindr-cxr" / "1.0.0")


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vinbig") / "vinbigdata-chest-xray-abnormalities-detection"
    return write_vindr(root, layout="kaggle", seed=1)


def _decide(readers: pd.DataFrame, rule: str) -> pd.DataFrame:
    """Per image from its reader rows: each label, and Abnormal, under `rule`."""
    labels = [c for c in readers.columns if c not in ("image_id", "rad_id")]
    votes = readers.groupby("image_id")[labels].sum()
    n = readers.groupby("image_id").size()
    abnormal = n - votes["No finding"]
    if rule == "majority":
        out = votes.gt(n / 2, axis=0).assign(**{ABNORMAL: abnormal > n / 2})
    else:
        out = (votes >= 1).assign(**{ABNORMAL: abnormal >= 1})
    return out.astype(int)


def _patients(table: pd.DataFrame) -> set[str]:
    from pydicom import dcmread

    ids = {dcmread(p, stop_before_pixels=True).get("PatientID", "") for p in table["path"]}
    named = {i for i in ids if i}
    headerless = [
        p for p in table["path"] if not dcmread(p, stop_before_pixels=True).get("PatientID")
    ]
    return named | {Path(p).stem for p in headerless}


@pytest.mark.parametrize("rule", ["majority", "any"])
def test_physionet_labels_follow_the_rule(physionet: Path, rule: str):
    table, source = vindr.build_index(physionet, labels=rule)
    expected = {}
    for split in ("train", "test"):
        readers = pd.read_csv(physionet / "annotations" / f"image_labels_{split}.csv")
        decided = _decide(readers, rule).assign(split=split)
        expected[split] = decided.rename(columns={"Other disease": "Other diseases"})
    expected = pd.concat(expected.values())
    assert len(table) == len(expected) and set(table["image_id"]) == set(expected.index)
    got = table.set_index("image_id").loc[expected.index]
    for finding, label in NIH_FROM_VINDR.items():
        assert (got[finding] == expected[label]).all(), finding
    assert (got[list(NOT_IN_VINDR)] == UNKNOWN).all().all()
    assert (got[ABNORMAL] == expected[ABNORMAL]).all()
    assert (got["split"] == "test").sum() == (expected["split"] == "test").sum()
    assert set(got.loc[expected["split"] == "train", "split"]) <= {"train", "val"}
    assert table["patient"].nunique() == len(_patients(table))
    check_patient_disjoint(table)
    assert source["options"] == {"labels": rule, "layout": "physionet"}
    assert source["split_policy"].startswith("official split; validation carved")
    assert source["images_without_patient_id"] == len(table) - 4  # fixture: 2 patients x 2


def test_majority_and_any_differ_on_the_fixture(physionet: Path):
    majority, _ = vindr.build_index(physionet, labels="majority")
    anyone, _ = vindr.build_index(physionet, labels="any")
    findings = list(NIH_FROM_VINDR)
    assert (anyone[findings] >= majority[findings]).all().all()
    assert anyone[findings].to_numpy().sum() > majority[findings].to_numpy().sum()


def test_header_fields(physionet: Path):
    table, _ = vindr.build_index(physionet)
    shared = table[table["patient"].str.startswith("VD")]
    assert len(shared) == 4 and shared["patient"].nunique() == 2
    assert shared.groupby("patient")["split"].nunique().max() == 1
    assert set(table["view"]) == {"PA", "FRONTAL"}  # FRONTAL: headers without ViewPosition
    assert set(table["width"]) == {64, 80, 96} and set(table["height"]) == {64}
    with pytest.raises(ValueError, match=r"views: unknown \['SIDEWAYS'\]"):
        vindr.build_index(physionet, views=("SIDEWAYS",))
    only_pa, source = vindr.build_index(physionet, views=("PA",))
    assert len(only_pa) == (table["view"] == "PA").sum()
    assert source["skipped"]["other_views"] == (table["view"] != "PA").sum()


def test_boxes_come_back_in_read_bbox_list_format(physionet: Path):
    from chexvision_lib.explain.gradcam import BBOX_COLUMNS

    _, source = vindr.build_index(physionet)
    boxes = vindr.read_boxes(source)
    assert tuple(boxes.columns) == tuple(BBOX_COLUMNS)
    mapped = {label: finding for finding, label in NIH_FROM_VINDR.items()}
    rows = pd.concat(
        pd.read_csv(physionet / "annotations" / f"annotations_{s}.csv") for s in ("train", "test")
    )
    rows = rows[rows["class_name"].isin(mapped)]
    assert len(boxes) == len(rows) > 0
    assert boxes["finding"].tolist() == rows["class_name"].map(mapped).tolist()
    assert np.allclose(boxes["w"], rows["x_max"] - rows["x_min"])
    assert np.allclose(boxes[["x", "y"]], rows[["x_min", "y_min"]])


def test_options_and_markers(physionet: Path, kaggle: Path, tmp_path: Path):
    with pytest.raises(ValueError, match=r"option labels='all' is not one of majority, any"):
        vindr.build_index(physionet, labels="all")
    with pytest.raises(ValueError, match=r"unknown option 'target' \(its options: labels\)"):
        vindr.build_index(physionet, target="abnormal")
    assert vindr.is_marker(physionet / "annotations" / "image_labels_train.csv")
    assert vindr.is_marker(kaggle / "train.csv")
    chexpert = tmp_path / "train.csv"  # CheXpert's train.csv must not look like VinDr
    chexpert.write_text("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding\n")
    assert not vindr.is_marker(chexpert)


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "copy"))


def test_inconsistent_files_are_errors_naming_file_and_row(physionet: Path, tmp_path: Path):
    root = _copy(physionet, tmp_path)
    labels_path = root / "annotations" / "image_labels_train.csv"
    labels = pd.read_csv(labels_path)
    normal = int((labels["No finding"] == 1).to_numpy().nonzero()[0][0])
    broken = labels.copy()
    broken.loc[normal, "Cardiomegaly"] = 1
    broken.to_csv(labels_path, index=False)
    with pytest.raises(ValueError, match=rf"labels_train.csv, row {normal + 2}: 'No finding' tog"):
        vindr.build_index(root)
    broken.loc[normal, "Cardiomegaly"] = 2
    broken.to_csv(labels_path, index=False)
    with pytest.raises(ValueError, match=rf"row {normal + 2}: 'Cardiomegaly' is '2'; expected 0"):
        vindr.build_index(root)
    blank = labels.copy()
    blank.loc[normal, "No finding"] = 0  # this reader marked nothing at all: counted, normal
    blank.to_csv(labels_path, index=False)
    table, source = vindr.build_index(root, labels="any")
    assert source["reader_rows_without_labels"] == 1
    image = labels["image_id"][normal]
    others = labels[(labels["image_id"] == image) & (labels.index != normal)]
    found = others.drop(columns=["image_id", "rad_id", "No finding"]).to_numpy().max()
    assert table.set_index("image_id")[ABNORMAL][image] == found
    labels.rename(columns={"Cardiomegaly": "Cardiomegally"}).to_csv(labels_path, index=False)
    with pytest.raises(ValueError, match=r"unknown label column\(s\) \['Cardiomegally'\]"):
        vindr.build_index(root)
    labels.to_csv(labels_path, index=False)

    boxes_path = root / "annotations" / "annotations_test.csv"
    boxes = pd.read_csv(boxes_path)
    stray = pd.concat([boxes, boxes.iloc[[0]].assign(image_id="f" * 32)])
    stray.to_csv(boxes_path, index=False)
    with pytest.raises(ValueError, match=rf"annotations_test.csv, row {len(boxes) + 2}: image 'f"):
        vindr.build_index(root)
    flipped = boxes.copy()
    boxed = int(flipped["x_min"].notna().to_numpy().nonzero()[0][0])
    flipped.loc[boxed, "x_max"] = flipped.loc[boxed, "x_min"] - 1
    flipped.to_csv(boxes_path, index=False)
    with pytest.raises(ValueError, match=rf"annotations_test.csv, row {boxed + 2}: .* x_min < x_m"):
        vindr.build_index(root)
    boxes.to_csv(boxes_path, index=False)
    assert len(vindr.build_index(root)[0]) == len(set(labels["image_id"])) + 5


def test_a_patient_in_train_and_test_is_a_leak(physionet: Path, tmp_path: Path):
    from dicom_fixtures import synthetic_radiograph

    root = _copy(physionet, tmp_path)
    test_image = sorted((root / "test").glob("*.dicom"))[0]
    write_dicom(test_image, synthetic_radiograph(), patient_id="VD0")  # VD0 is a train patient
    with pytest.raises(SplitLeakError, match="VD0"):
        vindr.build_index(root)


@pytest.mark.parametrize("rule", ["majority", "any"])
def test_kaggle_layout(kaggle: Path, rule: str):
    table, source = vindr.build_index(kaggle, labels=rule)
    rows = pd.read_csv(kaggle / "train.csv")
    readers = pd.crosstab([rows["image_id"], rows["rad_id"]], rows["class_name"]).clip(upper=1)
    expected = _decide(readers.reset_index(), rule)
    assert set(table["image_id"]) == set(rows["image_id"]) and len(table) == len(expected)
    got = table.set_index("image_id").loc[expected.index]
    for finding in ("Atelectasis", "Cardiomegaly", "Effusion", "Pneumothorax", "Fibrosis"):
        label = NIH_FROM_VINDR[finding]
        want = expected.get(label, 0)
        assert (got[finding] == want).all(), finding
    # Classes the competition dropped, and its global labels, are unknown there.
    assert (got[["Edema", "Emphysema", "Pneumonia", *NOT_IN_VINDR]] == UNKNOWN).all().all()
    assert (got[ABNORMAL] == expected[ABNORMAL]).all()
    assert source["split_policy"].startswith("seeded patient-wise split")
    assert source["options"]["layout"] == "kaggle"
    boxes = vindr.read_boxes(source)
    assert len(boxes) == rows["class_name"].isin(NIH_FROM_VINDR.values()).sum()


def test_a_cache_from_the_index_decodes_every_dicom(physionet: Path, tmp_path: Path):
    table, source = vindr.build_index(physionet)
    out = prepare_cache(
        table, tmp_path / "cache", size=32, workers=1, source=source, progress=False
    )
    index, pixels, info = open_cache(out)
    assert info["n_failed"] == 0 and len(index) == len(table) and info["source"]["kind"] == "vindr"
    for k in range(len(table)):
        assert np.array_equal(pixels[k], load_grey(table["path"][k], 32))
    assert pixels.reshape(len(table), -1).std(axis=1).min() > 5
