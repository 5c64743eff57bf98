"""Figures: each is written as a readable PNG and returned with the expected panels and numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image
from sklearn.metrics import roc_curve

from chexvision_lib.core.labels import ABNORMAL, FINDINGS, OUTPUTS, UNKNOWN
from chexvision_lib.core.predictions import predictions_frame
from chexvision_lib.evaluation.evaluate import metrics_from_predictions
from chexvision_lib.evaluation.references import REFERENCES
from chexvision_lib.reporting import plots

N_IMAGES, N_PATIENTS = 300, 100
TITLE_AUC = re.compile(r"AUC (\d\.\d{3}) \[(\d\.\d{3}), (\d\.\d{3})\]")


def synthetic_predictions(seed: int = 0) -> pd.DataFrame:
    """300 images of 100 patients; informative probabilities for all 15 outputs; a few unknowns."""
    rng = np.random.default_rng(seed)
    prevalence = np.linspace(0.08, 0.3, len(FINDINGS))
    findings = (rng.random((N_IMAGES, len(FINDINGS))) < prevalence).astype(int)
    labels = np.column_stack([findings, findings.max(axis=1)])
    logits = 1.6 * (2 * labels - 1) + rng.normal(0.0, 1.2, labels.shape) - 0.5
    probs = 1.0 / (1.0 + np.exp(-logits))
    labels[rng.random(labels.shape) < 0.05] = UNKNOWN  # e.g. images from a binary-only source
    metadata = pd.DataFrame(
        {
            "image_id": [f"{k:08d}_000.png" for k in range(N_IMAGES)],
            "patient": [f"{k % N_PATIENTS:05d}" for k in range(N_IMAGES)],
            "age": rng.integers(1, 95, N_IMAGES),
            "sex": rng.choice(["M", "F"], N_IMAGES),
            "view": rng.choice(["PA", "AP"], N_IMAGES),
        }
    )
    return predictions_frame(metadata, probs, labels)


def as_saved(metrics: dict) -> dict:
    """The metrics as the figures get them: read back from metrics.json."""
    return json.loads(json.dumps(metrics))


@pytest.fixture(scope="module")
def predictions() -> pd.DataFrame:
    return synthetic_predictions()


@pytest.fixture(scope="module")
def metrics(predictions: pd.DataFrame) -> dict:
    thresholds = [0.3 + 0.02 * k for k in range(len(OUTPUTS))]
    return as_saved(
        metrics_from_predictions(predictions, thresholds, split="test", n_resamples=100, seed=1)
    )


@pytest.fixture
def history() -> pd.DataFrame:
    epochs = np.arange(1, 9)
    frame = pd.DataFrame(
        {
            "epoch": epochs,
            "phase": np.where(epochs <= 2, "frozen", "full"),
            "train_loss": 0.4 / epochs + 0.1,
            "val_loss": 0.35 / epochs + 0.15,
            "macro_auc": [0.60, 0.66, 0.72, 0.76, 0.79, 0.78, 0.80, 0.79],
            "binary_auc": [0.58, 0.63, 0.68, 0.71, 0.73, 0.74, 0.74, 0.75],
            "lr": 1e-3 * np.cos(epochs / 10),
            "backbone_lr": np.where(epochs <= 2, 0.0, 1e-4 * np.cos(epochs / 10)),
            "seconds": 60.0,
            "images_per_s": 900.0,
        }
    )
    for k, finding in enumerate(FINDINGS):
        frame[f"auc_{finding}"] = frame["macro_auc"] + 0.01 * (k - 7)
    return frame


def check_png(path: Path, min_side: int = 400) -> None:
    assert path.exists(), f"{path} was not written"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert min_side <= width <= 5000 and min_side <= height <= 5000, (width, height)


def visible_axes(figure: Figure) -> list:
    return [ax for ax in figure.axes if ax.axison]


def figure_text(figure: Figure) -> str:
    parts = [text.get_text() for text in figure.texts]
    if figure._suptitle is not None:
        parts.append(figure._suptitle.get_text())
    return "\n".join(parts)


def check_footer(figure: Figure, split_words: str | None = "test split") -> None:
    text = figure_text(figure)
    assert plots.FOOTER in text
    if split_words:
        assert split_words in text


# ----------------------------------------------------------------------------------------------
# ROC curves
# ----------------------------------------------------------------------------------------------


def test_bootstrap_roc_band_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(3)
    n, n_patients = 120, 40
    y = (rng.random(n) < 0.35).astype(int)
    p = np.round(y * 0.4 + rng.random(n), 1)  # rounded: ties between scores
    y[:5] = UNKNOWN
    patients = rng.integers(0, n_patients, n)
    grid = np.linspace(0.0013, 0.9987, 40)  # off the curve's vertices, where interp is ambiguous
    lower, upper = plots.bootstrap_roc_band(
        y, p, patients, grid, n_resamples=50, seed=7, resamples_per_chunk=50
    )

    # The same draws, one resample at a time, with sklearn's weighted ROC curve.
    patient_ids, patient_index = np.unique(patients, return_inverse=True)
    counts = plots._patient_counts(np.random.default_rng(7), 50, len(patient_ids))
    known = y != UNKNOWN
    curves = []
    for row in counts:
        weights = row[patient_index][known]
        fpr, tpr, _ = roc_curve(y[known], p[known], sample_weight=weights)
        curves.append(np.interp(grid, fpr, tpr))
    expected_lower, expected_upper = np.percentile(curves, [2.5, 97.5], axis=0)
    np.testing.assert_allclose(lower, expected_lower, atol=1e-6)
    np.testing.assert_allclose(upper, expected_upper, atol=1e-6)
    assert (lower <= upper).all()


def test_bootstrap_roc_band_is_reproducible_and_brackets_the_curve(
    predictions: pd.DataFrame,
) -> None:
    y = predictions[f"label_{ABNORMAL}"].to_numpy()
    p = predictions[f"prob_{ABNORMAL}"].to_numpy()
    patients = predictions["patient"].to_numpy()
    first = plots.bootstrap_roc_band(y, p, patients, n_resamples=60, seed=2)
    again = plots.bootstrap_roc_band(y, p, patients, n_resamples=60, seed=2)
    np.testing.assert_array_equal(first[0], again[0])
    known = y != UNKNOWN
    fpr, tpr, _ = roc_curve(y[known], p[known])
    point = np.interp(plots.ROC_BAND_GRID, fpr, tpr)
    inside = (first[0] <= point + 1e-9) & (point <= first[1] + 1e-9)
    assert inside.mean() > 0.9


def test_roc_grid_has_one_panel_per_output_with_the_metrics_auc(
    predictions: pd.DataFrame, metrics: dict, tmp_path: Path
) -> None:
    path = tmp_path / "figures" / "roc_grid.png"
    figure = plots.roc_grid(predictions, metrics, path, n_resamples=40)
    check_png(path, min_side=1000)
    assert len(figure.axes) == 16  # 4 x 4: 15 outputs and the legend's cell
    panels = visible_axes(figure)
    assert len(panels) == len(OUTPUTS)
    for ax, name in zip(panels, OUTPUTS, strict=True):
        title = ax.get_title()
        assert title.startswith(plots.display_name(name))
        auc, low, high = map(float, TITLE_AUC.search(title).groups())
        entry = metrics["outputs"][name]
        assert auc == pytest.approx(entry["auc"], abs=5e-4)
        assert (low, high) == pytest.approx(entry["auc_ci95"], abs=5e-4)
    legend_text = [t.get_text() for t in figure.axes[-1].get_legend().get_texts()]
    assert "validation-chosen threshold" in legend_text and "threshold 0.5" in legend_text
    check_footer(figure, f"test split, n={N_IMAGES} images / {N_PATIENTS} patients")


def test_roc_grid_skips_outputs_without_scores_or_labels(
    predictions: pd.DataFrame, metrics: dict
) -> None:
    partial = predictions.copy()
    partial["prob_Hernia"] = np.nan
    partial["label_Mass"] = UNKNOWN
    figure = plots.roc_grid(partial, metrics, n_resamples=20, split_label="official test split")
    titles = [ax.get_title().split("\n")[0] for ax in visible_axes(figure)]
    assert "Hernia" not in titles and "Mass" not in titles
    assert len(titles) == len(OUTPUTS) - 2
    check_footer(figure, "official test split")


def test_roc_binary_reports_the_operating_points(
    predictions: pd.DataFrame, metrics: dict, tmp_path: Path
) -> None:
    path = tmp_path / "roc_binary.png"
    figure = plots.roc_binary(predictions, metrics, path, n_resamples=40)
    check_png(path, min_side=800)
    (ax,) = figure.axes
    entry = metrics["outputs"][ABNORMAL]
    auc, _, _ = map(float, TITLE_AUC.search(ax.get_title()).groups())
    assert auc == pytest.approx(entry["auc"], abs=5e-4)
    legend = "\n".join(t.get_text() for t in ax.get_legend().get_texts())
    chosen = entry["at_validation_threshold"]
    assert f"validation-chosen threshold {chosen['threshold']:.3f}" in legend
    assert f"sensitivity {chosen['sensitivity']:.3f}" in legend
    assert f"specificity {entry['at_0.5']['specificity']:.3f}" in legend
    check_footer(figure)


# ----------------------------------------------------------------------------------------------
# Confusion matrices
# ----------------------------------------------------------------------------------------------


def cell_counts(ax) -> list[int]:
    """The counts annotated in a heatmap, in reading order (tn, fp, fn, tp)."""
    return [int(t.get_text().split("\n")[0].replace(",", "")) for t in ax.texts]


def test_confusion_matrices_grid_shows_the_counts(metrics: dict, tmp_path: Path) -> None:
    path = tmp_path / "confusion.png"
    figure = plots.confusion_matrices(metrics, path)
    check_png(path, min_side=1000)
    panels = visible_axes(figure)
    assert len(panels) == len(OUTPUTS)
    for ax, name in zip(panels, OUTPUTS, strict=True):
        point = metrics["outputs"][name]["at_validation_threshold"]
        assert cell_counts(ax) == [point["tn"], point["fp"], point["fn"], point["tp"]]
        assert ax.get_title().startswith(plots.display_name(name))
        assert f"threshold {point['threshold']:.3f}" in ax.get_title()
        # Row percentages: the true-positive cell's percentage is the sensitivity.
        assert ax.texts[3].get_text().endswith(f"{100 * point['sensitivity']:.1f}%")
    assert [t.get_text() for t in panels[-1].get_xticklabels()] == ["Normal", "Abnormal"]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["Negative", "Positive"]
    assert panels[0].get_xlabel() == "Prediction" and panels[0].get_ylabel() == "Truth"
    check_footer(figure)


def test_confusion_matrix_single_output_at_half(metrics: dict, tmp_path: Path) -> None:
    path = tmp_path / "confusion_abnormal.png"
    figure = plots.confusion_matrices(metrics, path, outputs=[ABNORMAL], at="at_0.5")
    check_png(path)
    (ax,) = figure.axes
    point = metrics["outputs"][ABNORMAL]["at_0.5"]
    assert cell_counts(ax) == [point["tn"], point["fp"], point["fn"], point["tp"]]
    assert "threshold 0.5" in figure_text(figure)
    with pytest.raises(ValueError, match="at_validation_threshold"):
        plots.confusion_matrices(metrics, outputs=[ABNORMAL], at="at_0.3")
    with pytest.raises(ValueError, match="no output 'Lung'"):
        plots.confusion_matrices(metrics, outputs=["Lung"])


# ----------------------------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------------------------


def test_training_curves_mark_the_best_epoch_and_the_frozen_phase(
    history: pd.DataFrame, tmp_path: Path
) -> None:
    path = tmp_path / "history.png"
    figure = plots.training_curves(history, path)
    check_png(path)
    assert [ax.get_title() for ax in figure.axes] == [
        "Loss",
        "Validation AUC",
        "Learning rate (at epoch end)",
    ]
    auc_legend = [t.get_text() for t in figure.axes[1].get_legend().get_texts()]
    assert "best epoch 7 (macro AUC 0.800)" in auc_legend
    assert "backbone frozen" in auc_legend
    assert figure.axes[2].get_yscale() == "log"
    assert plots.best_epoch(history) == (7, "macro_auc")
    check_footer(figure, split_words="validation split")


def test_training_curves_mark_the_shipped_ema_epoch(history: pd.DataFrame) -> None:
    """With EMA the monitored value is the better of raw and EMA: the star sits on the EMA curve
    at the epoch early stopping kept, not at the raw macro AUC's best."""
    ema = history["macro_auc"].to_numpy() - 0.05
    ema[2] = 0.95  # epoch 3: the averaged weights beat every raw epoch
    with_ema = history.assign(
        ema_macro_auc=ema,
        monitor=np.maximum(history["macro_auc"], ema),
        monitor_weights=np.where(ema > history["macro_auc"], "ema", "raw"),
    )
    assert plots.best_epoch(with_ema) == (3, "ema_macro_auc")
    legend = [
        t.get_text() for t in plots.training_curves(with_ema).axes[1].get_legend().get_texts()
    ]
    assert "best epoch 3 (macro, EMA AUC 0.950)" in legend and "macro AUC (EMA)" in legend


def test_training_curves_on_a_binary_dataset(history: pd.DataFrame) -> None:
    binary = history.drop(columns=[c for c in history if c.startswith("auc_")]).assign(
        macro_auc=np.nan, phase="full"
    )
    figure = plots.training_curves(binary)
    auc_legend = [t.get_text() for t in figure.axes[1].get_legend().get_texts()]
    assert "best epoch 8 (binary AUC 0.750)" in auc_legend
    assert "macro AUC" not in auc_legend and "backbone frozen" not in auc_legend
    one_epoch = plots.training_curves(binary.iloc[:1])
    assert list(one_epoch.axes[0].get_xticks()) == [1]


# ----------------------------------------------------------------------------------------------
# AUC bars against published figures
# ----------------------------------------------------------------------------------------------


def test_auc_bars_show_our_aucs_and_label_every_reference_with_its_split(
    metrics: dict, tmp_path: Path
) -> None:
    path = tmp_path / "auc_bars.png"
    figure = plots.auc_bars(metrics, path)
    check_png(path)
    (ax,) = figure.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == [plots.display_name(f) for f in FINDINGS]
    ours = ax.containers[0]
    for bar, finding in zip(ours, FINDINGS, strict=True):
        assert bar.get_x() + bar.get_width() == pytest.approx(metrics["outputs"][finding]["auc"])
    legend = "\n".join(t.get_text() for t in ax.get_legend().get_texts())
    for reference in REFERENCES:
        assert f"{reference['name']}: macro {reference['macro_auc']:.3f}" in legend
        assert reference["split"] in legend
    assert "CheXNet 2017 per finding — random patient split" in legend
    assert "not like-for-like" in figure_text(figure)
    check_footer(figure, split_words=None)


def test_auc_bars_refuse_metrics_without_findings(metrics: dict) -> None:
    binary_only = {**metrics, "outputs": {ABNORMAL: metrics["outputs"][ABNORMAL]}}
    with pytest.raises(ValueError, match="no per-finding AUC"):
        plots.auc_bars(binary_only)


# ----------------------------------------------------------------------------------------------
# Grad-CAM cases
# ----------------------------------------------------------------------------------------------


def test_select_cases_picks_the_most_confident_of_each_kind(predictions: pd.DataFrame) -> None:
    threshold = 0.5
    cases = plots.select_cases(predictions, "Effusion", threshold, per_group=3, seed=4)
    assert list(cases["case"]) == ["TP"] * 3 + ["FP"] * 3 + ["TN"] * 3 + ["FN"] * 3
    label, prob = predictions["label_Effusion"], predictions["prob_Effusion"]
    kinds = (("TP", 1, True), ("FP", 0, True), ("TN", 0, False), ("FN", 1, False))
    for case, truth, positive in kinds:
        chosen = cases[cases["case"] == case]
        assert (label[chosen.index] == truth).all()
        assert ((prob[chosen.index] >= threshold) == positive).all()
        # Most confident first, and nobody more confident left out.
        pool = prob[(label == truth) & ((prob >= threshold) == positive)]
        ranked = pool.sort_values(ascending=not positive)
        assert list(chosen["prob_Effusion"]) == list(ranked.iloc[:3])
    # The original index is kept: it is the row of predictions.csv (and of the cache).
    pd.testing.assert_frame_equal(cases.drop(columns="case"), predictions.loc[cases.index])
    again = plots.select_cases(predictions, "Effusion", threshold, per_group=3, seed=4)
    pd.testing.assert_frame_equal(cases, again)


def test_select_cases_never_picks_unknown_labels_and_caps_small_groups() -> None:
    frame = pd.DataFrame(
        {
            "patient": ["a", "b", "c", "d", "e"],
            "prob_Hernia": [0.9, 0.8, 0.2, 0.95, np.nan],
            "label_Hernia": [1, 0, 0, UNKNOWN, 1],
        }
    )
    cases = plots.select_cases(frame, "Hernia", 0.5, per_group=2)
    assert dict(zip(cases.index, cases["case"], strict=True)) == {0: "TP", 1: "FP", 2: "TN"}
    with pytest.raises(ValueError, match="unknown output"):
        plots.select_cases(frame, "Lung", 0.5)


def test_cam_grid_draws_one_titled_cell_per_case(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(6)]
    overlays = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    titles = [f"{case} · Effusion p=0.{k}1" for k, case in enumerate(plots.CASES + ("TP", "FP"))]
    path = tmp_path / "cams.png"
    figure = plots.cam_grid(images, overlays, titles, path, ncols=4, caption="test split")
    check_png(path)
    assert len(figure.axes) == 8
    assert [ax.get_title() for ax in figure.axes[:6]] == titles
    assert figure.axes[0].get_images()[0].get_array().shape[1] > 2 * 64  # image and overlay
    check_footer(figure)
    overlay_only = plots.cam_grid(images, overlays, titles, show_original=False)
    assert overlay_only.axes[0].get_images()[0].get_array().shape == (64, 64, 3)
    with pytest.raises(ValueError, match="equal lengths"):
        plots.cam_grid(images, overlays[:2], titles)
