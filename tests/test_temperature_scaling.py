"""Temperature scaling end to end: fitted on validation when the model ships, stored in
config.json, applied by predict and evaluate, and reported before and after in metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from chexvision_lib.core.labels import ABNORMAL, OUTPUTS
from chexvision_lib.data.batches import BatchLoader, CachedSplit
from chexvision_lib.data.prepare import prepare
from chexvision_lib.evaluation.calibration import apply_temperature, fit_temperatures
from chexvision_lib.evaluation.evaluate import evaluate_run
from chexvision_lib.models.loading import load_model
from chexvision_lib.models.predict import predict_loader
from chexvision_lib.training.config import TrainConfig
from chexvision_lib.training.loop import fit


@pytest.fixture(scope="module")
def run(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("temperature")
    cache = prepare(synth_root, root / "cache", size=64, progress=False)
    config = TrainConfig(
        cache=str(cache), out=str(root / "run"), model="seresnet_small", epochs=2,
        batch_size=16, threads=2, deterministic=True,
    )  # fmt: skip
    return fit(config, show_progress=False)


def _validation(model, run: Path) -> tuple[np.ndarray, np.ndarray]:
    config = json.loads((run / "config.json").read_text())
    split = CachedSplit(config["cache"]["path"], "val")
    loader = BatchLoader(split, 64, torch.device("cpu"), shuffle=False)
    return predict_loader(model, loader, model.preprocessing, None, show_progress=False)


def test_the_shipped_model_carries_temperatures_fitted_on_validation(run: Path):
    model = load_model(run)
    stored = json.loads((run / "model" / "config.json").read_text())["temperatures"]
    assert model.temperatures == stored and len(stored) == len(OUTPUTS)
    assert stored[OUTPUTS.index(ABNORMAL)] is not None
    model.temperatures = None  # the raw model, as it was before shipping
    raw, labels = _validation(model, run)
    refitted = fit_temperatures(raw, labels)
    assert [t is None for t in refitted] == [t is None for t in stored]
    pairs = [(a, b) for a, b in zip(refitted, stored, strict=True) if b is not None]
    assert [a for a, _ in pairs] == pytest.approx([b for _, b in pairs], rel=1e-4)


def test_predict_applies_them_and_thresholds_are_on_calibrated_scores(run: Path):
    model = load_model(run)
    calibrated, labels = _validation(model, run)
    temperatures = model.temperatures
    model.temperatures = None
    raw, _ = _validation(model, run)
    # float32 on the model's side, float64 here
    np.testing.assert_allclose(calibrated, apply_temperature(raw, temperatures), atol=2e-5)
    assert not np.allclose(np.nan_to_num(calibrated), np.nan_to_num(raw))


def test_evaluate_reports_calibration_before_and_after(run: Path):
    metrics = evaluate_run(run, "test", n_resamples=50, show_progress=False)
    abnormal = metrics["calibration"]["outputs"][ABNORMAL]
    assert abnormal["temperature"] is not None
    for block in (abnormal, abnormal["after_temperature"]):
        assert 0 <= block["brier"] <= 1 and 0 <= block["ece"] <= 1
    assert "change" in abnormal
    points = metrics["operating_points"]
    assert points is not None and json.dumps(points)  # JSON-safe, with the fixed targets


def test_ppv_and_npv_at_a_given_prevalence(run: Path, capsys):
    from chexvision_lib.cli.main import main as cli_main

    assert cli_main(["evaluate", str(run), "--resamples", "20", "--prevalence", "0.05"]) == 0
    metrics = json.loads((run / "test" / "metrics.json").read_text())
    abnormal = metrics["operating_points"]["outputs"][ABNORMAL]
    assert abnormal["prevalence"] == 0.05
    checked = 0
    for point in abnormal["sensitivity_at_specificity"] + abnormal["specificity_at_sensitivity"]:
        sens, spec = point["sensitivity"], point["specificity"]
        called_positive = sens * 0.05 + (1 - spec) * 0.95
        if called_positive > 0:  # Bayes' rule; undefined when nothing is called positive
            assert point["ppv_at_prevalence"] == pytest.approx(sens * 0.05 / called_positive)
            checked += 1
    assert checked
    with pytest.raises(SystemExit):
        cli_main(["evaluate", str(run), "--prevalence", "1.5"])
    assert "--prevalence: must be a number in (0, 1)" in capsys.readouterr().err
