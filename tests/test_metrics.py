"""Tests of chexvision_lib.evaluation.metrics against sklearn, scipy and slow direct
implementations."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm, rankdata
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from chexvision_lib.core.labels import UNKNOWN
from chexvision_lib.evaluation import metrics


def tied_scores_and_labels(rng: np.random.Generator, n: int, decimals: int = 1):
    """Labels with some UNKNOWN entries, and scores rounded so that many of them tie."""
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.random(n) + 0.4 * labels, decimals)
    labels_with_unknown = labels.copy()
    labels_with_unknown[rng.random(n) < 0.15] = UNKNOWN
    return labels_with_unknown, scores


# ----------------------------------------------------------------------------------------------
# AUC
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn_with_ties_and_unknown_labels(seed):
    rng = np.random.default_rng(seed)
    y, p = tied_scores_and_labels(rng, 300 + 50 * seed, decimals=seed % 3)
    known = y != UNKNOWN
    assert metrics.roc_auc(y, p) == pytest.approx(roc_auc_score(y[known], p[known]), abs=1e-12)
    # Continuous scores, no ties, no unknowns.
    y, p = rng.integers(0, 2, 500), rng.normal(size=500)
    assert metrics.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_midranks_match_scipy_rankdata():
    values = np.random.default_rng(0).integers(0, 20, 200).astype(float)
    np.testing.assert_array_equal(metrics.midranks(values), rankdata(values, method="average"))


def test_roc_auc_is_nan_with_one_class_and_ignores_scores_of_unknown_labels():
    assert math.isnan(metrics.roc_auc([1, 1, UNKNOWN], [0.2, 0.3, 0.4]))
    assert math.isnan(metrics.roc_auc([UNKNOWN, UNKNOWN], [0.2, 0.3]))
    # A NaN score whose label is unknown is ignored; one whose label is known is an error.
    assert metrics.roc_auc([0, 1, UNKNOWN], [0.1, 0.9, np.nan]) == 1.0
    with pytest.raises(ValueError, match="finite"):
        metrics.roc_auc([0, 1, 1], [0.1, 0.9, np.nan])
    with pytest.raises(ValueError, match="0, 1 or -1"):
        metrics.roc_auc([0, 1, 2], [0.1, 0.9, 0.5])
    with pytest.raises(ValueError, match="same length"):
        metrics.roc_auc([0, 1], [0.1, 0.9, 0.5])


def test_per_class_and_macro_auc():
    rng = np.random.default_rng(1)
    Y = rng.integers(0, 2, (200, 3))
    P = rng.random((200, 3)) + 0.3 * Y
    Y[:, 2] = 0  # one class only: NaN, left out of the macro
    Y[:20, 0] = UNKNOWN
    expected = [roc_auc_score(Y[20:, 0], P[20:, 0]), roc_auc_score(Y[:, 1], P[:, 1])]
    aucs = metrics.per_class_auc(Y, P)
    np.testing.assert_allclose(aucs[:2], expected, atol=1e-12)
    assert math.isnan(aucs[2])
    assert metrics.macro_auc(Y, P) == pytest.approx(np.mean(expected), abs=1e-12)
    assert math.isnan(metrics.macro_auc(np.zeros((5, 2)), np.ones((5, 2))))


def test_weighted_roc_auc_matches_sklearn_sample_weight_and_replication():
    rng = np.random.default_rng(2)
    y, p = tied_scores_and_labels(rng, 150)
    weights = rng.integers(0, 4, (6, 150)).astype(float)
    known = y != UNKNOWN
    expected = [roc_auc_score(y[known], p[known], sample_weight=w[known]) for w in weights]
    np.testing.assert_allclose(metrics.weighted_roc_auc(y, p, weights), expected, atol=1e-12)
    # Integer weights = repeating each image that many times.
    repeated = np.repeat(np.arange(150)[known], weights[0, known].astype(int))
    assert metrics.weighted_roc_auc(y, p, weights[0]) == pytest.approx(
        roc_auc_score(y[repeated], p[repeated]), abs=1e-12
    )
    no_positive_weight = np.where(y == 1, 0.0, 1.0)
    assert math.isnan(metrics.weighted_roc_auc(y, p, no_positive_weight))


@pytest.mark.parametrize(
    "scores",
    [[0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.3, 0.2, 0.1], [0.3] * 5, [0.1, 0.2, 0.3, 0.3, 0.1]],
)
@pytest.mark.parametrize("labels", [[0, 0, 0, 1, 1], [1, 1, 1, 0, 0]])
def test_weighted_roc_auc_edge_orderings(labels, scores):
    # Separation either way, all tied, and ties across classes; both class sizes as the smaller.
    weights = np.random.default_rng(0).integers(1, 3, (4, 5))
    expected = [roc_auc_score(labels, scores, sample_weight=w) for w in weights]
    np.testing.assert_allclose(metrics.weighted_roc_auc(labels, scores, weights), expected)


# ----------------------------------------------------------------------------------------------
# Thresholds and operating points
# ----------------------------------------------------------------------------------------------


def youden_j(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    m = metrics.binary_metrics(y, p, threshold)
    return m["sensitivity"] + m["specificity"] - 1


def sklearn_f1(y: np.ndarray, p: np.ndarray, threshold: float) -> float:
    known = y != UNKNOWN
    return f1_score(y[known], (p[known] >= threshold).astype(int), zero_division=0.0)


@pytest.mark.parametrize("method, criterion", [("youden", youden_j), ("f1", sklearn_f1)])
@pytest.mark.parametrize("seed", range(4))
def test_choose_threshold_equals_brute_force_over_all_candidates(method, criterion, seed):
    rng = np.random.default_rng(seed)
    y, p = tied_scores_and_labels(rng, 120, decimals=seed % 3 + 1)
    known = y != UNKNOWN
    candidates = np.unique(p[known])
    values = np.array([criterion(y, p, t) for t in candidates])
    best_value = values.max()
    # Ties in the criterion go to the highest threshold.
    expected = candidates[np.flatnonzero(np.isclose(values, best_value, rtol=0, atol=1e-12))[-1]]
    chosen = metrics.choose_threshold(y, p, method)
    assert chosen == expected
    assert criterion(y, p, chosen) == pytest.approx(best_value, abs=1e-12)


def test_choose_thresholds_per_column_and_bad_method():
    rng = np.random.default_rng(5)
    Y = rng.integers(0, 2, (80, 3))
    P = rng.random((80, 3))
    Y[:, 2] = 1
    thresholds = metrics.choose_thresholds(Y, P, "f1")
    assert thresholds[0] == metrics.choose_threshold(Y[:, 0], P[:, 0], "f1")
    assert thresholds[1] == metrics.choose_threshold(Y[:, 1], P[:, 1], "f1")
    assert math.isnan(thresholds[2])
    with pytest.raises(ValueError, match="method"):
        metrics.choose_threshold(Y[:, 0], P[:, 0], "accuracy")


def test_threshold_ties_go_to_the_highest_threshold():
    y = np.array([0, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.3, 0.4])
    # Youden's J is 1/2 at both 0.4 (tp 1, fp 0) and 0.2 (tp 2, fp 1).
    assert metrics.choose_threshold(y, p, "youden") == 0.4
    # F1 is 2/3 at 0.4, 4/5 at 0.2, 2/3 at 0.1.
    assert metrics.choose_threshold(y, p, "f1") == 0.2


def test_perfect_separation_threshold_is_lowest_positive_score():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    assert metrics.choose_threshold(y, p, "youden") == 0.7
    assert metrics.choose_threshold(y, p, "f1") == 0.7


def test_binary_metrics_match_sklearn():
    rng = np.random.default_rng(3)
    y, p = tied_scores_and_labels(rng, 200)
    result = metrics.binary_metrics(y, p, 0.6)
    known = y != UNKNOWN
    predicted = (p[known] >= 0.6).astype(int)
    tn, fp, fn, tp = confusion_matrix(y[known], predicted, labels=[0, 1]).ravel()
    assert (result["tn"], result["fp"], result["fn"], result["tp"]) == (tn, fp, fn, tp)
    assert all(type(result[key]) is int for key in ("tp", "fp", "tn", "fn"))
    assert result["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert result["specificity"] == pytest.approx(tn / (tn + fp))
    assert result["ppv"] == pytest.approx(tp / (tp + fp))
    assert result["npv"] == pytest.approx(tn / (tn + fn))
    assert result["f1"] == pytest.approx(f1_score(y[known], predicted))
    assert result["accuracy"] == pytest.approx((tp + tn) / known.sum())
    assert result["threshold"] == 0.6
    np.testing.assert_array_equal(
        metrics.confusion_matrix_2x2(y, p, 0.6), confusion_matrix(y[known], predicted)
    )


def test_binary_metrics_zero_denominators_are_nan_and_ties_count_as_positive():
    no_positives = metrics.binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert (no_positives["tn"], no_positives["fp"]) == (3, 0)
    for key in ("sensitivity", "ppv", "f1"):
        assert math.isnan(no_positives[key])
    assert no_positives["specificity"] == 1.0 and no_positives["npv"] == 1.0
    nothing_known = metrics.binary_metrics([UNKNOWN, UNKNOWN], [0.1, 0.9], 0.5)
    assert math.isnan(nothing_known["accuracy"])
    at_threshold = metrics.binary_metrics([1], [0.5], 0.5)
    assert at_threshold["tp"] == 1


# ----------------------------------------------------------------------------------------------
# Patient bootstrap
# ----------------------------------------------------------------------------------------------


def slow_mann_whitney_auc(y: np.ndarray, p: np.ndarray) -> float:
    positives, negatives = p[y == 1], p[y == 0]
    if positives.size == 0 or negatives.size == 0:
        return math.nan
    above = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return (above + 0.5 * ties) / (positives.size * negatives.size)


def test_bootstrap_equals_a_slow_loop_over_the_same_drawn_patients():
    rng = np.random.default_rng(4)
    n_patients, n_resamples = 25, 300
    patient_of_image = rng.integers(0, n_patients, 90)
    patient_ids = np.array([f"p{i:03d}" for i in patient_of_image])  # ids need not be integers
    Y = rng.integers(0, 2, (90, 3))
    Y[rng.random((90, 3)) < 0.1] = UNKNOWN
    Y[:, 2] = np.where(Y[:, 2] == UNKNOWN, UNKNOWN, (rng.random(90) < 0.05).astype(int))
    Y[0, 2] = 1  # a rare class: some resamples have no positive
    P = np.round(rng.random((90, 3)) + 0.5 * Y, 1)

    unique_ids, patient_index = np.unique(patient_ids, return_inverse=True)
    draws = rng.integers(0, unique_ids.size, (n_resamples, unique_ids.size))
    counts = np.stack([np.bincount(row, minlength=unique_ids.size) for row in draws])
    result = metrics.bootstrap_auc(Y, P, patient_ids, patient_counts=counts)

    slow = np.empty((n_resamples, 3))
    for b, drawn in enumerate(draws):
        images = np.concatenate([np.flatnonzero(patient_index == i) for i in drawn])
        for j in range(3):
            known = Y[images, j] != UNKNOWN
            slow[b, j] = slow_mann_whitney_auc(Y[images, j][known], P[images, j][known])
    np.testing.assert_allclose(result["resampled_auc"], slow, atol=1e-12)
    assert 0 < result["n_resamples_used"][2] < n_resamples
    for j in range(3):
        used = slow[~np.isnan(slow[:, j]), j]
        assert result["n_resamples_used"][j] == used.size
        low, high = np.percentile(used, [2.5, 97.5])
        assert result["lower"][j] == pytest.approx(low, abs=1e-12)
        assert result["upper"][j] == pytest.approx(high, abs=1e-12)
    np.testing.assert_allclose(result["auc"], metrics.per_class_auc(Y, P), atol=1e-15)
    macro = slow.mean(axis=1)  # NaN (dropped) wherever one class is undefined
    np.testing.assert_allclose(result["resampled_macro_auc"], macro, atol=1e-12)
    assert result["macro_n_resamples_used"] == (~np.isnan(macro)).sum()
    low, high = np.percentile(macro[~np.isnan(macro)], [2.5, 97.5])
    assert (result["macro_lower"], result["macro_upper"]) == pytest.approx((low, high), abs=1e-12)


def test_bootstrap_with_one_image_per_patient_approaches_the_plain_percentile_bootstrap():
    rng = np.random.default_rng(6)
    n, n_resamples = 40, 20_000
    y = np.r_[np.ones(20, int), np.zeros(20, int)]
    p = rng.normal(size=n) + 0.8 * y
    result = metrics.bootstrap_auc(y, p, np.arange(n), n_resamples=n_resamples, seed=1)
    # Direct image resampling, vectorised over resamples, with independent draws.
    drawn = np.random.default_rng(99).integers(0, n, (n_resamples, n))
    labels, scores = y[drawn], p[drawn]
    positive_pairs = labels[:, :, None] & (1 - labels[:, None, :])
    above = (scores[:, :, None] > scores[:, None, :]) & positive_pairs.astype(bool)
    n_pos = labels.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        direct = above.sum(axis=(1, 2)) / (n_pos * (n - n_pos))
    direct = direct[np.isfinite(direct)]
    low, high = np.percentile(direct, [2.5, 97.5])
    # Monte Carlo error of each percentile is about 0.001 with 20,000 resamples.
    assert result["lower"][0] == pytest.approx(low, abs=0.006)
    assert result["upper"][0] == pytest.approx(high, abs=0.006)


def test_bootstrap_ci_covers_the_true_binormal_auc_about_95_percent_of_the_time():
    # Patients have 3 correlated images (a shared patient effect) and one label. Pairs of a
    # positive and a negative image always come from different patients, whose score difference
    # is N(d, 2), so the true AUC is Phi(d / sqrt(2)).
    d, patient_share, images_per_patient, n_trials = 1.0, 0.8, 3, 200
    true_auc = NormalDist().cdf(d / math.sqrt(2))
    rng = np.random.default_rng(12345)
    patient_label = np.r_[np.ones(30, int), np.zeros(30, int)]
    patients = np.repeat(np.arange(patient_label.size), images_per_patient)
    y = patient_label[patients]
    covered_by_patients = covered_by_images = 0
    for trial in range(n_trials):
        patient_effect = rng.normal(size=patient_label.size)[patients]
        image_noise = rng.normal(size=y.size)
        p = d * y + math.sqrt(patient_share) * patient_effect
        p += math.sqrt(1 - patient_share) * image_noise
        by_patient = metrics.bootstrap_auc(y, p, patients, n_resamples=400, seed=trial)
        by_image = metrics.bootstrap_auc(y, p, np.arange(y.size), n_resamples=400, seed=trial)
        covered_by_patients += by_patient["lower"][0] <= true_auc <= by_patient["upper"][0]
        covered_by_images += by_image["lower"][0] <= true_auc <= by_image["upper"][0]
    assert 0.90 <= covered_by_patients / n_trials <= 0.99
    # Treating correlated images as independent gives intervals that are too narrow.
    assert covered_by_images / n_trials < 0.90


def test_patient_intervals_are_wider_than_image_intervals_for_duplicated_images():
    rng = np.random.default_rng(7)
    patient_label = rng.integers(0, 2, 60)
    patient_score = rng.normal(size=60) + patient_label
    patients = np.repeat(np.arange(60), 5)  # five identical copies of each patient's image
    y, p = patient_label[patients], patient_score[patients]
    by_patient = metrics.bootstrap_auc(y, p, patients, n_resamples=1000)
    by_image = metrics.bootstrap_auc(y, p, np.arange(y.size), n_resamples=1000)
    assert by_patient["auc"][0] == by_image["auc"][0]
    width_patient = by_patient["upper"][0] - by_patient["lower"][0]
    width_image = by_image["upper"][0] - by_image["lower"][0]
    assert width_patient > 1.5 * width_image  # about sqrt(5) = 2.2 in expectation


def test_bootstrap_is_seeded_and_accepts_one_dimensional_inputs():
    rng = np.random.default_rng(8)
    y, p = rng.integers(0, 2, 300), rng.random(300)
    patients = rng.integers(0, 100, 300)
    first = metrics.bootstrap_auc(y, p, patients, n_resamples=300, seed=3)
    again = metrics.bootstrap_auc(y, p, patients, n_resamples=300, seed=3)
    other = metrics.bootstrap_auc(y, p, patients, n_resamples=300, seed=4)
    np.testing.assert_array_equal(first["resampled_auc"], again["resampled_auc"])
    assert first["lower"].shape == (1,) and first["n_resamples"] == 300
    assert first["n_patients"] == np.unique(patients).size
    assert first["lower"][0] != other["lower"][0]
    assert first["macro_auc"] == first["auc"][0]


def test_bootstrap_macro_columns_and_undefined_classes():
    rng = np.random.default_rng(9)
    Y = rng.integers(0, 2, (200, 3))
    Y[:, 1] = 0  # no positives: undefined everywhere, left out of the macro
    P = rng.random((200, 3)) + 0.3 * Y
    result = metrics.bootstrap_auc(Y, P, np.arange(200) // 2, n_resamples=200, macro_columns=[1, 2])
    assert math.isnan(result["auc"][1]) and result["n_resamples_used"][1] == 0
    assert math.isnan(result["lower"][1])
    assert result["macro_auc"] == result["auc"][2]
    np.testing.assert_array_equal(result["resampled_macro_auc"], result["resampled_auc"][:, 2])
    with pytest.raises(ValueError, match="patients"):
        metrics.bootstrap_auc(Y, P, np.arange(10))
    with pytest.raises(ValueError, match="macro_columns"):
        metrics.bootstrap_auc(Y, P, np.arange(200), macro_columns=[3])


# ----------------------------------------------------------------------------------------------
# DeLong and Holm
# ----------------------------------------------------------------------------------------------


def slow_delong(y: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) by definition: psi over every (positive, negative) pair."""
    positives = [s[y == 1] for s in scores]
    negatives = [s[y == 0] for s in scores]
    m, n = positives[0].size, negatives[0].size
    v10 = np.zeros((len(scores), m))
    v01 = np.zeros((len(scores), n))
    for r in range(len(scores)):
        for i in range(m):
            for j in range(n):
                x, z = positives[r][i], negatives[r][j]
                psi = 1.0 if x > z else 0.5 if x == z else 0.0
                v10[r, i] += psi / n
                v01[r, j] += psi / m
    aucs = v10.mean(axis=1)
    s10 = np.cov(v10, ddof=1)
    s01 = np.cov(v01, ddof=1)
    return aucs, np.atleast_2d(s10 / m + s01 / n)


@pytest.mark.parametrize("seed", range(3))
def test_delong_test_matches_slow_structural_components(seed):
    rng = np.random.default_rng(seed)
    y, p1 = tied_scores_and_labels(rng, 90, decimals=1)
    p2 = np.round(p1 + rng.normal(0, 0.3, 90), 1)
    result = metrics.delong_test(y, p1, p2)
    known = y != UNKNOWN
    aucs, covariance = slow_delong(y[known], [p1[known], p2[known]])
    assert result["auc1"] == pytest.approx(roc_auc_score(y[known], p1[known]), abs=1e-12)
    assert result["auc2"] == pytest.approx(roc_auc_score(y[known], p2[known]), abs=1e-12)
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    z = (aucs[0] - aucs[1]) / math.sqrt(variance)
    assert result["diff"] == pytest.approx(aucs[0] - aucs[1], abs=1e-12)
    assert result["se"] ** 2 == pytest.approx(variance, abs=1e-6)
    assert result["z"] == pytest.approx(z, abs=1e-6)
    assert result["p_value"] == pytest.approx(2 * norm.sf(abs(z)), abs=1e-6)
    half_width = norm.ppf(0.975) * math.sqrt(variance)
    assert result["ci_low"] == pytest.approx(aucs[0] - aucs[1] - half_width, abs=1e-6)
    assert result["ci_high"] == pytest.approx(aucs[0] - aucs[1] + half_width, abs=1e-6)
    fast_aucs, fast_covariance = metrics.delong_covariance(y, np.column_stack([p1, p2]))
    np.testing.assert_allclose(fast_covariance, covariance, atol=1e-10)
    np.testing.assert_allclose(fast_aucs, aucs, atol=1e-12)


def test_delong_single_auc_ci_and_identical_scorers():
    rng = np.random.default_rng(11)
    y, p = tied_scores_and_labels(rng, 80)
    known = y != UNKNOWN
    aucs, covariance = slow_delong(y[known], [p[known]])
    single = metrics.delong_auc_ci(y, p)
    assert single["auc"] == pytest.approx(aucs[0], abs=1e-12)
    assert single["variance"] == pytest.approx(covariance[0, 0], abs=1e-10)
    assert single["ci_low"] == pytest.approx(aucs[0] - 1.959964 * math.sqrt(covariance[0, 0]))
    same = metrics.delong_test(y, p, p)
    assert (same["diff"], same["z"], same["p_value"]) == (0.0, 0.0, 1.0)
    one_class = metrics.delong_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    assert math.isnan(one_class["p_value"])


def test_holm_correction_hand_worked_example():
    # Sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> 0.06 (monotone)
    adjusted = metrics.holm_correction([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    with_nan = metrics.holm_correction([0.01, np.nan, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(with_nan, [0.03, np.nan, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(metrics.holm_correction([0.5, 0.6]), [1.0, 1.0])
    assert metrics.holm_correction([]).shape == (0,)
    with pytest.raises(ValueError, match="pvalues"):
        metrics.holm_correction([0.1, 1.5])


# ----------------------------------------------------------------------------------------------
# Subgroups
# ----------------------------------------------------------------------------------------------


def test_age_band():
    ages = [0, 17, 17.5, 18, 39, 40, 59, 60, 79, 80, 104, 412, -1, np.nan]
    expected = ["0-17", "0-17", "0-17", "18-39", "18-39", "40-59", "40-59", "60-79", "60-79"]
    expected += ["80+", "80+", "unknown", "unknown", "unknown"]
    assert list(metrics.age_band(ages)) == expected


def test_subgroup_table_counts_and_aucs():
    rng = np.random.default_rng(12)
    frame = pd.DataFrame(
        {
            "sex": rng.choice(["M", "F"], 200),
            "label_a": rng.integers(0, 2, 200),
            "label_b": rng.integers(0, 2, 200),
            "prob_a": rng.random(200),
            "prob_b": rng.random(200),
        }
    )
    frame.loc[:9, "label_b"] = UNKNOWN
    frame.loc[10, "sex"] = None
    table = metrics.subgroup_table(frame, "sex", ["label_a", "label_b"], ["prob_a", "prob_b"])
    assert list(table.columns) == ["sex", "output", "n_images", "n_positive", "auc"]
    assert len(table) == 6  # F, M and the missing group, times two outputs
    row = table[(table["sex"] == "M") & (table["output"] == "label_b")].iloc[0]
    males = frame[(frame["sex"] == "M") & (frame["label_b"] != UNKNOWN)]
    assert row["n_images"] == len(males)
    assert row["n_positive"] == males["label_b"].sum()
    assert row["auc"] == pytest.approx(roc_auc_score(males["label_b"], males["prob_b"]))
    missing_group = table[table["sex"].isna()]
    assert (missing_group["n_images"] == 1).all() and missing_group["auc"].isna().all()
    with pytest.raises(ValueError, match="prob_c"):
        metrics.subgroup_table(frame, "sex", ["label_a"], ["prob_c"])
