"""Test-time augmentation (models/tta.py) against answers computed by hand: the views, the merge
rule (mean of logits, then the temperatures once), predict with --tta, and evaluate --tta writing
its results beside the plain ones without changing them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from chexvision_lib.cli.main import main as cli_main
from chexvision_lib.core.labels import OUTPUTS
from chexvision_lib.core.predictions import prob_column, read_predictions
from chexvision_lib.data.batches import CachedSplit, normalise
from chexvision_lib.data.prepare import prepare
from chexvision_lib.evaluation.evaluate import evaluate_run, metrics_from_predictions
from chexvision_lib.models.loading import load_model
from chexvision_lib.models.predict import predict_arrays, predict_images
from chexvision_lib.models.registry import ChestClassifier, build_model
from chexvision_lib.models.tta import TTA_CHOICES, TTA_VIEWS, crop_side, tta_views

PROBS = [prob_column(name) for name in OUTPUTS]
SIZE = 64
UNKNOWN = re.escape("tta must be one of none, hflip, crops, hflip+crops; got 'vflip'")


@pytest.fixture(scope="module")
def model() -> ChestClassifier:
    torch.manual_seed(0)
    model = build_model("seresnet_small", image_size=SIZE)
    # Temperatures other than 1, so that where they are applied (once, after the merge) shows.
    model.temperatures = [1.5] * 14 + [0.7]
    model.thresholds = [0.5] * len(OUTPUTS)
    return model.eval()


def _pixels(seed: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8)


def _normalised(model: ChestClassifier, pixels: np.ndarray) -> torch.Tensor:
    spec = model.preprocessing
    return normalise(torch.from_numpy(pixels).unsqueeze(1), spec["mean"][0], spec["std"][0], SIZE)


def test_hflip_of_a_mirror_symmetric_image_changes_nothing(model: ChestClassifier):
    half = _pixels(1)[:, :, : SIZE // 2]
    symmetric = np.ascontiguousarray(np.concatenate([half, half[:, :, ::-1]], axis=2))
    assert (symmetric == symmetric[:, :, ::-1]).all()
    plain = predict_arrays(model, symmetric)
    np.testing.assert_allclose(predict_arrays(model, symmetric, tta="hflip"), plain, atol=1e-6)
    # An image that is not symmetric does change: the test above could fail.
    other = _pixels(2)
    assert (
        np.abs(predict_arrays(model, other, tta="hflip") - predict_arrays(model, other)).max()
        > 1e-4
    )


def test_hflip_is_the_mean_of_the_logits_of_the_image_and_its_mirror(model: ChestClassifier):
    pixels = _pixels(3)
    x = _normalised(model, pixels)
    with torch.no_grad():
        logits = (model(x) + model(torch.flip(x, dims=[3]))) / 2
        expected = model.probabilities(logits).numpy()
    np.testing.assert_allclose(predict_arrays(model, pixels, tta="hflip"), expected, atol=1e-6)

    # predict_loader (what evaluate runs) is checked against predict_arrays in the evaluate test.


@pytest.mark.parametrize("tta", TTA_CHOICES)
def test_each_view_set_has_its_views_at_the_input_shape(tta: str):
    x = torch.randn(2, 1, SIZE, SIZE)
    views = list(tta_views(x, tta))
    assert (
        len(views) == TTA_VIEWS[tta] == {"none": 1, "hflip": 2, "crops": 5, "hflip+crops": 10}[tta]
    )
    assert all(view.shape == x.shape for view in views)
    assert torch.equal(views[0], x) == (tta in ("none", "hflip"))  # crops never show x whole
    distinct = {tuple(view.flatten()[:50].tolist()) for view in views}
    assert len(distinct) == len(views)


def test_crops_are_the_corners_and_centre_of_90_percent_resized_back():
    x = torch.randn(2, 1, SIZE, SIZE)
    side = crop_side(SIZE)
    assert side == 58  # round(0.9 * 64)
    start = (SIZE - side) // 2

    def resized(crop: torch.Tensor) -> torch.Tensor:
        return F.interpolate(crop, size=(SIZE, SIZE), mode="bilinear", align_corners=False)

    expected = [
        resized(x[..., :side, :side]),  # top left
        resized(x[..., -side:, :side]),  # bottom left
        resized(x[..., -side:, -side:]),  # bottom right
        resized(x[..., :side, -side:]),  # top right
        resized(x[..., start : start + side, start : start + side]),  # centre
    ]
    for view, want in zip(tta_views(x, "crops"), expected, strict=True):
        torch.testing.assert_close(view, want)
    both = list(tta_views(x, "hflip+crops"))
    torch.testing.assert_close(both[4], expected[4])
    torch.testing.assert_close(
        both[9], resized(x.flip(3)[..., start : start + side, start : start + side])
    )


def test_an_unknown_view_set_is_named(model: ChestClassifier, tmp_path: Path):
    with pytest.raises(ValueError, match=UNKNOWN):
        list(tta_views(torch.zeros(1, 1, 8, 8), "vflip"))
    with pytest.raises(ValueError, match=UNKNOWN):
        predict_images(model, [], tta="vflip")
    with pytest.raises(ValueError, match=UNKNOWN):
        predict_arrays(model, _pixels(0, 1), tta="vflip")
    with pytest.raises(ValueError, match="got None"):
        predict_arrays(model, _pixels(0, 1), tta=None)  # type: ignore[arg-type]
    # evaluate checks before it opens anything: the run need not exist.
    with pytest.raises(ValueError, match=UNKNOWN):
        evaluate_run(tmp_path / "no-run", tta="vflip")


@pytest.fixture(scope="module")
def run(synth_root: Path, model: ChestClassifier, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as evaluate reads it (config.json naming its cache, model/), holding the
    untrained `model`: training would add nothing TTA's bookkeeping depends on, only minutes."""
    base = tmp_path_factory.mktemp("tta")
    cache = prepare(synth_root, base / "cache", size=SIZE, progress=False)
    run = base / "run"
    model.save_pretrained(run / "model")
    config = {"cache": {"path": str(cache)}, "augment": True, "hflip": False}
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_evaluate_with_tta_writes_both_and_leaves_the_plain_results_alone(run: Path, capsys):
    evaluate_run(run, "test", n_resamples=50, show_progress=False)
    files = ("predictions.csv", "metrics.json", "subgroups.csv")
    without = {name: (run / "test" / name).read_bytes() for name in files}
    args = ["evaluate", str(run), "--tta", "hflip", "--resamples", "50", "--device", "cpu"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    for name in files:
        assert (run / "test" / name).read_bytes() == without[name], name
        assert (run / "test" / "tta-hflip" / name).stat().st_size > 0

    plain = read_predictions(run / "test" / "predictions.csv")
    tta = read_predictions(run / "test" / "tta-hflip" / "predictions.csv")
    metrics = json.loads((run / "test" / "tta-hflip" / "metrics.json").read_text())
    assert metrics["tta"]["name"] == "hflip" and metrics["tta"]["views"] == 2
    assert "without test-time augmentation" in metrics["tta"]["thresholds"]
    assert metrics["tta"]["trained_with_hflip"] is False  # TrainConfig's default
    assert "tta" not in json.loads(without["metrics.json"])
    assert metrics["model"] == json.loads(without["metrics.json"])["model"]
    assert list(tta["image_id"]) == list(plain["image_id"])
    assert np.abs(tta[PROBS].to_numpy() - plain[PROBS].to_numpy()).max() > 1e-4

    # The TTA file holds what predict_arrays gives on the cached pixels with the same views...
    model = load_model(run)
    data = CachedSplit(json.loads((run / "config.json").read_text())["cache"]["path"], "test")
    head = np.arange(8)
    expected = predict_arrays(model, data.read(head), tta="hflip")
    np.testing.assert_allclose(tta[PROBS].to_numpy()[head], expected, atol=1e-5)
    # ...and its metrics are computed from it, not from the plain file.
    recomputed = metrics_from_predictions(
        tta, model.thresholds, split="test", n_resamples=50, temperatures=model.temperatures
    )
    assert metrics["macro_auc"] == pytest.approx(recomputed["macro_auc"])
    assert metrics["macro_auc"] != json.loads(without["metrics.json"])["macro_auc"]

    lines = printed.splitlines()
    assert sum("macro AUC" in line for line in lines) == 2
    assert f"macro AUC {metrics['macro_auc']:.4f}" in printed
    assert "test-time augmentation hflip (2 views)" in printed
    assert str(run / "test" / "tta-hflip" / "metrics.json") in printed


def test_predict_with_tta_writes_and_records_it(run: Path, tmp_path: Path, capsys):
    data = CachedSplit(json.loads((run / "config.json").read_text())["cache"]["path"], "test")
    images = [str(p) for p in data.table["path"].iloc[:3]]
    out = tmp_path / "scores.csv"
    args = ["predict", str(run), *images, "--tta", "crops", "--out", str(out), "--device", "cpu"]
    assert cli_main([*args, "--workers", "1"]) == 0
    assert "test-time augmentation crops (5 views)" in capsys.readouterr().err
    written = pd.read_csv(out)
    assert list(written["tta"]) == ["crops"] * 3
    model = load_model(run)
    expected = predict_images(model, images, tta="crops")
    np.testing.assert_allclose(written[PROBS].to_numpy(), expected[PROBS].to_numpy(), atol=1e-6)
    plain = predict_images(model, images)
    assert list(plain["tta"]) == ["none"] * 3
    assert np.abs(plain[PROBS].to_numpy() - expected[PROBS].to_numpy()).max() > 1e-4

    with pytest.raises(SystemExit) as caught:
        cli_main(["predict", str(run), images[0], "--tta", "vflip"])
    assert caught.value.code == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("chexvision predict: error: argument --tta: invalid choice: 'vflip'")
