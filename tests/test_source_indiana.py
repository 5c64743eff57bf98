"""The Indiana University (Kaggle) reader on a fixture in that layout: its counts equal those
worked out here from the fixture's two CSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dataset_fixtures import drop_column, rewrite_cell, write_indiana

from chexvision_lib.core.labels import ABNORMAL, FINDINGS
from chexvision_lib.data.cache import open_cache, prepare_cache
from chexvision_lib.data.image_io import load_grey
from chexvision_lib.data.nih_index import DatasetLayoutError
from chexvision_lib.data.sources import indiana
from chexvision_lib.data.splits import check_patient_disjoint

# NIH finding <- the Problems terms the test expects to count for it (lower case, written out).
TERMS = {
    "Atelectasis": {"pulmonary atelectasis", "atelectases"},
    "Cardiomegaly": {"cardiomegaly"},
    "Effusion": {"pleural effusion"},
    "Infiltration": {"infiltrate"},
    "Mass": {"mass"},
    "Nodule": {"nodule"},
    "Pneumonia": {"pneumonia"},
    "Pneumothorax": {"pneumothorax"},
    "Consolidation": {"consolidation"},
    "Edema": {"pulmonary edema", "edema"},
    "Emphysema": {"pulmonary emphysema", "emphysema"},
    "Fibrosis": {"pulmonary fibrosis", "fibrosis"},
    "Hernia": {"hernia, hiatal"},
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_indiana(tmp_path_factory.mktemp("indiana"), seed=8)


def images_with_reports(root: Path) -> pd.DataFrame:
    reports = pd.read_csv(root / "indiana_reports.csv")
    projections = pd.read_csv(root / "indiana_projections.csv")
    rows = projections.merge(reports, on="uid", how="inner")
    terms = [{t.strip().lower() for t in text.split(";")} for text in rows["Problems"]]
    return rows.assign(terms=terms)


def test_the_fixture_is_in_the_kaggle_layout(root):
    reports = pd.read_csv(root / "indiana_reports.csv")
    projections = pd.read_csv(root / "indiana_projections.csv")
    assert list(reports.columns) == [
        "uid",
        "MeSH",
        "Problems",
        "image",
        "indication",
        "comparison",
        "findings",
        "impression",
    ]
    assert list(projections.columns) == ["uid", "filename", "projection"]
    assert set(projections["projection"]) == {"Frontal", "Lateral"}
    for name in projections["filename"]:
        assert (root / "images" / "images_normalized" / name).is_file()
        assert name.endswith(".dcm.png")
    frontals = projections[projections["projection"] == "Frontal"].groupby("uid").size()
    assert (frontals > 1).any()  # a report with two frontal images
    assert (reports["Problems"] == "normal").sum() > 1
    assert reports["Problems"].str.contains("; ").any()  # a stray space after the separator


def test_counts_equal_those_of_the_csvs(root):
    table, source = indiana.build_index(root)
    rows = images_with_reports(root)
    frontal = rows[rows["projection"] == "Frontal"].reset_index(drop=True)
    assert len(table) == len(frontal) == source["summary"]["frontal"]
    assert table["patient"].nunique() == frontal["uid"].nunique()
    labels = source["summary"]["labels"]
    for finding in FINDINGS:
        if finding not in TERMS:
            assert labels[finding]["unknown"] == len(table), finding
            continue
        positive = frontal["terms"].map(lambda t, f=finding: bool(t & TERMS[f]))
        assert labels[finding]["positive"] == int(positive.sum()), finding
        assert labels[finding]["negative"] == int((~positive).sum()), finding
    normal = frontal["Problems"] == "normal"
    assert labels[ABNORMAL]["negative"] == int(normal.sum()) > 0
    assert labels[ABNORMAL]["positive"] == int((~normal).sum()) > 0
    assert labels["Hernia"]["positive"] > 0  # "Hernia, Hiatal": the comma is inside one term
    assert set(table["view"]) == {"FRONTAL"}
    assert table["age"].isna().all() and (table["sex"] == "").all()


def test_laterals_are_counted_and_can_be_asked_for(root):
    rows = images_with_reports(root)
    laterals = int((rows["projection"] == "Lateral").sum())
    _, source = indiana.build_index(root)
    assert source["skipped"]["lateral_views"] == laterals > 0
    everything, _ = indiana.build_index(root, views=("FRONTAL", "LATERAL"))
    assert len(everything) == len(rows)


def test_seeded_patient_wise_split(root):
    table, source = indiana.build_index(root, seed=5)
    again, _ = indiana.build_index(root, seed=5)
    assert (table["split"] == again["split"]).all()
    check_patient_disjoint(table)
    assert set(table["split"]) == {"train", "val", "test"}
    assert "seeded patient-wise" in source["split_policy"]


def test_is_marker(root):
    assert indiana.is_marker(root / "indiana_projections.csv")
    assert not indiana.is_marker(root / "indiana_reports.csv")


def test_images_without_a_report_or_problems(tmp_path):
    root = write_indiana(tmp_path, seed=8)
    projections = pd.read_csv(root / "indiana_projections.csv")
    busiest = str(projections["uid"].value_counts().idxmax())  # a report with 3 images
    rewrite_cell(root / "indiana_projections.csv", 2, "uid", "9999")
    with pytest.raises(ValueError, match=r"projections\.csv, row 2: uid '9999' has no report"):
        indiana.build_index(root)
    table, source = indiana.build_index(root, skip_bad=True)
    assert source["skipped"]["images_without_report"] == 1
    reports = pd.read_csv(root / "indiana_reports.csv")
    row = int((reports["uid"].astype(str) == busiest).to_numpy().nonzero()[0][0]) + 2
    rewrite_cell(root / "indiana_reports.csv", row, "Problems", "")
    _, source = indiana.build_index(root, skip_bad=True)
    assert source["skipped"]["reports_without_problems"] == 1
    assert source["skipped"]["images_of_reports_without_problems"] == 3


def test_bad_input_errors(tmp_path):
    root = write_indiana(tmp_path, seed=8)
    with pytest.raises(ValueError, match="indiana: unknown option"):
        indiana.build_index(root, labeler="negbio")
    rewrite_cell(root / "indiana_projections.csv", 4, "projection", "Oblique")
    with pytest.raises(ValueError, match=r"row 4: projection 'Oblique' is not Frontal or Lateral"):
        indiana.build_index(root)
    root = write_indiana(tmp_path / "second", seed=8)
    drop_column(root / "indiana_reports.csv", "Problems")
    with pytest.raises(ValueError, match=r"reports\.csv: missing column\(s\) \['Problems'\]"):
        indiana.build_index(root)


def test_missing_image(tmp_path):
    root = write_indiana(tmp_path, seed=8)
    table, _ = indiana.build_index(root)
    Path(table["path"].iloc[0]).unlink()
    with pytest.raises(DatasetLayoutError, match="1 image.*not found"):
        indiana.build_index(root)
    assert indiana.build_index(root, skip_bad=True)[1]["skipped"]["missing_images"] == 1


def test_prepare_cache_decodes_every_image(root, tmp_path):
    table, source = indiana.build_index(root)
    cache = prepare_cache(
        table, tmp_path / "cache", size=32, workers=1, source=source, progress=False
    )
    index, images, info = open_cache(cache)
    assert info["n_failed"] == 0 and len(index) == len(table)
    for i, path in enumerate(table["path"]):
        assert np.array_equal(images[i], load_grey(path, 32))
