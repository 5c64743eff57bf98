"""The two end-to-end claims: `make demo` learns the synthetic set, and a model trained from scratch
on CPU learns the real paediatric pneumonia set. Each trains for about a minute."""

from pathlib import Path

import pytest
from conftest import realdata

from chexvision_lib.data.prepare import prepare
from chexvision_lib.data.splits import check_patient_disjoint
from chexvision_lib.evaluation.evaluate import evaluate_run
from chexvision_lib.reporting.report import localisation_report
from chexvision_lib.studies.demo import run_demo
from chexvision_lib.training.config import TrainConfig
from chexvision_lib.training.loop import fit


def test_demo_reaches_the_promised_auc(tmp_path: Path):
    metrics = run_demo(tmp_path / "demo")
    assert metrics["split"] == "test"
    assert metrics["macro_auc"] >= 0.85
    assert metrics["binary_auc"] >= 0.90
    # re-running continues instead of starting over: nothing left to train
    again = run_demo(tmp_path / "demo")
    assert again["macro_auc"] == pytest.approx(metrics["macro_auc"])

    # Grad-CAM of the trained model points into the true lesion box far more often than chance.
    table = localisation_report(tmp_path / "demo" / "run", "test")
    overall = table[table["finding"] == "all"].set_index("method")
    cam, chance = overall.loc["grad_cam", "pointing_game"], overall.loc["random", "pointing_game"]
    assert overall.loc["grad_cam", "n"] > 100
    assert cam >= chance + 0.1 and cam >= 3 * chance


def test_real_pediatric_from_scratch(tmp_path: Path):
    cache = prepare(realdata("pediatric"), tmp_path / "cache", size=128, seed=0, progress=False)
    from chexvision_lib.data.cache import open_cache

    table, _, _ = open_cache(cache)
    check_patient_disjoint(table)
    share = (table["split"] == "test").mean()
    assert 0.25 < share < 0.35  # 70/30 by patient
    config = TrainConfig(
        cache=str(cache),
        out=str(tmp_path / "run"),
        model="seresnet_small",
        head="binary",
        epochs=20,
        batch_size=32,
        lr=3e-3,
        patience=20,
        seed=0,
        threads=2,
    )
    run = fit(config, show_progress=False)
    metrics = evaluate_run(run, "test", n_resamples=200, show_progress=False)
    assert metrics["macro_auc"] is None  # paediatric labels are normal/pneumonia only
    assert metrics["binary_auc"] >= 0.95
