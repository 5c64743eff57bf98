"""`chexvision prepare ROOT` on every public dataset's published layout: detection, options, the
cache, and the counts it reports equal to those computed from the dataset's own CSVs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from dataset_fixtures import write_chexpert, write_indiana, write_mimic, write_padchest
from dicom_fixtures import write_rsna, write_vindr

from chexvision_lib.cli import data as cli_data
from chexvision_lib.cli.main import main
from chexvision_lib.core.labels import ABNORMAL, FINDINGS, UNKNOWN
from chexvision_lib.data.cache import cache_fingerprint, open_cache
from chexvision_lib.data.label_space import provided_findings
from chexvision_lib.data.prepare import (
    SOURCE_KINDS,
    check_options,
    detect_kind,
    prepare,
)
from chexvision_lib.data.sources import indiana
from chexvision_lib.data.splits import check_patient_disjoint
from chexvision_lib.evaluation.evaluate import same_data

WRITERS = {
    "chexpert": write_chexpert,
    "mimic": write_mimic,
    "padchest": write_padchest,
    "rsna": write_rsna,
    "indiana": write_indiana,
    "vindr": write_vindr,
}


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("sources")
    out = {}
    for kind, write in WRITERS.items():
        write(base / kind, seed=0)
        out[kind] = base / kind
    return out


def test_the_cli_spells_the_same_kinds_as_prepare():
    assert cli_data.SOURCE_KINDS == SOURCE_KINDS
    assert set(cli_data.READER_OPTION_FLAGS.values()) == {
        name
        for kind in SOURCE_KINDS
        for name in __import__(f"chexvision_lib.data.sources.{kind}", fromlist=["OPTIONS"]).OPTIONS
    }


@pytest.mark.parametrize("kind", list(WRITERS))
def test_each_layout_is_detected(roots, kind):
    assert detect_kind(roots[kind]) == kind


def test_nih_and_binary_detection_is_unchanged(synth_root: Path, tmp_path: Path):
    assert detect_kind(synth_root) == "nih"
    (tmp_path / "NORMAL").mkdir()
    assert detect_kind(tmp_path) == "binary"


def test_two_datasets_below_one_root_is_an_error(roots, tmp_path):
    both = tmp_path / "input"
    both.mkdir()
    (both / "chexpert").symlink_to(roots["chexpert"])
    (both / "indiana").symlink_to(roots["indiana"])
    with pytest.raises(ValueError, match="several datasets: chexpert .*; indiana .*--kind"):
        detect_kind(both)


def test_options_are_checked_before_reading():
    assert check_options("chexpert", {"uncertainty": "ones"}) == {"uncertainty": "ones"}
    with pytest.raises(ValueError, match="unknown option 'target' .*its options: uncertainty"):
        check_options("chexpert", {"target": "abnormal"})
    with pytest.raises(ValueError, match="uncertainty='maybe' is not one of ignore, ones, zeros"):
        check_options("mimic", {"uncertainty": "maybe"})
    with pytest.raises(ValueError, match="do not apply to --kind nih"):
        check_options("nih", {"uncertainty": "ones"})


def _expected_chexpert(root: Path, uncertainty: str) -> dict[str, int]:
    """Frontal-image counts straight from the CSVs, by the documented rules."""
    frames = [
        pd.read_csv(p) for p in sorted(root.rglob("*.csv")) if p.name in ("train.csv", "valid.csv")
    ]
    raw = pd.concat(frames, ignore_index=True)
    # Frontal views; a frontal whose AP/PA says LL or RL (decubitus) counts as OTHER, not frontal.
    raw = raw[(raw["Frontal/Lateral"] == "Frontal") & ~raw["AP/PA"].isin(["LL", "RL"])]
    value = {"ignore": UNKNOWN, "ones": 1, "zeros": 0}[uncertainty]
    effusion = raw["Pleural Effusion"].fillna(0).replace(-1.0, value)
    return {
        "images": len(raw),
        "patients": raw["Path"].str.extract(r"(patient\d+)")[0].nunique(),
        "effusion_positive": int((effusion == 1).sum()),
        "effusion_unknown": int((effusion == UNKNOWN).sum()),
    }


@pytest.mark.parametrize("uncertainty", ["ignore", "ones"])
def test_chexpert_cache_counts_equal_the_csvs(roots, tmp_path, uncertainty):
    cache = prepare(
        roots["chexpert"],
        tmp_path / "cache",
        size=32,
        options={"uncertainty": uncertainty},
        workers=1,
        progress=False,
    )
    table, images, info = open_cache(cache)
    expected = _expected_chexpert(roots["chexpert"], uncertainty)
    assert len(table) == images.shape[0] == expected["images"]
    assert table["patient"].nunique() == expected["patients"]
    assert int((table["Effusion"] == 1).sum()) == expected["effusion_positive"]
    assert int((table["Effusion"] == UNKNOWN).sum()) == expected["effusion_unknown"]
    assert (table["Nodule"] == UNKNOWN).all()  # CheXpert does not label nodules
    assert info["source"]["options"] == {"uncertainty": uncertainty}
    assert info["source"]["views"] == "frontal (the default)"
    assert images.reshape(len(table), -1).std(axis=1).min() > 0  # every image decoded


@pytest.mark.parametrize("kind", list(WRITERS))
def test_every_kind_prepares_a_patient_disjoint_cache(roots, tmp_path, kind):
    cache = prepare(roots[kind], tmp_path / "cache", size=32, workers=1, progress=False)
    table, images, info = open_cache(cache)
    source = info["source"]
    assert source["kind"] == kind and info["n_failed"] == 0
    check_patient_disjoint(table)
    assert set(table["split"]) <= {"train", "val", "test"} and (table["split"] == "test").any()
    summary = source["summary"]
    assert summary["images"] == len(table) == images.shape[0]
    for name in (*FINDINGS, ABNORMAL):
        assert summary["labels"][name]["positive"] == int((table[name] == 1).sum())
    assert set(source["provided_findings"]) <= set(provided_findings(kind))
    for finding in set(FINDINGS) - set(provided_findings(kind)):
        assert (table[finding] == UNKNOWN).all(), finding
    for name, digest in source["sha256"].items():
        assert len(digest) == 64 and Path(source["files"][name]).is_file()


def test_cli_prepare_reports_what_the_dataset_provides(roots, tmp_path, capsys):
    out = tmp_path / "rsna_cache"
    main(
        ["prepare", str(roots["rsna"]), "--out", str(out), "--size", "32", "--workers", "1"]
        + ["--rsna-target", "lung-opacity"]
    )
    printed = capsys.readouterr().out
    table, _, info = open_cache(out)
    assert info["source"]["options"]["target"] == "lung-opacity"
    assert f"kind rsna: {len(table):,} images" in printed
    positives = int((table["Pneumonia"] == 1).sum())
    assert f"Pneumonia {positives:,}/{len(table):,}" in printed
    assert "not labelled here (unknown, ignored by losses and metrics): Atelectasis" in printed
    assert "skipped" in printed  # "No Lung Opacity / Not Normal" images are dropped and counted


def test_cli_option_that_does_not_apply_is_one_line(roots, tmp_path, capsys):
    argv = ["prepare", str(roots["indiana"]), "--out", str(tmp_path / "c"), "--uncertainty", "ones"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "indiana: unknown option 'uncertainty' (its options: none)" in error
    assert "Traceback" not in error and not (tmp_path / "c").exists()


def test_cli_report_leaves_out_images_that_failed_to_decode(tmp_path, capsys):
    root = write_indiana(tmp_path / "indiana", seed=0)
    index, _ = indiana.build_index(root)
    Path(index["path"].iloc[0]).unlink()
    Path(index["path"].iloc[0]).write_bytes(b"not a png")  # named, present, undecodable
    out = tmp_path / "cache"
    argv = ["prepare", str(root), "--out", str(out), "--size", "32", "--workers", "1"]
    assert main([*argv, "--skip-bad"]) in (0, None)
    printed = capsys.readouterr().out
    assert f"({len(index):,} images at 32px, 1 of them failed to decode)" in printed
    assert f"kind indiana: {len(index) - 1:,} images" in printed


def test_a_cache_of_the_same_files_with_other_labels_is_not_the_same_data(roots, tmp_path):
    """Same source files (same hashes), another reader option: another index. prepare refuses to
    reuse the folder, and evaluation treats the other cache as external data, never as the run's
    own split."""
    chexpert = roots["chexpert"]
    options = {"size": 32, "workers": 1, "progress": False}
    ignore = prepare(chexpert, tmp_path / "ignore", options={"uncertainty": "ignore"}, **options)
    again = prepare(chexpert, tmp_path / "again", options={"uncertainty": "ignore"}, **options)
    ones = prepare(chexpert, tmp_path / "ones", options={"uncertainty": "ones"}, **options)
    with pytest.raises(ValueError, match="other labels, patients or splits"):
        prepare(chexpert, ignore, options={"uncertainty": "ones"}, **options)
    assert cache_fingerprint(ignore) == cache_fingerprint(again) != cache_fingerprint(ones)
    info = json.loads((ignore / "cache.json").read_text())
    run_config = {
        "data_source": info["source"],
        "cache": {"settings": info["settings"], "index_sha256": cache_fingerprint(ignore)},
    }
    assert same_data(run_config, again)
    assert not same_data(run_config, ones)  # the same files' hashes, other labels
    legacy = {**run_config, "cache": {"settings": info["settings"]}}  # runs from before
    assert same_data(legacy, ones)
