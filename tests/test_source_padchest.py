"""The PadChest reader on a fixture in the published layout (the label CSV, 16-bit PNGs in
numbered folders): its counts equal those worked out here from the CSV."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dataset_fixtures import PADCHEST_CSV, drop_column, rewrite_cell, write_padchest
from PIL import Image

from chexvision_lib.core.labels import ABNORMAL, FINDINGS
from chexvision_lib.data.cache import open_cache, prepare_cache
from chexvision_lib.data.image_io import load_grey
from chexvision_lib.data.nih_index import DatasetLayoutError
from chexvision_lib.data.sources import padchest
from chexvision_lib.data.splits import check_patient_disjoint

# NIH finding <- the PadChest terms the test expects to count for it (written out here).
TERMS = {
    "Atelectasis": {"laminar atelectasis"},
    "Cardiomegaly": {"cardiomegaly"},
    "Effusion": {"pleural effusion", "loculated pleural effusion"},
    "Infiltration": {"infiltrates"},
    "Mass": {"pulmonary mass"},
    "Nodule": {"nodule"},
    "Pneumonia": {"pneumonia"},
    "Pneumothorax": {"pneumothorax"},
    "Consolidation": {"consolidation"},
    "Edema": {"pulmonary edema"},
    "Emphysema": {"emphysema"},
    "Fibrosis": {"pulmonary fibrosis"},
    "Pleural_Thickening": {"apical pleural thickening"},
    "Hernia": {"hiatal hernia"},
}
FRONTAL = {"PA", "AP", "AP_horizontal"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_padchest(tmp_path_factory.mktemp("padchest"), seed=6)


def labelled_frontal(root: Path) -> pd.DataFrame:
    rows = pd.read_csv(root / PADCHEST_CSV)
    rows = rows[rows["Projection"].isin(FRONTAL) & rows["Labels"].notna()].reset_index(drop=True)
    terms = [{t.strip() for t in ast.literal_eval(text)} for text in rows["Labels"]]
    return rows.assign(terms=terms)


def test_the_fixture_is_in_the_published_layout(root):
    rows = pd.read_csv(root / PADCHEST_CSV)
    assert list(rows.columns[:10]) == [
        "ImageID",
        "ImageDir",
        "StudyDate_DICOM",
        "StudyID",
        "PatientID",
        "PatientBirth",
        "PatientSex_DICOM",
        "ViewPosition_DICOM",
        "Projection",
        "MethodProjection",
    ]
    assert {"Labels", "LabelsLocalizationsBySentence", "labelCUIS"} <= set(rows.columns)
    assert set(rows["Projection"]) == {"PA", "AP", "AP_horizontal", "L", "COSTAL", "EXCLUDE"}
    for row in rows.itertuples():
        assert (root / str(row.ImageDir) / row.ImageID).is_file()
    with Image.open(root / str(rows["ImageDir"].iloc[0]) / rows["ImageID"].iloc[0]) as image:
        assert image.mode == "I;16"
    labels = rows["Labels"].dropna()
    assert rows["Labels"].isna().any() and (labels == "[]").any()
    assert labels.str.contains(r"' |, ' ", regex=True).any()  # stray spaces inside the terms


def test_counts_equal_those_of_the_csv(root):
    table, source = padchest.build_index(root)
    rows = labelled_frontal(root)
    assert len(table) == len(rows) == source["summary"]["frontal"]
    assert table["patient"].nunique() == rows["PatientID"].astype(str).nunique()
    labels = source["summary"]["labels"]
    for finding in FINDINGS:
        positive = rows["terms"].map(lambda t, f=finding: bool(t & TERMS[f]))
        assert labels[finding]["positive"] == int(positive.sum()), finding
        assert labels[finding]["negative"] == int((~positive).sum()), finding
    normal = rows["terms"].map(lambda t: t == {"normal"})
    finding_terms = rows["terms"].map(
        lambda t: bool(t - {"normal", "exclude", "suboptimal study", "unchanged"})
    )
    assert labels[ABNORMAL]["negative"] == int(normal.sum()) > 0
    assert labels[ABNORMAL]["positive"] == int(finding_terms.sum()) > 0
    assert labels[ABNORMAL]["unknown"] == int((~normal & ~finding_terms).sum()) > 0
    by_id = table.set_index("image_id")
    for row in rows.itertuples():
        expected_age = int(str(row.StudyDate_DICOM)[:4]) - row.PatientBirth
        assert np.isclose(by_id.loc[row.ImageID, "age"], expected_age, equal_nan=True)
        expected_sex = row.PatientSex_DICOM if row.PatientSex_DICOM in ("M", "F") else ""
        assert by_id.loc[row.ImageID, "sex"] == expected_sex
    assert table["age"].isna().any() and (table["sex"] == "").any()


def test_views_and_unlabelled_rows_are_counted(root):
    rows = pd.read_csv(root / PADCHEST_CSV)
    labelled = rows[rows["Labels"].notna()]
    table, source = padchest.build_index(root)
    assert source["skipped"]["no_labels"] == int(rows["Labels"].isna().sum())
    assert source["skipped"]["lateral_views"] == int((labelled["Projection"] == "L").sum())
    other = labelled["Projection"].isin(["COSTAL", "EXCLUDE"])
    assert source["skipped"]["other_views"] == int(other.sum())
    views = table.set_index("image_id")["view"]
    for row in labelled[labelled["Projection"].isin(FRONTAL)].itertuples():
        assert (
            views[row.ImageID]
            == {"PA": "PA", "AP": "AP", "AP_horizontal": "AP_SUPINE"}[row.Projection]
        )
    supine, _ = padchest.build_index(root, views=("AP_SUPINE",))
    assert len(supine) == int((labelled["Projection"] == "AP_horizontal").sum()) > 0


def test_seeded_patient_wise_split(root):
    table, source = padchest.build_index(root, seed=2)
    again, _ = padchest.build_index(root, seed=2)
    assert (table["split"] == again["split"]).all()
    assert set(table["split"]) == {"train", "val", "test"}
    check_patient_disjoint(table)
    assert source["split_policy"].startswith("seeded patient-wise split (seed 2")


@pytest.mark.parametrize("variant", [{"compressed": True}, {"index_column": True}])
def test_gzipped_and_index_column_copies_read_the_same(tmp_path, root, variant):
    copy = write_padchest(tmp_path, seed=6, **variant)
    expected, _ = padchest.build_index(root)
    table, _ = padchest.build_index(copy)
    columns = ["image_id", "patient", "view", *FINDINGS, ABNORMAL]
    assert table[columns].equals(expected[columns])


def test_is_marker(root):
    assert padchest.is_marker(root / PADCHEST_CSV)
    assert padchest.is_marker(root / (PADCHEST_CSV + ".gz"))
    assert not padchest.is_marker(root / "train.csv")


def test_unparseable_labels_name_the_row_or_are_counted(tmp_path):
    root = write_padchest(tmp_path, seed=7)
    rewrite_cell(root / PADCHEST_CSV, 5, "Labels", "['pleural effusion'")
    with pytest.raises(
        ValueError, match=r"160K_01\.02\.19\.csv, row 5: Labels .* not a list of terms"
    ):
        padchest.build_index(root)
    rewrite_cell(root / PADCHEST_CSV, 5, "Labels", "__import__('os').getcwd()")
    with pytest.raises(ValueError, match="row 5"):
        padchest.build_index(root)  # parsed as a literal, never run
    table, source = padchest.build_index(root, skip_bad=True)
    assert source["skipped"]["unparseable_labels"] == 1


def test_bad_input_errors(tmp_path):
    root = write_padchest(tmp_path, seed=7)
    with pytest.raises(ValueError, match="padchest: unknown option.*uncertainty.*takes none"):
        padchest.build_index(root, uncertainty="ones")
    rewrite_cell(root / PADCHEST_CSV, 3, "StudyDate_DICOM", "2015-06-22")
    with pytest.raises(ValueError, match="row 3: StudyDate_DICOM '2015-06-22' is not a yyyymmdd"):
        padchest.build_index(root)
    drop_column(root / PADCHEST_CSV, "Projection")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['Projection'\]"):
        padchest.build_index(root)


def test_missing_and_duplicated_images(tmp_path):
    root = write_padchest(tmp_path, seed=7)
    table, _ = padchest.build_index(root)
    moved = Path(table["path"].iloc[0])
    moved.unlink()
    with pytest.raises(DatasetLayoutError, match="1 image.*not found"):
        padchest.build_index(root)
    assert padchest.build_index(root, skip_bad=True)[1]["skipped"]["missing_images"] == 1
    second = Path(table["path"].iloc[1])
    (root / "copy").mkdir()
    (root / "copy" / second.name).write_bytes(second.read_bytes())
    with pytest.raises(DatasetLayoutError, match="more than one folder"):
        padchest.build_index(root, skip_bad=True)


def test_prepare_cache_decodes_every_16_bit_image(root, tmp_path):
    table, source = padchest.build_index(root)
    cache = prepare_cache(
        table, tmp_path / "cache", size=32, workers=1, source=source, progress=False
    )
    index, images, info = open_cache(cache)
    assert info["n_failed"] == 0 and len(index) == len(table)
    for i, path in enumerate(table["path"]):
        assert np.array_equal(images[i], load_grey(path, 32))
        assert images[i].max() > 200  # stretched from 12-bit values, not /257 to near black
