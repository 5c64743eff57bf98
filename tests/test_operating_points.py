"""Operating points: the chosen thresholds against a brute-force search, the bootstrap against
brute force on repeated images, Bayes' predictive values, coverage and the resampling unit."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from chexvision_lib.core.labels import OUTPUTS, UNKNOWN
from chexvision_lib.evaluation import metrics
from chexvision_lib.evaluation import operating_points as op

SPECIFICITIES = (0.0, 0.5, 0.8, 0.9, 0.95, 1.0)
SENSITIVITIES = (0.0, 0.3, 0.8, 0.9, 0.95, 1.0)


def brute_force(y: np.ndarray, p: np.ndarray, kind: str, target: float) -> dict:
    """Try every threshold (each distinct score and +inf), keep those meeting the target, take
    the best partner rate, then break ties by the rule: sensitivity at specificity takes the
    highest threshold, specificity at sensitivity the lowest."""
    rows = []
    for threshold in [math.inf, *np.unique(p)]:
        predicted = p >= threshold
        tp = int((predicted & (y == 1)).sum())
        fp = int((predicted & (y == 0)).sum())
        tn, fn = int((y == 0).sum()) - fp, int((y == 1).sum()) - tp
        rows.append((threshold, tp / (tp + fn), tn / (tn + fp), tp, fp))
    if kind == op.SENSITIVITY_AT_SPECIFICITY:
        meeting = [r for r in rows if r[2] >= target]
        best = max(r[1] for r in meeting)
        chosen = max((r for r in meeting if r[1] == best), key=lambda r: r[0])
    else:
        meeting = [r for r in rows if r[1] >= target]
        best = max(r[2] for r in meeting)
        chosen = min((r for r in meeting if r[2] == best), key=lambda r: r[0])
    threshold, sensitivity, specificity, tp, fp = chosen
    return {
        "threshold": threshold,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "tp": tp,
        "fp": fp,
    }


def tied(rng: np.random.Generator, n: int):
    y = (rng.random(n) < rng.uniform(0.1, 0.6)).astype(int)
    p = np.round(rng.random(n) * 0.7 + 0.3 * y, int(rng.integers(0, 3)))  # many ties
    return y, p


def points_of(result: dict):
    for kind in (op.SENSITIVITY_AT_SPECIFICITY, op.SPECIFICITY_AT_SENSITIVITY):
        yield from ((kind, point) for point in result[kind])


# ----------------------------------------------------------------------------------------------
# Point estimates
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_points_match_a_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    y, p = tied(rng, int(rng.integers(4, 120)))
    if y.min() == y.max():
        y[0] = 1 - y[0]
    result = op.operating_points(
        y, p, np.arange(y.size), SPECIFICITIES, SENSITIVITIES, n_resamples=5, seed=seed
    )
    for kind, point in points_of(result):
        expected = brute_force(y, p, kind, point["target"])
        for key, value in expected.items():
            assert point[key] == value, (kind, point["target"], key)
        assert point["tn"] + point["fp"] == (y == 0).sum()
        assert point["tp"] + point["fn"] == (y == 1).sum()
        if math.isfinite(point["threshold"]):
            reported = metrics.binary_metrics(y, p, point["threshold"])
            for key in ("sensitivity", "specificity", "tp", "fp", "tn", "fn"):
                assert point[key] == reported[key]
            for key in ("ppv", "npv"):  # NaN where nothing is called positive / negative
                assert point[key] == pytest.approx(reported[key], abs=1e-15, nan_ok=True)


def test_ties_go_to_the_dominating_point():
    # Scores (label) 0.9 (1), 0.8 (0), 0.7 (0), 0.6 (1), ...: specificity >= 0.75 of the four
    # negatives holds down to threshold 0.8, where sensitivity is still 1/2; threshold 0.9 has
    # the same sensitivity and specificity 1, and is the one reported.
    y = np.array([1, 0, 0, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    result = op.operating_points(y, p, np.arange(6), (0.75,), (), n_resamples=5)
    (point,) = result[op.SENSITIVITY_AT_SPECIFICITY]
    assert (point["threshold"], point["sensitivity"], point["specificity"]) == (0.9, 0.5, 1.0)
    # Sensitivity >= 0.3 of three positives is met from 0.9 down; specificity 1 holds down to
    # 0.8, which calls two positives instead of one: the lowest threshold is reported.
    y = np.array([1, 1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    result = op.operating_points(y, p, np.arange(5), (), (0.3,), n_resamples=5)
    (point,) = result[op.SPECIFICITY_AT_SENSITIVITY]
    assert (point["threshold"], point["specificity"], point["tp"]) == (0.8, 1.0, 2)


def test_only_calling_nothing_positive_can_meet_a_strict_specificity():
    # The top score is shared by a negative and a positive: any finite threshold has a false
    # positive among 4 negatives (specificity <= 0.75).
    y = np.array([0, 1, 0, 1, 0, 0])
    p = np.array([0.9, 0.9, 0.5, 0.4, 0.3, 0.2])
    result = op.operating_points(y, p, np.arange(6), (0.8,), (), n_resamples=5)
    (point,) = result[op.SENSITIVITY_AT_SPECIFICITY]
    assert point["threshold"] == math.inf
    assert (point["sensitivity"], point["specificity"], point["tp"], point["fp"]) == (0, 1, 0, 0)
    assert math.isnan(point["ppv"])  # nothing called positive
    summary = op.operating_points_summary(
        y[:, None], p[:, None], np.arange(6), specificities=(0.8,), sensitivities=(), n_resamples=5
    )
    assert summary["outputs"]["output_0"][op.SENSITIVITY_AT_SPECIFICITY][0]["threshold"] is None


def test_specificity_comparisons_use_the_reported_ratio():
    """0.9 * 100 is 90.00000000000001 in floating point; 90 of 100 negatives below threshold
    is a specificity of 0.9 all the same, as binary_metrics reports it."""
    y = np.array([0] * 100 + [1] * 10)
    negatives = np.concatenate([np.linspace(0, 0.5, 90), np.linspace(0.6, 0.7, 10)])
    p = np.concatenate([negatives, np.full(5, 0.8), np.full(5, 0.55)])
    result = op.operating_points(y, p, np.arange(110), (0.9,), (), n_resamples=5)
    (point,) = result[op.SENSITIVITY_AT_SPECIFICITY]
    assert point["threshold"] == 0.55 and point["sensitivity"] == 1.0
    assert point["specificity"] == 0.9 and point["fp"] == 10


# ----------------------------------------------------------------------------------------------
# Predictive values
# ----------------------------------------------------------------------------------------------


def test_predictive_values_by_bayes():
    ppv, npv = op.predictive_values(0.9, 0.95, 0.01)
    assert float(ppv) == pytest.approx(0.009 / (0.009 + 0.0495), abs=1e-15)
    assert float(npv) == pytest.approx(0.9405 / (0.9405 + 0.001), abs=1e-15)
    ppv, npv = op.predictive_values([0.0, 1.0], [1.0, 0.0], 0.3)
    assert math.isnan(ppv[0]) and npv[0] == pytest.approx(0.7)  # nothing called positive
    assert ppv[1] == pytest.approx(0.3) and math.isnan(npv[1])  # nothing called negative


def test_ppv_npv_at_the_observed_and_a_given_prevalence():
    rng = np.random.default_rng(3)
    y, p = tied(rng, 500)
    result = op.operating_points(y, p, np.arange(500), prevalence=0.02, n_resamples=20)
    observed = y.mean()
    assert result["observed_prevalence"] == observed and result["prevalence"] == 0.02
    for _, point in points_of(result):
        # At the observed prevalence Bayes' rule is TP / (TP + FP) and TN / (TN + FN).
        ppv, npv = op.predictive_values(point["sensitivity"], point["specificity"], observed)
        assert point["ppv"] == pytest.approx(float(ppv), abs=1e-12)
        assert point["npv"] == pytest.approx(float(npv), abs=1e-12)
        ppv, npv = op.predictive_values(point["sensitivity"], point["specificity"], 0.02)
        assert point["ppv_at_prevalence"] == pytest.approx(float(ppv), abs=1e-15)
        assert point["npv_at_prevalence"] == pytest.approx(float(npv), abs=1e-15)
        low, high = point["ci"]["ppv_at_prevalence"]
        assert low <= high
    without = op.operating_points(y, p, np.arange(500), n_resamples=20)
    for _, point in points_of(without):
        assert point["ppv_at_prevalence"] is None and point["ci"]["npv_at_prevalence"] is None


# ----------------------------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_each_resample_equals_brute_force_on_repeated_images(seed):
    """A single resample of patient counts: its interval is its value, which must be the point
    estimate of the data with every image repeated as often as its patient was drawn."""
    rng = np.random.default_rng(100 + seed)
    n_patients = 30
    patients = rng.integers(0, n_patients, 90)
    patients[:n_patients] = np.arange(n_patients)  # every id is used
    y, p = tied(rng, 90)
    y[:2] = [0, 1]
    y[rng.random(90) < 0.1] = UNKNOWN
    for _ in range(4):
        counts = rng.multinomial(n_patients, np.full(n_patients, 1 / n_patients))[None, :]
        result = op.operating_points(
            y, p, patients, SPECIFICITIES, SENSITIVITIES, prevalence=0.1, patient_counts=counts
        )
        repeat = counts[0][patients]
        known = y != UNKNOWN
        yy, pp = np.repeat(y[known], repeat[known]), np.repeat(p[known], repeat[known])
        if yy.size == 0 or yy.min() == yy.max():
            assert all(point["n_resamples_used"] == 0 for _, point in points_of(result))
            continue
        for kind, point in points_of(result):
            expected = brute_force(yy, pp, kind, point["target"])
            for metric in ("sensitivity", "specificity"):
                low, high = point["ci"][metric]
                assert low == high == pytest.approx(expected[metric], abs=1e-15)
            ppv, _ = op.predictive_values(expected["sensitivity"], expected["specificity"], 0.1)
            low, _ = point["ci"]["ppv_at_prevalence"]
            assert low == pytest.approx(float(ppv), abs=1e-12, nan_ok=True)


def test_unknown_labels_are_ignored():
    rng = np.random.default_rng(5)
    patients = np.repeat(np.arange(200), 3)
    y, p = tied(rng, 600)
    unknown = rng.random(600) < 0.2
    unknown[::3] = False  # every patient keeps a known image: the same draws
    with_unknown = op.operating_points(
        np.where(unknown, UNKNOWN, y),
        np.where(unknown, np.nan, p),
        patients,
        seed=4,
        n_resamples=100,
    )
    alone = op.operating_points(
        y[~unknown], p[~unknown], patients[~unknown], seed=4, n_resamples=100
    )
    assert json.dumps(op.json_safe(with_unknown)) == json.dumps(op.json_safe(alone))
    assert with_unknown["n"] == (~unknown).sum()


def test_the_patient_is_the_resampling_unit():
    rng = np.random.default_rng(6)
    y = (rng.random(600) < 0.3).astype(int)
    p = rng.normal(size=600) + 1.2 * y
    once = op.operating_points(y, p, np.arange(600), n_resamples=400, seed=1)
    doubled = (np.concatenate([y, y]), np.concatenate([p, p]))
    twice = op.operating_points(
        *doubled, np.concatenate([np.arange(600)] * 2), n_resamples=400, seed=1
    )
    as_images = op.operating_points(*doubled, np.arange(1200), n_resamples=400, seed=1)
    points = zip(points_of(once), points_of(twice), points_of(as_images), strict=True)
    for (kind, a), (_, b), (_, c) in points:
        assert a["ci"] == b["ci"]  # duplicated images of the same patients: nothing changes
        # The rate at the target: resampling images wrongly narrows its interval (~1/sqrt 2).
        rate = "sensitivity" if kind == op.SENSITIVITY_AT_SPECIFICITY else "specificity"
        width = a["ci"][rate][1] - a["ci"][rate][0]
        narrower = c["ci"][rate][1] - c["ci"][rate][0]
        assert narrower < 0.85 * width


def test_intervals_cover_the_truth_in_a_small_simulation():
    """Binormal scores, negatives N(0, 1) and positives N(1.5, 1), correlated within patients
    of 3 images; the sensitivity at specificity 0.9 is 1 - Phi(z_0.9 - 1.5)."""
    normal = NormalDist()
    truth = 1 - normal.cdf(normal.inv_cdf(0.9) - 1.5)
    rng = np.random.default_rng(7)
    n_simulations, hits = 150, 0
    for _ in range(n_simulations):
        patient_y = (rng.random(400) < 0.4).astype(int)
        y = np.repeat(patient_y, 3)
        shared = np.repeat(rng.normal(size=400), 3)
        p = 1.5 * y + math.sqrt(0.5) * (shared + rng.normal(size=1200))  # unit variance
        result = op.operating_points(
            y,
            p,
            np.repeat(np.arange(400), 3),
            (0.9,),
            (),
            n_resamples=200,
            seed=int(rng.integers(1 << 31)),
        )
        low, high = result[op.SENSITIVITY_AT_SPECIFICITY][0]["ci"]["sensitivity"]
        hits += low <= truth <= high
    assert 0.88 < hits / n_simulations < 0.99, hits


# ----------------------------------------------------------------------------------------------
# Summary and checks
# ----------------------------------------------------------------------------------------------


def test_summary_is_json_and_shares_draws_across_outputs():
    rng = np.random.default_rng(8)
    n = 400
    patients = np.repeat(np.arange(200), 2)
    y = (rng.random((n, len(OUTPUTS))) < 0.3).astype(int)
    p = rng.normal(size=y.shape) + y
    p[:, 2] = p[:, 1]
    y[:, 2] = y[:, 1]  # the same output twice: the same resamples give the same intervals
    p[:, 3] = np.nan  # no scores: left out
    y[:, 4] = 0  # one class: every number null
    summary = op.operating_points_summary(
        y, p, patients, prevalence=[0.05] * len(OUTPUTS), n_resamples=50, seed=2
    )
    assert json.loads(json.dumps(summary, allow_nan=False)) == summary
    outputs = summary["outputs"]
    assert "Infiltration" not in outputs and list(outputs)[0] == "Atelectasis"
    assert outputs["Effusion"] == outputs["Cardiomegaly"]
    mass = outputs["Mass"][op.SENSITIVITY_AT_SPECIFICITY][0]
    assert mass["sensitivity"] is None and mass["ci"]["sensitivity"] == [None, None]
    assert summary["bootstrap"]["unit"] == "patient"
    single = op.operating_points(
        y[:, 0], p[:, 0], patients, n_resamples=50, seed=2, prevalence=0.05
    )
    assert (
        op.json_safe(single)[op.SENSITIVITY_AT_SPECIFICITY]
        == outputs["Atelectasis"][op.SENSITIVITY_AT_SPECIFICITY]
    )


def test_bad_arguments_are_refused():
    y, p, patients = np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.3, 0.6]), np.arange(4)
    with pytest.raises(ValueError, match="prevalence"):
        op.operating_points(y, p, patients, prevalence=1.5)
    with pytest.raises(ValueError, match="specificities"):
        op.operating_points(y, p, patients, specificities=(1.2,))
    with pytest.raises(ValueError, match="whole numbers"):
        op.operating_points(y, p, patients, patient_counts=np.full((2, 4), 0.5))
    with pytest.raises(ValueError, match="finite"):
        op.operating_points(y, np.array([0.1, np.nan, 0.3, 0.6]), patients)
    with pytest.raises(ValueError, match="n_resamples"):
        op.operating_points(y, p, patients, n_resamples=0)


def test_operating_points_are_fast_on_a_full_test_split():
    import time

    rng = np.random.default_rng(0)
    n = 25_596
    y = (rng.random((n, 15)) < 0.08).astype(int)
    p = rng.normal(size=y.shape) + 1.5 * y
    start = time.perf_counter()
    summary = op.operating_points_summary(y, p, rng.integers(0, 2797, n), n_resamples=2000)
    assert time.perf_counter() - start < 60  # a few seconds; generous for loaded machines
    assert len(summary["outputs"]) == 15
