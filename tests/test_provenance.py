"""Provenance that cannot lie: the card calls data NIH ChestX-ray14 only when the recorded hashes
are NIH's, and synthetic data is labelled synthetic whatever the working directory."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REALDATA, TINY_ROWS, realdata, write_tiny_nih
from huggingface_hub import ModelCard

from chexvision_lib.core.hashing import file_sha256
from chexvision_lib.data.binary_sets import build_binary_index
from chexvision_lib.data.hub_parquet import build_hub_index
from chexvision_lib.data.nih_index import build_nih_index
from chexvision_lib.data.prepare import prepare
from chexvision_lib.data.provenance import (
    KNOWN_DATA_ENTRY_SHA256,
    OFFICIAL_SPLIT_IMAGES,
    OFFICIAL_SPLIT_SHA256,
    content_sha256,
    verify_nih_source,
)
from chexvision_lib.data.splits import read_split_list
from chexvision_lib.data.synthetic import MARKER_NAME, write_synthetic_nih
from chexvision_lib.evaluation.evaluate import evaluate_run
from chexvision_lib.publishing.model_folder import UNVERIFIED_NAME, build_model_folder
from chexvision_lib.training.config import TrainConfig
from chexvision_lib.training.loop import fit

SYNTHETIC_NAME_START = "Synthetic ChestX-ray14-layout images"
NIH = REALDATA / "nih"


@pytest.fixture
def inside() -> Iterator[None]:
    """Run a test from a working directory of its own, restored afterwards."""
    before = os.getcwd()
    yield
    os.chdir(before)


# ----------------------------------------------------------------------------------------------
# The constants
# ----------------------------------------------------------------------------------------------


def test_official_hashes_are_those_of_the_real_files():
    for key, name in (("train_val_list", "train_val_list.txt"), ("test_list", "test_list.txt")):
        path = realdata("nih", name)
        assert file_sha256(path) == OFFICIAL_SPLIT_SHA256[key], name
        assert len(read_split_list(path)) == OFFICIAL_SPLIT_IMAGES[key], name
    csv = realdata("nih", "Data_Entry_2017_v2020.csv.gz")
    assert KNOWN_DATA_ENTRY_SHA256.get(content_sha256(csv)) == "NIH Data_Entry_2017_v2020.csv"
    # the compressed file's own hash is not the content's: a .gz copy is recognised by content
    assert file_sha256(csv) not in KNOWN_DATA_ENTRY_SHA256


def official_source(**changes: object) -> dict:
    source = {"kind": "nih", "synthetic": False, "sha256": dict(OFFICIAL_SPLIT_SHA256)}
    return {**source, **changes}


def test_verify_requires_not_synthetic_and_both_official_lists():
    assert verify_nih_source(official_source()) == {
        "verified": True,
        "reasons": [],
        "data_entry_release": None,
        "notes": [],
    }
    hub = verify_nih_source(official_source(kind="hub_parquet"))
    assert hub["verified"] is True
    for changes, words in (
        ({"synthetic": True}, MARKER_NAME),
        ({"synthetic": None}, "was not recorded"),
        ({"kind": "binary"}, "kind 'binary'"),
        ({"sha256": {"train_val_list": OFFICIAL_SPLIT_SHA256["train_val_list"]}}, "test_list"),
        ({"sha256": {**OFFICIAL_SPLIT_SHA256, "train_val_list": "0" * 64}}, "0" * 64),
    ):
        result = verify_nih_source(official_source(**changes))
        assert result["verified"] is False, changes
        assert any(words in reason for reason in result["reasons"]), (changes, result)
    legacy = official_source()
    del legacy["synthetic"]
    assert verify_nih_source(legacy)["verified"] is False


# ----------------------------------------------------------------------------------------------
# What the indexes record
# ----------------------------------------------------------------------------------------------


def test_index_records_absolute_paths_and_not_synthetic(tmp_path: Path, inside: None):
    write_tiny_nih(tmp_path / "nih", TINY_ROWS, {5, 6})
    os.chdir(tmp_path)
    source = build_nih_index(Path("nih")).source
    os.chdir("/")
    for key in ("root", "data_entry_csv", "train_val_list", "test_list"):
        assert Path(source[key]).is_absolute() and Path(source[key]).exists(), key
    assert source["synthetic"] is False
    assert source["sha256"]["test_list"] == file_sha256(tmp_path / "nih" / "test_list.txt")
    assert source["data_entry_csv_content_sha256"] == source["sha256"]["data_entry_csv"]
    assert verify_nih_source(source)["verified"] is False  # hand-made lists are not NIH's


def test_synthetic_set_is_recorded_as_synthetic(synth_root: Path, tmp_path: Path):
    assert build_nih_index(synth_root).source["synthetic"] is True
    # the marker below the root counts too (root = the folder above the set)
    parent = tmp_path / "above"
    shutil.copytree(synth_root, parent / "nih")
    assert build_nih_index(parent).source["synthetic"] is True


def test_hub_and_binary_sources_record_synthetic_and_absolute_paths(
    synth_root: Path, tiny_nih: Path, tmp_path: Path, inside: None
):
    # Hub shards joined to the synthetic set's metadata: synthetic.
    names = sorted(p.name for p in (synth_root / "images_001" / "images").glob("*.png"))[:4]
    shards = tmp_path / "hub"
    shards.mkdir()
    images = [(synth_root / "images_001" / "images" / n).read_bytes() for n in names]
    pq.write_table(pa.table({"image": images, "filename": names}), shards / "s.parquet")
    hub = build_hub_index(shards, synth_root, skip_bad=True).source
    assert hub["kind"] == "hub_parquet" and hub["synthetic"] is True
    assert Path(hub["parquet_dir"]).is_absolute()
    # ... and with a real-layout metadata root, not synthetic unless the shards' folder says so.
    tiny_names = sorted(p.name for p in (tiny_nih / "images_001" / "images").glob("*.png"))
    blobs = [(tiny_nih / "images_001" / "images" / n).read_bytes() for n in tiny_names]
    pq.write_table(pa.table({"image": blobs, "filename": tiny_names}), shards / "s.parquet")
    assert build_hub_index(shards, tiny_nih).source["synthetic"] is False
    (shards / MARKER_NAME).write_text("{}")
    assert build_hub_index(shards, tiny_nih).source["synthetic"] is True

    # A binary labels CSV given relative to the working directory.
    for name in tiny_names:
        shutil.copyfile(tiny_nih / "images_001" / "images" / name, tmp_path / name)
    rows = [f"{name},{k % 2},{k}" for k, name in enumerate(tiny_names)]
    (tmp_path / "labels.csv").write_text("path,label,patient\n" + "\n".join(rows) + "\n")
    os.chdir(tmp_path)
    _, info = build_binary_index(Path("labels.csv"))
    assert Path(info["root"]).is_absolute() and info["synthetic"] is False
    assert info["sha256"] == {"labels_csv": file_sha256(tmp_path / "labels.csv")}


# ----------------------------------------------------------------------------------------------
# Cards of a demo-style run: relative paths, carded from another directory
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like `make demo`: data, cache and run given relative to the working directory."""
    base = tmp_path_factory.mktemp("demo")
    before = os.getcwd()
    torch.manual_seed(0)
    try:
        os.chdir(base)
        write_synthetic_nih(Path("data"), n_patients=40, image_size=64, seed=1)
        prepare(Path("data"), Path("cache"), size=32, progress=False)
        config = TrainConfig(
            cache="cache",
            out="run",
            model="seresnet_small",
            epochs=1,
            batch_size=16,
            threads=2,
            deterministic=True,
        )
        run = fit(config, show_progress=False)
        evaluate_run(run, "test", n_resamples=20, show_progress=False)
    finally:
        os.chdir(before)
    return base / "run"


def claims_nih(body: str) -> bool:
    """Whether the card's body calls its data NIH's or its split official (the references table
    of published results names the official list too, so only our own wording counts)."""
    ours = ("split — official test_list.txt", "split: official test_list.txt")
    return "Data: **NIH ChestX-ray14" in body or any(words in body for words in ours)


def card_from_elsewhere(run: Path, out: Path, where: Path) -> tuple[ModelCard, str, dict]:
    """Build the model folder with `where` as the working directory; (card, body, data)."""
    before = os.getcwd()
    where.mkdir(parents=True, exist_ok=True)
    try:
        os.chdir(where)
        folder = build_model_folder(run, out, figures=False)
    finally:
        os.chdir(before)
    card = ModelCard.load(folder / "README.md")
    data = json.loads((folder / "config.json").read_text())["data"]
    return card, card.text, data


def test_synthetic_run_carded_from_another_directory_is_synthetic(
    relative_run: Path, tmp_path: Path
):
    recorded = json.loads((relative_run / "config.json").read_text())["data_source"]
    assert recorded["synthetic"] is True and Path(recorded["root"]).is_absolute()
    card, body, data = card_from_elsewhere(relative_run, tmp_path / "model", tmp_path / "else")
    assert data["synthetic"] is True and data["verification"]["verified"] is False
    assert {r.dataset_name.split(" (")[0] for r in card.data.eval_results} == {SYNTHETIC_NAME_START}
    assert {r.dataset_split for r in card.data.eval_results} == {
        "test_list.txt of the synthetic set"
    }
    assert "synthetic-data" in card.data.tags
    assert "**Trained and tested on synthetic images.**" in body
    assert not claims_nih(body)


def rewrite_source(run: Path, copy: Path, change) -> Path:
    """A copy of the run whose model config records another data source; its recorded `out`
    names the copy, as if it had been trained there."""
    shutil.copytree(run, copy)
    path = copy / "model" / "config.json"
    config = json.loads(path.read_text())
    config["training"]["data_source"] = change(dict(config["training"]["data_source"]))
    config["training"]["out"] = copy.name
    path.write_text(json.dumps(config))
    # The evaluated data is recorded too (a card refuses metrics of other data): the same change.
    for metrics_path in copy.glob("*/metrics.json"):
        metrics = json.loads(metrics_path.read_text())
        evaluated = config["training"]["data_source"]
        metrics["data_source"] = {k: evaluated.get(k) for k in ("kind", "synthetic", "sha256")}
        metrics_path.write_text(json.dumps(metrics))
    return copy


def as_legacy(source: dict, base: Path) -> dict:
    """The source as chexvision recorded it before: relative paths, no `synthetic`."""
    source.pop("synthetic")
    for key in ("root", "data_entry_csv", "train_val_list", "test_list"):
        source[key] = str(Path(source[key]).relative_to(base))
    return source


def test_legacy_relative_run_from_another_directory_is_never_called_nih(
    relative_run: Path, tmp_path: Path
):
    base = relative_run.parent
    # The defect: such a run was carded "NIH ChestX-ray14, split: official test_list.txt".
    # Where the run's own relative `out` leads back to the data, the marker is found: synthetic.
    legacy = rewrite_source(relative_run, base / "legacy_run", lambda s: as_legacy(s, base))
    card, _, data = card_from_elsewhere(legacy, tmp_path / "m1", tmp_path / "else")
    assert data["synthetic"] is True
    assert all(r.dataset_name.startswith(SYNTHETIC_NAME_START) for r in card.data.eval_results)
    # Where it cannot be found (the data moved), the source is unverified, not NIH.
    moved = rewrite_source(
        relative_run,
        base / "moved_run",
        lambda s: {**as_legacy(s, base), "root": "gone/data"},
    )
    card, body, data = card_from_elsewhere(moved, tmp_path / "m2", tmp_path / "else")
    assert data["synthetic"] is None
    assert {r.dataset_name for r in card.data.eval_results} == {UNVERIFIED_NAME}
    assert {r.dataset_split for r in card.data.eval_results} == {
        "test_list.txt of an unverified data source"
    }
    assert "**Unverified data source.**" in body and "was not recorded" in body
    assert not claims_nih(body)
    assert "unverified-data-source" in card.data.tags


# ----------------------------------------------------------------------------------------------
# A real-layout NIH copy: the official lists, a few of the real images
# ----------------------------------------------------------------------------------------------

TINY_TRAIN = 6
TINY_TEST = 3


@pytest.fixture
def real_copy(tmp_path: Path) -> Path:
    """The two official list files, the Data_Entry rows of a few real images, and those images."""
    images = sorted(p.name for p in realdata("nih", "images").glob("*.png"))
    test = set(read_split_list(realdata("nih", "test_list.txt")))
    chosen = [n for n in images if n not in test][:TINY_TRAIN]
    chosen += [n for n in images if n in test][:TINY_TEST]
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    for name in ("train_val_list.txt", "test_list.txt"):
        shutil.copyfile(NIH / name, root / name)
    for name in chosen:
        shutil.copyfile(NIH / "images" / name, root / "images" / name)
    entries = pd.read_csv(NIH / "Data_Entry_2017_v2020.csv.gz", dtype=str)
    entries[entries["Image Index"].isin(chosen)].to_csv(
        root / "Data_Entry_2017_v2020.csv", index=False
    )
    return root


def test_real_layout_copy_with_the_official_lists_is_verified(
    real_copy: Path, relative_run: Path, tmp_path: Path
):
    source = build_nih_index(real_copy, skip_bad=True).source
    assert source["counts"]["test"] == TINY_TEST and source["synthetic"] is False
    verification = verify_nih_source(source)
    assert verification["verified"] is True, verification
    assert verification["data_entry_release"] is None  # a cut-down CSV is no known release
    assert any("Data_Entry CSV" in note for note in verification["notes"])

    copy = rewrite_source(relative_run, tmp_path / "run", lambda _: source)
    card, body, data = card_from_elsewhere(copy, tmp_path / "model", tmp_path / "else")
    assert data["verification"]["verified"] is True
    expected_split = f"official test_list.txt, the {TINY_TEST} of its 25,596 images indexed"
    assert {(r.dataset_name, r.dataset_split) for r in card.data.eval_results} == {
        ("NIH ChestX-ray14", expected_split)
    }
    assert "Provenance: **verified**" in body
    assert "unverified" not in body.lower() and "synthetic-data" not in card.data.tags
    assert claims_nih(body) and f"test split — {expected_split}" in body


def test_tampered_test_list_is_unverified(real_copy: Path, relative_run: Path, tmp_path: Path):
    test_list = real_copy / "test_list.txt"
    lines = test_list.read_text().splitlines()
    kept = set(build_nih_index(real_copy, skip_bad=True).table["image_id"])
    dropped = next(n for n in lines if n not in kept)  # one line, of an image not in the copy
    test_list.write_text("\n".join(n for n in lines if n != dropped))
    source = build_nih_index(real_copy, skip_bad=True).source
    assert source["counts"]["test"] == TINY_TEST  # the same images are indexed...
    verification = verify_nih_source(source)
    assert verification["verified"] is False  # ... but the list is not NIH's
    assert verification["reasons"] == [
        f"test_list.txt has SHA-256 {source['sha256']['test_list']}, not that of NIH's "
        f"official test_list.txt ({OFFICIAL_SPLIT_SHA256['test_list']})"
    ]

    copy = rewrite_source(relative_run, tmp_path / "run", lambda _: source)
    card, body, data = card_from_elsewhere(copy, tmp_path / "model", tmp_path / "else")
    assert {(r.dataset_name, r.dataset_split) for r in card.data.eval_results} == {
        (UNVERIFIED_NAME, "test_list.txt of an unverified data source")
    }
    assert card.data.eval_results[0].dataset_type == "unverified-data-source"
    assert "**Unverified data source.**" in body
    assert verification["reasons"][0] in body
    assert "test split — test_list.txt of an unverified data source" in body
    assert not claims_nih(body)
