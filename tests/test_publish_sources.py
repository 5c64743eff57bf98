"""A model card for a model trained on another public dataset (CheXpert here): it names the
dataset and its split, says what its macro AUC covers, and claims nothing about NIH."""

from __future__ import annotations

from pathlib import Path

import pytest
from dataset_fixtures import write_chexpert

from chexvision_lib.data.label_space import provided_findings
from chexvision_lib.data.prepare import prepare
from chexvision_lib.data.sources.common import VIEW_NAMES as ALL_VIEWS
from chexvision_lib.evaluation.evaluate import evaluate_run
from chexvision_lib.publishing.model_folder import build_model_folder
from chexvision_lib.training.config import TrainConfig
from chexvision_lib.training.loop import fit


@pytest.fixture(scope="module")
def chexpert_card(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("chexpert_card")
    data = write_chexpert(root / "data", seed=0)
    # Every view of the fixture's 30 images, and 40% of the training patients validating: a
    # validation split with both classes.
    cache = prepare(
        data, root / "cache", size=32, views=ALL_VIEWS, val_fraction=0.4, workers=1, progress=False
    )
    config = TrainConfig(
        cache=str(cache),
        out=str(root / "run"),
        model="seresnet_small",
        epochs=1,
        batch_size=4,
        threads=2,
        ema_decay=0.5,
    )
    run = fit(config, show_progress=False)
    for split in ("test", "val"):
        evaluate_run(run, split, n_resamples=20, show_progress=False)
    folder = build_model_folder(run, root / "folder", figures=False)
    return (folder / "README.md").read_text()


def test_the_card_names_the_dataset_and_its_split(chexpert_card: str):
    assert "CheXpert (Stanford)" in chexpert_card
    assert "Unknown data source" not in chexpert_card
    assert "unverified" not in chexpert_card.lower()
    assert (
        "read from CheXpert (Stanford)'s published files by the `chexpert` reader" in chexpert_card
    )
    assert "split of an unrecorded source" not in chexpert_card
    assert "official split" in chexpert_card  # valid.csv as test, validation carved by patient


def test_the_macro_auc_says_which_findings_it_covers(chexpert_card: str):
    # CheXpert labels 7 of the 14; the fixture's tiny test split may score fewer of them.
    assert "macro ROC AUC over the 14 findings" not in chexpert_card
    assert "findings this data labels (" in chexpert_card
    covered = chexpert_card.split("findings this data labels (")[1].split(")")[0].split(", ")
    assert set(covered) <= set(provided_findings("chexpert"))
    assert "another dataset (macro over" in chexpert_card  # not set against NIH's figures


def test_the_card_says_which_weights_shipped(chexpert_card: str):
    assert "Shipped weights: epoch" in chexpert_card


def test_a_validation_split_without_an_auc_is_a_clear_error(tmp_path: Path):
    data = write_chexpert(tmp_path / "data", seed=0)
    cache = prepare(data, tmp_path / "cache", size=32, val_fraction=0.1, workers=1, progress=False)
    config = TrainConfig(
        cache=str(cache),
        out=str(tmp_path / "run"),
        model="seresnet_small",
        epochs=1,
        batch_size=8,
        threads=2,
    )
    with pytest.raises(ValueError, match="no epoch gave a validation AUC"):
        fit(config, show_progress=False)
