"""The MIMIC-CXR-JPG reader on a fixture in the published layout (gzipped CSVs, files/pXX/...):
its counts equal those worked out here from the fixture's CSVs, for both labelers and every
uncertainty policy; the official split file is honoured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dataset_fixtures import drop_column, rewrite_cell, write_mimic

from chexvision_lib.core.labels import ABNORMAL, FINDINGS, UNKNOWN
from chexvision_lib.data.cache import open_cache, prepare_cache
from chexvision_lib.data.image_io import load_grey
from chexvision_lib.data.nih_index import DatasetLayoutError
from chexvision_lib.data.sources import mimic
from chexvision_lib.data.splits import check_patient_disjoint

MAPPED = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Effusion": "Pleural Effusion",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
}
NOT_PATHOLOGIES = {"subject_id", "study_id", "No Finding", "Support Devices"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mimic(tmp_path_factory.mktemp("mimic"), seed=4)


def release(root: Path) -> Path:
    return root / "physionet.org" / "files" / "mimic-cxr-jpg" / "2.0.0"


def read(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(release(root) / f"mimic-cxr-2.0.0-{name}.csv.gz")


def frontal_images(root: Path, labeler: str) -> pd.DataFrame:
    """Metadata rows with a PA/AP view whose study has labels, with the labels joined."""
    meta = read(root, "metadata")
    meta = meta[meta["ViewPosition"].isin(["PA", "AP"])]
    return meta.merge(read(root, labeler), on=["subject_id", "study_id"], how="inner")


def after_policy(values: pd.Series, policy: str) -> pd.Series:
    uncertain = {"ignore": UNKNOWN, "ones": 1, "zeros": 0}[policy]
    return values.fillna(0).replace(-1.0, uncertain).astype(int)


def test_the_fixture_is_in_the_published_layout(root):
    base = release(root)
    names = sorted(p.name for p in base.iterdir())
    assert names == [
        "files",
        *sorted(f"mimic-cxr-2.0.0-{n}.csv.gz" for n in ("chexpert", "metadata", "negbio", "split")),
    ]
    meta = read(root, "metadata")
    for row in meta.itertuples():
        sid = str(row.subject_id)
        path = (
            base / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{row.study_id}" / f"{row.dicom_id}.jpg"
        )
        assert path.is_file()
    labels = read(root, "chexpert")
    values = labels.drop(columns=["subject_id", "study_id"])
    assert list(values.columns) == sorted(values.columns)
    assert (values == -1).any().any() and values.isna().any().any() and (values == 1).any().any()
    assert set(read(root, "split")["split"]) == {"train", "validate", "test"}
    assert {"PA", "AP", "LATERAL", "LL"} <= set(meta["ViewPosition"].dropna())
    assert meta["ViewPosition"].isna().any()


@pytest.mark.parametrize("labeler", ["chexpert", "negbio"])
@pytest.mark.parametrize("policy", ["ignore", "ones", "zeros"])
def test_counts_equal_those_of_the_csvs(root, labeler, policy):
    table, source = mimic.build_index(root, labeler=labeler, uncertainty=policy)
    expected = frontal_images(root, labeler)
    assert len(table) == len(expected) == source["summary"]["frontal"]
    assert table["patient"].nunique() == expected["subject_id"].nunique()
    labels = source["summary"]["labels"]
    for finding, observation in MAPPED.items():
        values = after_policy(expected[observation], policy)
        for name, value in (("positive", 1), ("negative", 0), ("unknown", UNKNOWN)):
            assert labels[finding][name] == int((values == value).sum()), (finding, name)
    for finding in set(FINDINGS) - set(MAPPED):
        assert labels[finding]["unknown"] == len(table)
    pathologies = [c for c in read(root, labeler).columns if c not in NOT_PATHOLOGIES]
    assert len(pathologies) == 12
    positive = pd.concat([after_policy(expected[o], policy) == 1 for o in pathologies], axis=1)
    positive = positive.any(axis=1)
    normal = ~positive & (expected["No Finding"] == 1)
    assert labels[ABNORMAL]["positive"] == int(positive.sum())
    assert labels[ABNORMAL]["negative"] == int(normal.sum())
    assert source["options"] == {"labeler": labeler, "uncertainty": policy}
    assert source["files"]["labels_csv"].endswith(f"mimic-cxr-2.0.0-{labeler}.csv.gz")


def test_labelers_give_different_labels(root):
    chexpert_table, _ = mimic.build_index(root, labeler="chexpert")
    negbio_table, _ = mimic.build_index(root, labeler="negbio")
    findings = list(FINDINGS)
    assert (chexpert_table[findings].to_numpy() != negbio_table[findings].to_numpy()).any()


def test_official_split_is_honoured(root):
    table, source = mimic.build_index(root, val_fraction=0.5, seed=9)
    split = read(root, "split").set_index("dicom_id")["split"].replace("validate", "val")
    assert (table["split"].to_numpy() == split.loc[table["image_id"]].to_numpy()).all()
    assert set(table["split"]) == {"train", "val", "test"}
    assert source["split_policy"] == "official split"
    check_patient_disjoint(table)


def test_views_and_unlabelled_studies_are_counted(root):
    meta = read(root, "metadata")
    labelled = meta.merge(read(root, "chexpert")[["subject_id", "study_id"]], how="inner")
    table, source = mimic.build_index(root)
    view = labelled["ViewPosition"]
    assert source["skipped"]["lateral_views"] == int(view.isin(["LATERAL", "LL"]).sum())
    assert source["skipped"]["other_views"] == int(
        (~view.isin(["PA", "AP", "LATERAL", "LL"])).sum()
    )
    assert source["skipped"]["images_of_unlabelled_studies"] == len(meta) - len(labelled) > 0
    everything, _ = mimic.build_index(root, views=("PA", "AP", "LATERAL", "OTHER"))
    assert len(everything) == len(labelled)
    blank = everything["image_id"].isin(labelled.loc[view.isna(), "dicom_id"])
    assert blank.any() and set(everything.loc[blank, "view"]) == {"OTHER"}
    assert table["age"].isna().all() and (table["sex"] == "").all()


def test_is_marker(root, tmp_path):
    assert mimic.is_marker(release(root) / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert mimic.is_marker(tmp_path / "mimic-cxr-2.1.0-metadata.csv")
    assert not mimic.is_marker(release(root) / "mimic-cxr-2.0.0-chexpert.csv.gz")


def test_bad_options(root):
    with pytest.raises(ValueError, match="labeler='chexbert' is not one of chexpert, negbio"):
        mimic.build_index(root, labeler="chexbert")
    with pytest.raises(ValueError, match="uncertainty='u-ones' is not one of ignore, ones, zeros"):
        mimic.build_index(root, uncertainty="u-ones")


def test_bad_rows_name_the_file_and_row(tmp_path):
    root = write_mimic(tmp_path, seed=5)
    base = release(root)
    rewrite_cell(base / "mimic-cxr-2.0.0-chexpert.csv.gz", 3, "Edema", "-2.0")
    with pytest.raises(ValueError, match=r"chexpert\.csv\.gz, row 3: 'Edema' is '-2\.0'"):
        mimic.build_index(root)
    mimic.build_index(root, labeler="negbio")  # the other label file is untouched
    rewrite_cell(base / "mimic-cxr-2.0.0-split.csv.gz", 2, "split", "dev")
    with pytest.raises(ValueError, match=r"split\.csv\.gz, row 2: split 'dev' is not one of"):
        mimic.build_index(root, labeler="negbio")
    drop_column(base / "mimic-cxr-2.0.0-metadata.csv.gz", "ViewPosition")
    with pytest.raises(
        ValueError, match=r"metadata\.csv\.gz: missing column\(s\) \['ViewPosition'\]"
    ):
        mimic.build_index(root, labeler="negbio")


def test_missing_image_and_files_folder(tmp_path):
    root = write_mimic(tmp_path, seed=5)
    table, _ = mimic.build_index(root)
    Path(table["path"].iloc[0]).unlink()
    with pytest.raises(DatasetLayoutError, match="1 image.*not found"):
        mimic.build_index(root)
    assert mimic.build_index(root, skip_bad=True)[1]["skipped"]["missing_images"] == 1
    (release(root) / "files").rename(release(root) / "jpgs")
    with pytest.raises(DatasetLayoutError, match="no files/ folder"):
        mimic.build_index(root)


def test_prepare_cache_decodes_every_image(root, tmp_path):
    table, source = mimic.build_index(root)
    cache = prepare_cache(
        table, tmp_path / "cache", size=32, workers=1, source=source, progress=False
    )
    index, images, info = open_cache(cache)
    assert info["n_failed"] == 0 and len(index) == len(table)
    for i, path in enumerate(table["path"]):
        assert np.array_equal(images[i], load_grey(path, 32))
