"""Calibration: Brier score and ECE against sklearn and known answers, the patient bootstrap
against brute force, temperature scaling recovering a known temperature, the metrics.json block
and the reliability diagram."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image
from scipy.special import expit
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss, log_loss

from chexvision_lib.core.labels import OUTPUTS, UNKNOWN
from chexvision_lib.core.predictions import predictions_frame
from chexvision_lib.evaluation import calibration, metrics
from chexvision_lib.reporting import calibration_plots


def calibrated(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """p ~ U(0, 1), y ~ Bernoulli(p): perfectly calibrated by construction."""
    p = rng.random(n)
    return (rng.random(n) < p).astype(int), p


def brute_ece(y: np.ndarray, p: np.ndarray, edges: np.ndarray) -> float:
    """ECE by the definition, bin by bin: [e_b, e_b+1), the last bin closed."""
    total = 0.0
    for b in range(edges.size - 1):
        last = b == edges.size - 2
        inside = (p >= edges[b]) & ((p <= edges[b + 1]) if last else (p < edges[b + 1]))
        if inside.any():
            total += inside.sum() / p.size * abs(y[inside].mean() - p[inside].mean())
    return total


# ----------------------------------------------------------------------------------------------
# Brier score and ECE
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_brier_matches_sklearn_and_ignores_unknown_labels(seed):
    rng = np.random.default_rng(seed)
    y, p = calibrated(rng, 500)
    y_unknown = y.copy()
    y_unknown[rng.random(500) < 0.2] = UNKNOWN
    known = y_unknown != UNKNOWN
    p_with_nan = p.copy()
    p_with_nan[~known] = np.nan  # scores of unknown labels may be anything
    expected = brier_score_loss(y[known], p[known])
    assert calibration.brier_score(y_unknown, p_with_nan) == pytest.approx(expected, abs=1e-12)
    assert math.isnan(calibration.brier_score([UNKNOWN, UNKNOWN], [0.2, 0.3]))


@pytest.mark.parametrize(
    ("strategy", "n", "n_bins"),
    [("uniform", 2000, 15), ("uniform", 300, 7), ("quantile", 1000, 10), ("quantile", 999, 15)],
)
def test_reliability_table_matches_sklearn_calibration_curve(strategy, n, n_bins):
    rng = np.random.default_rng(n)
    y, p = calibrated(rng, n)
    p = p**2  # uneven: some uniform bins hold few images
    ece, table = calibration.expected_calibration_error(y, p, n_bins, strategy)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    filled = table.count > 0
    np.testing.assert_allclose(table.observed_frequency[filled], prob_true, rtol=0, atol=1e-12)
    np.testing.assert_allclose(table.mean_predicted[filled], prob_pred, rtol=0, atol=1e-12)
    assert table.count.sum() == n and table.edges.size == n_bins + 1
    assert np.isnan(table.mean_predicted[~filled]).all()
    # ECE from sklearn's curve, weighted by our counts, and by the definition.
    weights = table.count[filled] / n
    assert ece == pytest.approx(float(np.sum(weights * np.abs(prob_true - prob_pred))), abs=1e-12)
    assert ece == pytest.approx(brute_ece(y, p, table.edges), abs=1e-12)


def test_bins_are_closed_on_the_left_and_the_last_on_both_sides():
    """An inner edge belongs to the bin above it (np.histogram's rule, where sklearn puts it
    below); 0 is in the first bin and 1 in the last."""
    p = np.array([0.0, 0.2, 0.2, 0.4, 0.7, 1.0, 1.0])
    y = np.array([0, 1, 0, 1, 1, 1, 0])
    _, table = calibration.expected_calibration_error(y, p, n_bins=5)
    np.testing.assert_array_equal(table.edges, np.linspace(0, 1, 6))
    np.testing.assert_array_equal(table.count, [1, 2, 1, 1, 2])
    np.testing.assert_array_equal(table.count, np.histogram(p, bins=table.edges)[0])
    np.testing.assert_array_equal(table.observed_frequency, [0.0, 0.5, 1.0, 1.0, 0.5])
    # Hand-computed: |gap| per bin weighted by count / 7.
    expected = (1 * 0.0 + 2 * 0.3 + 1 * 0.6 + 1 * 0.3 + 2 * 0.5) / 7
    assert calibration.expected_calibration_error(y, p, 5)[0] == pytest.approx(expected, abs=1e-15)


def test_quantile_bins_hold_equal_counts_and_span_zero_to_one():
    rng = np.random.default_rng(1)
    y, p = calibrated(rng, 1000)
    _, table = calibration.expected_calibration_error(y, p, 10, "quantile")
    assert table.edges[0] == 0.0 and table.edges[-1] == 1.0
    np.testing.assert_array_equal(table.count, np.full(10, 100))


def expected_noise_ece(p: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """Mean and sd of the ECE of a calibrated scorer from sampling alone (normal approximation):
    per bin, sum (y - p) has variance V_b = sum p (1 - p), so E|.| = sqrt(2 V_b / pi) and
    Var|.| = V_b (1 - 2 / pi)."""
    bins = calibration.bin_index(p, edges)
    variance = np.bincount(bins, weights=p * (1 - p), minlength=edges.size - 1)
    mean = np.sqrt(2 * variance / np.pi).sum() / p.size
    sd = math.sqrt((variance * (1 - 2 / np.pi)).sum()) / p.size
    return mean, sd


def test_a_calibrated_scorer_has_ece_near_zero_and_brier_near_mean_p_one_minus_p():
    rng = np.random.default_rng(7)
    y, p = calibrated(rng, 20_000)
    ece, table = calibration.expected_calibration_error(y, p)
    noise_mean, noise_sd = expected_noise_ece(p, table.edges)
    assert ece < noise_mean + 4 * noise_sd  # nothing beyond sampling error (about 0.01 here)
    # E[(p - y)^2 | p] = p (1 - p): the Brier score is mean p (1 - p) up to sampling error.
    terms = (p - y) ** 2
    standard_error = terms.std() / math.sqrt(p.size)
    assert calibration.brier_score(y, p) == pytest.approx(
        np.mean(p * (1 - p)), abs=4 * standard_error
    )
    assert np.mean(p * (1 - p)) == pytest.approx(1 / 6, abs=0.005)


def test_a_miscalibrated_scorer_has_a_large_ece():
    """Scores p^3 for y ~ Bernoulli(p): every bin under-predicts, and the ECE is
    E[p - p^3] = 1/2 - 1/4 = 0.25 for any binning."""
    rng = np.random.default_rng(8)
    y, p = calibrated(rng, 20_000)
    for strategy in ("uniform", "quantile"):
        ece, table = calibration.expected_calibration_error(y, p**3, strategy=strategy)
        assert ece == pytest.approx(0.25, abs=0.015)
        filled = table.count > 0
        assert (table.observed_frequency[filled] > table.mean_predicted[filled]).all()
    assert calibration.brier_score(y, p**3) == pytest.approx(17 / 70, abs=0.01)


def test_bad_probabilities_and_binning_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibration.brier_score([0, 1], [0.2, 1.2])
    with pytest.raises(ValueError, match="finite"):
        calibration.expected_calibration_error([0, 1], [0.2, np.nan])
    with pytest.raises(ValueError, match="strategy"):
        calibration.expected_calibration_error([0, 1], [0.2, 0.4], strategy="kmeans")
    with pytest.raises(ValueError, match="n_bins"):
        calibration.expected_calibration_error([0, 1], [0.2, 0.4], n_bins=0)


# ----------------------------------------------------------------------------------------------
# Patient bootstrap
# ----------------------------------------------------------------------------------------------


def clustered(rng: np.random.Generator, n_patients: int, per_patient: int, k: int = 1):
    """Images sharing their patient's probability (correlated within a patient), scored p^3."""
    patient_p = rng.random((n_patients, k))
    p = np.repeat(patient_p, per_patient, axis=0)
    y = (rng.random(p.shape) < p).astype(int)
    patients = np.repeat(np.arange(n_patients), per_patient)
    return y, p**3, patients


def test_resampled_values_equal_brute_force_on_repeated_images():
    rng = np.random.default_rng(3)
    n_patients = 40
    y, p, patients = clustered(rng, n_patients, 3, k=3)
    y[rng.random(y.shape) < 0.1] = UNKNOWN
    counts = rng.multinomial(n_patients, np.full(n_patients, 1 / n_patients), size=25)
    result = calibration.calibration_with_ci(y, p, patients, patient_counts=counts, n_bins=8)
    for b in range(counts.shape[0]):
        repeat = counts[b][patients]  # each image as often as its patient was drawn
        for j in range(3):
            known = (y[:, j] != UNKNOWN) & (repeat > 0)
            yy = np.repeat(y[known, j], repeat[known])
            pp = np.repeat(p[known, j], repeat[known])
            edges = result["tables"][j].edges
            assert result["resampled_ece"][b, j] == pytest.approx(
                brute_ece(yy, pp, edges), abs=1e-12
            )
            assert result["resampled_brier"][b, j] == pytest.approx(
                brier_score_loss(yy, pp), abs=1e-12
            )


def test_point_estimates_and_unknown_labels():
    rng = np.random.default_rng(4)
    y, p, patients = clustered(rng, 120, 4, k=2)
    unknown = rng.random(y.shape) < 0.2
    unknown[::4] = False  # every patient keeps a known image, so the draws stay the same
    y_unknown = np.where(unknown, UNKNOWN, y)
    p_nan = np.where(unknown, np.nan, p)
    result = calibration.calibration_with_ci(y_unknown, p_nan, patients, n_resamples=200, seed=5)
    for j in range(2):
        known = ~unknown[:, j]
        ece, _ = calibration.expected_calibration_error(y[known, j], p[known, j])
        assert result["ece"][j] == ece
        assert result["brier"][j] == calibration.brier_score(y[known, j], p[known, j])
        assert result["n"][j] == known.sum()
        alone = calibration.calibration_with_ci(
            y[known, j], p[known, j], patients[known], n_resamples=200, seed=5
        )
        assert alone["ece_lower"][0] == pytest.approx(result["ece_lower"][j], abs=1e-12)
        assert alone["brier_upper"][0] == pytest.approx(result["brier_upper"][j], abs=1e-12)
    assert (result["n_resamples_used"] == 200).all()
    assert result["resampled_ece"].shape == (200, 2)


def test_unavailable_columns_are_nan_not_errors():
    rng = np.random.default_rng(5)
    y, p, patients = clustered(rng, 50, 2, k=3)
    p[:, 1] = np.nan  # an output the model does not produce
    y[:, 2] = UNKNOWN  # an output without labels
    result = calibration.calibration_with_ci(y, p, patients, n_resamples=50)
    assert result["tables"][1] is None and result["tables"][2] is None
    assert np.isnan(result["ece"][1:]).all() and np.isnan(result["brier_upper"][1:]).all()
    assert list(result["n_resamples_used"]) == [50, 0, 0]
    with pytest.raises(ValueError, match="finite"):  # some NaN where labels are known: an error
        p[0, 0] = np.nan
        calibration.calibration_with_ci(y, p, patients, n_resamples=10)


def test_the_draws_are_bootstrap_auc_draws():
    rng = np.random.default_rng(6)
    y, p, patients = clustered(rng, 300, 2, k=2)
    n_patients = 300
    drawn = np.vstack([c for _, _, c in calibration.patient_count_chunks(n_patients, 300, 11)])
    assert drawn.shape == (300, n_patients) and (drawn.sum(axis=1) == n_patients).all()
    auc_seeded = metrics.bootstrap_auc(y, p, patients, n_resamples=300, seed=11)
    auc_fixed = metrics.bootstrap_auc(y, p, patients, patient_counts=drawn)
    np.testing.assert_array_equal(auc_seeded["resampled_auc"], auc_fixed["resampled_auc"])
    seeded = calibration.calibration_with_ci(y, p, patients, n_resamples=300, seed=11)
    fixed = calibration.calibration_with_ci(y, p, patients, patient_counts=drawn)
    np.testing.assert_array_equal(seeded["resampled_ece"], fixed["resampled_ece"])


def test_the_patient_is_the_resampling_unit():
    """Duplicating every image of every patient adds no information: resampling patients
    gives exactly the same interval; resampling images (one id per image) wrongly narrows it by
    about sqrt(2)."""
    rng = np.random.default_rng(9)
    y, p, patients = clustered(rng, 400, 1)
    once = calibration.calibration_with_ci(y, p, patients, n_resamples=400, seed=2)
    y2, p2, patients2 = np.vstack([y, y]), np.vstack([p, p]), np.concatenate([patients] * 2)
    twice = calibration.calibration_with_ci(y2, p2, patients2, n_resamples=400, seed=2)
    for name in ("ece", "brier"):
        np.testing.assert_allclose(twice[f"{name}_lower"], once[f"{name}_lower"], atol=1e-12)
        np.testing.assert_allclose(twice[f"{name}_upper"], once[f"{name}_upper"], atol=1e-12)
    as_images = calibration.calibration_with_ci(y2, p2, np.arange(800), n_resamples=400, seed=2)
    width_once = once["brier_upper"] - once["brier_lower"]
    width_images = as_images["brier_upper"] - as_images["brier_lower"]
    assert width_images[0] / width_once[0] == pytest.approx(1 / math.sqrt(2), abs=0.12)


def test_intervals_cover_the_truth_in_a_small_simulation():
    """p^3 scores of y ~ Bernoulli(p), p ~ U(0, 1) shared by a patient's 3 images: the true
    Brier score is E[p^6] - 2 E[p^4] + E[p] = 17/70 and the true ECE 1/4."""
    rng = np.random.default_rng(12)
    hits = np.zeros(2)
    n_simulations = 150
    for _ in range(n_simulations):
        y, q, patients = clustered(rng, 300, 3)
        result = calibration.calibration_with_ci(
            y, q, patients, n_resamples=200, seed=int(rng.integers(1 << 31))
        )
        hits[0] += result["brier_lower"][0] <= 17 / 70 <= result["brier_upper"][0]
        hits[1] += result["ece_lower"][0] <= 0.25 <= result["ece_upper"][0]
    coverage = hits / n_simulations
    assert ((coverage > 0.88) & (coverage < 0.99)).all(), coverage


# ----------------------------------------------------------------------------------------------
# Temperature scaling
# ----------------------------------------------------------------------------------------------


def tempered(rng: np.random.Generator, n: int, temperature: float):
    z = rng.normal(0.0, 4.0, n)
    return z, (rng.random(n) < expit(z / temperature)).astype(int)


def test_fit_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(21)
    z, y = tempered(rng, 40_000, 2.5)
    from_logits = calibration.fit_temperature(z, y, inputs="logits")
    assert from_logits == pytest.approx(2.5, rel=0.05)
    from_probs = calibration.fit_temperature(expit(z), y)
    assert from_probs == pytest.approx(from_logits, rel=1e-3)  # clipping barely matters here

    # It is the NLL minimum: sklearn's log loss is higher a little either side.
    def nll(t):
        return log_loss(y, expit(z / t))

    assert nll(from_logits) < min(nll(from_logits * 0.99), nll(from_logits * 1.01))


def test_temperature_scaling_improves_calibration_of_an_overconfident_scorer():
    rng = np.random.default_rng(22)
    z, y = tempered(rng, 20_000, 2.5)
    overconfident = expit(z)
    (temperature,) = calibration.fit_temperatures(overconfident[:, None], y[:, None])
    scaled = calibration.apply_temperature(overconfident, temperature)
    before = calibration.expected_calibration_error(y, overconfident)[0]
    after = calibration.expected_calibration_error(y, scaled)[0]
    assert after < before / 3
    assert calibration.brier_score(y, scaled) < calibration.brier_score(y, overconfident)


def test_fit_temperatures_per_column_with_none_where_it_cannot_be_fitted():
    rng = np.random.default_rng(23)
    z1, y1 = tempered(rng, 5000, 0.5)
    z2, y2 = tempered(rng, 5000, 3.0)
    values = np.column_stack([expit(z1), expit(z2), np.full(5000, np.nan), expit(z1), expit(z1)])
    labels = np.column_stack([y1, y2, y2, np.ones(5000, int), np.full(5000, UNKNOWN)])
    labels[:100, 0] = UNKNOWN
    fitted = calibration.fit_temperatures(values, labels)
    assert fitted[0] == pytest.approx(0.5, rel=0.08) and fitted[1] == pytest.approx(3.0, rel=0.08)
    assert fitted[2:] == [None, None, None]  # no scores; one class; no labels
    assert json.dumps(fitted)  # the shape of config.json's thresholds


def test_apply_temperature():
    probs = np.array([[0.1, 0.5, np.nan], [0.9, 0.0, 0.3]])
    # None leaves a column exactly as it is.
    same = calibration.apply_temperature(probs, [None, None, None])
    np.testing.assert_array_equal(same, probs)
    scaled = calibration.apply_temperature(probs, [2.0, None, 1.0])
    logit_01 = math.log(0.1 / 0.9)
    assert scaled[0, 0] == pytest.approx(expit(logit_01 / 2), abs=1e-15)
    assert scaled[1, 0] == pytest.approx(expit(-logit_01 / 2), abs=1e-15)
    np.testing.assert_array_equal(scaled[:, 1], probs[:, 1])
    assert np.isnan(scaled[0, 2]) and scaled[1, 2] == pytest.approx(0.3, abs=1e-15)
    # 0 and 1 are clipped to [1e-7, 1 - 1e-7] before the logit.
    clipped = calibration.apply_temperature(np.array([0.0, 1.0]), 2.0)
    np.testing.assert_allclose(clipped, expit(np.array([-1, 1]) * math.log(1e7 - 1) / 2))
    # Logits in, probabilities out; 1-D with one temperature.
    np.testing.assert_allclose(
        calibration.apply_temperature(np.array([-2.0, 4.0]), 2.0, inputs="logits"),
        expit(np.array([-1.0, 2.0])),
    )
    with pytest.raises(ValueError, match="> 0"):
        calibration.apply_temperature(probs, [0.0, None, None])
    with pytest.raises(ValueError, match="one per column"):
        calibration.apply_temperature(probs, [1.0, 2.0])


# ----------------------------------------------------------------------------------------------
# metrics.json block
# ----------------------------------------------------------------------------------------------


def fifteen_outputs(seed: int = 0, n_patients: int = 150, per_patient: int = 2):
    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    patients = np.repeat([f"{k:05d}" for k in range(n_patients)], per_patient)
    z = rng.normal(-1.0, 3.0, (n, len(OUTPUTS)))
    labels = (rng.random(z.shape) < expit(z / 2.0)).astype(int)
    labels[rng.random(labels.shape) < 0.05] = UNKNOWN
    return labels, expit(z), patients


def test_calibration_summary_is_json_with_before_and_after():
    labels, probs, patients = fifteen_outputs(n_patients=1000)
    probs[:, 3] = np.nan  # an output without scores is left out
    temperatures = [2.0] * 14 + [None]
    summary = calibration.calibration_summary(
        labels, probs, patients, temperatures=temperatures, n_resamples=100, seed=3
    )
    text = json.dumps(summary, allow_nan=False)
    assert json.loads(text) == summary
    assert summary["binning"]["strategy"] == "uniform" and summary["binning"]["n_bins"] == 15
    assert summary["bootstrap"] == {
        "unit": "patient",
        "n_resamples": 100,
        "seed": 3,
        "confidence": 0.95,
    }
    assert list(summary["outputs"]) == [n for k, n in enumerate(OUTPUTS) if k != 3]
    entry = summary["outputs"]["Atelectasis"]
    known = labels[:, 0] != UNKNOWN
    assert entry["n"] == known.sum() and entry["positives"] == labels[known, 0].sum()
    assert entry["ece"] == calibration.expected_calibration_error(labels[:, 0], probs[:, 0])[0]
    alone = calibration.calibration_with_ci(labels, probs, patients, n_resamples=100, seed=3)
    assert entry["ece_ci95"] == pytest.approx([alone["ece_lower"][0], alone["ece_upper"][0]])
    assert entry["brier_ci95"] == pytest.approx([alone["brier_lower"][0], alone["brier_upper"][0]])
    assert sum(entry["reliability"]["count"]) == entry["n"]
    scaled = calibration.apply_temperature(probs[:, 0], 2.0)
    after = entry["after_temperature"]
    assert after["brier"] == pytest.approx(calibration.brier_score(labels[:, 0], scaled))
    assert after["ece"] < entry["ece"]  # these scores are over-confident by T = 2
    assert entry["change"]["ece"] == pytest.approx(after["ece"] - entry["ece"])
    low, high = entry["change"]["ece_ci95"]
    assert low <= high < 0  # paired resamples: the improvement is clear
    abnormal = summary["outputs"]["Abnormal"]
    assert abnormal["temperature"] is None and "after_temperature" not in abnormal


def test_the_summary_of_a_bad_column_count_is_refused():
    labels, probs, patients = fifteen_outputs()
    with pytest.raises(ValueError, match="names"):
        calibration.calibration_summary(labels, probs, patients, names=["a"], n_resamples=10)


def test_calibration_with_ci_is_fast_on_a_full_test_split():
    """25,596 images x 15 outputs x 2,000 resamples of 2,797 patients (the official test list's
    size) in a few seconds; generous here, for loaded machines."""
    import time

    rng = np.random.default_rng(0)
    n = 25_596
    patients = rng.integers(0, 2797, n)
    probs = rng.random((n, 15)) ** 2
    labels = (rng.random((n, 15)) < probs).astype(int)
    start = time.perf_counter()
    result = calibration.calibration_with_ci(labels, probs, patients, n_resamples=2000)
    assert time.perf_counter() - start < 30
    assert result["resampled_ece"].shape == (2000, 15)


# ----------------------------------------------------------------------------------------------
# Reliability diagram
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictions() -> pd.DataFrame:
    labels, probs, patients = fifteen_outputs(seed=1)
    metadata = pd.DataFrame(
        {
            "image_id": [f"{k:08d}_000.png" for k in range(len(patients))],
            "patient": patients,
            "age": 50,
            "sex": "F",
            "view": "PA",
        }
    )
    return predictions_frame(metadata, probs, labels)


TITLE = re.compile(r"ECE (\d\.\d{3}) → (\d\.\d{3}) · Brier (\d\.\d{3}) → (\d\.\d{3})")


def test_reliability_grid_before_and_after(tmp_path, predictions):
    path = tmp_path / "figures" / "reliability.png"
    temperatures = [2.0] * len(OUTPUTS)
    figure = calibration_plots.reliability_diagram(
        predictions, path, temperatures=temperatures, split="test"
    )
    assert isinstance(figure, Figure)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 1000
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert len(titles) == len(OUTPUTS)
    labels = predictions["label_Effusion"].to_numpy()
    probs = predictions["prob_Effusion"].to_numpy()
    scaled = calibration.apply_temperature(probs, 2.0)
    (effusion,) = [t for t in titles if t.startswith("Effusion")]
    ece_before, ece_after, brier_before, brier_after = map(float, TITLE.search(effusion).groups())
    assert ece_before == round(calibration.expected_calibration_error(labels, probs)[0], 3)
    assert ece_after == round(calibration.expected_calibration_error(labels, scaled)[0], 3)
    assert brier_before == round(calibration.brier_score(labels, probs), 3)
    assert brier_after == round(calibration.brier_score(labels, scaled), 3)
    # Two axes per output (curve, counts) and the legend cell.
    assert len(figure.axes) == 2 * len(OUTPUTS) + 1
    texts = [t.get_text() for t in figure.texts]
    assert any("Research use only" in t for t in texts)
    assert "test split, n=300 images / 150 patients" in figure.get_suptitle()


def test_reliability_single_output_without_temperature(tmp_path, predictions):
    figure = calibration_plots.reliability_diagram(
        predictions, tmp_path / "one.png", outputs=["Abnormal"], split="val"
    )
    curve_ax = figure.axes[0]
    assert curve_ax.get_title().startswith("Abnormal vs normal\nECE ")
    assert "→" not in curve_ax.get_title()
    assert curve_ax.get_legend() is not None
    assert (tmp_path / "one.png").stat().st_size > 0
    with pytest.raises(ValueError, match="Nodule"):
        frame = predictions.assign(label_Nodule=UNKNOWN)
        calibration_plots.reliability_diagram(frame, outputs=["Nodule"])
