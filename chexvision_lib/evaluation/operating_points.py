"""Operating points people ask for: sensitivity at a fixed specificity, specificity at a fixed
sensitivity, and the PPV / NPV there, at the test prevalence and at a prevalence of the user's,
with patient-bootstrap intervals. Pure numpy and scipy.

Conventions are those of `metrics`: labels 0/1/UNKNOWN (unknowns dropped), finite scores where
the label is known, positive means score >= threshold, undefined values NaN.

How a point is chosen, exactly. The candidate thresholds are the distinct scores plus +inf (call
nothing positive: sensitivity 0, specificity 1); no other threshold gives a different confusion
matrix. Specificity is TN / (TN + FP) and sensitivity TP / (TP + FN), computed as floating-point
ratios exactly as `metrics.binary_metrics` reports them, and compared with the target as is.

- Sensitivity at specificity >= s: among the candidates whose specificity is >= s, the largest
  sensitivity; that is the lowest such threshold's. Ties: of the thresholds with that same
  sensitivity, the highest one (the best specificity that gives it). +inf always qualifies, so
  the point always exists; when only +inf does, sensitivity is 0 and the threshold is inf (None
  in JSON).
- Specificity at sensitivity >= s: among the candidates whose sensitivity is >= s, the largest
  specificity (the highest such threshold's). Ties: of the thresholds with that same specificity,
  the lowest one (the best sensitivity that gives it). The lowest score always qualifies.

These are points actually reached on the empirical ROC curve (no interpolation between points),
so the achieved specificity (or sensitivity) is reported beside the target and is >= it.

On a test split they describe that split's ROC curve, like its AUC: the threshold is tuned on the
split itself. To report a threshold fixed in advance, run this on validation, store the point's
"threshold", and apply it to the test split with `metrics.binary_metrics`.

Predictive values from sensitivity Se, specificity Sp and a prevalence pi (Bayes):
PPV = Se pi / (Se pi + (1 - Sp)(1 - pi)), NPV = Sp (1 - pi) / (Sp (1 - pi) + (1 - Se) pi).
"ppv" and "npv" are at the observed prevalence of the data, where they equal TP / (TP + FP) and
TN / (TN + FN); "ppv_at_prevalence" and "npv_at_prevalence" at the prevalence given.

Intervals are percentile bootstrap intervals over patients (Efron & Tibshirani 1993), with the
draws of `metrics.bootstrap_auc` for the same patients and seed. The whole procedure is repeated
in each resample: the threshold is chosen again on the resample (an image counts as many times as
its patient was drawn), so the interval covers the choice of threshold too. A resample without
positive or without negative images of an output is dropped for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sparse
from numpy.typing import ArrayLike

from chexvision_lib.core.labels import UNKNOWN
from chexvision_lib.evaluation.calibration import (
    _check_labels,
    _column_available,
    _patient_index,
    column_names,
    json_safe,
    patient_count_chunks,
)
from chexvision_lib.evaluation.metrics import (
    _known_labels_and_scores,
    _matrices,
    _percentile_interval,
)

DEFAULT_SPECIFICITIES = (0.90, 0.95)
DEFAULT_SENSITIVITIES = (0.90, 0.95)
# The numbers of each point, in the column order of the bootstrap arrays.
POINT_METRICS = (
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "ppv_at_prevalence",
    "npv_at_prevalence",
)
SENSITIVITY_AT_SPECIFICITY = "sensitivity_at_specificity"
SPECIFICITY_AT_SENSITIVITY = "specificity_at_sensitivity"
# Images per block of the running-weight searches (see `_Side`).
BLOCK = 32

DEFINITION = {
    SENSITIVITY_AT_SPECIFICITY: (
        "largest sensitivity over thresholds (distinct scores and +inf, positive = score >= t) "
        "with specificity >= target; ties: the highest such threshold"
    ),
    SPECIFICITY_AT_SENSITIVITY: (
        "largest specificity over thresholds with sensitivity >= target; ties: the lowest such "
        "threshold"
    ),
    "ppv_npv": (
        "Bayes from sensitivity, specificity and prevalence: PPV = Se pi / (Se pi + (1 - Sp) "
        "(1 - pi)), NPV = Sp (1 - pi) / (Sp (1 - pi) + (1 - Se) pi); ppv/npv at the observed "
        "prevalence, *_at_prevalence at the given one"
    ),
    "threshold_none": "threshold null: only calling nothing positive meets the target",
}


def predictive_values(
    sensitivity: ArrayLike, specificity: ArrayLike, prevalence: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """(PPV, NPV) by Bayes' rule, elementwise; NaN where a denominator is 0 or an input is NaN.

    PPV = Se pi / (Se pi + (1 - Sp)(1 - pi)); NPV = Sp (1 - pi) / (Sp (1 - pi) + (1 - Se) pi).
    """
    se = np.asarray(sensitivity, dtype=np.float64)
    sp = np.asarray(specificity, dtype=np.float64)
    pi = np.asarray(prevalence, dtype=np.float64)
    true_positive = se * pi
    false_positive = (1.0 - sp) * (1.0 - pi)
    true_negative = sp * (1.0 - pi)
    false_negative = (1.0 - se) * pi
    with np.errstate(invalid="ignore", divide="ignore"):
        called_positive = true_positive + false_positive
        called_negative = true_negative + false_negative
        ppv = np.where(called_positive > 0, true_positive / called_positive, np.nan)
        npv = np.where(called_negative > 0, true_negative / called_negative, np.nan)
    return ppv, npv


def _check_targets(targets: Sequence[float], name: str) -> tuple[float, ...]:
    values = tuple(float(t) for t in targets)
    if any(not 0.0 <= t <= 1.0 for t in values):
        raise ValueError(f"{name} must lie in [0, 1]; got {values}")
    return values


def _check_prevalence(prevalence: float | None) -> float | None:
    if prevalence is None:
        return None
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence must lie in (0, 1); got {prevalence}")
    return float(prevalence)


# ----------------------------------------------------------------------------------------------
# The ROC under many weightings
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Side:
    """The images of one class in descending score order, cut into blocks of BLOCK images.

    Under a weighting w of the patients, R(i) is the weight of the first i images. Block sums for
    B weightings at once are one sparse product (images per block and patient times the (patients,
    B) weights), their running sums give R at every block boundary, and R anywhere else is a
    boundary value plus at most BLOCK - 1 weights: a search over R costs O(images) multiply-adds
    for the product plus O(B * BLOCK), instead of a gather and a running sum over every image.
    """

    owners: np.ndarray  # (n_blocks * BLOCK,) patient of each image, padded with patient n_patients
    size: int  # images of this class
    blocks: sparse.csr_matrix  # (n_blocks, n_patients) images per block and patient


def _side(owners: np.ndarray, n_patients: int) -> _Side:
    n_blocks = max(1, -(-owners.size // BLOCK))
    padded = np.full(n_blocks * BLOCK, n_patients, dtype=np.int64)
    padded[: owners.size] = owners
    blocks = sparse.csr_matrix(
        (np.ones(owners.size), (np.arange(owners.size) // BLOCK, owners)),
        shape=(n_blocks, n_patients),
    )
    return _Side(padded, int(owners.size), blocks)


@dataclass(frozen=True)
class _RocPlan:
    """One output's ROC candidates and its two classes as `_Side`s.

    Candidate c = 0 is the threshold +inf; candidate c >= 1 is the c-th highest distinct score,
    at which the first positives_before[c] positives and negatives_before[c] negatives (in score
    order) are called positive.
    """

    thresholds: np.ndarray  # (C,) inf, then the distinct scores, descending
    positives: _Side
    negatives: _Side
    positives_before: np.ndarray  # (C,)
    negatives_before: np.ndarray  # (C,)


def _roc_plan(
    labels: np.ndarray, scores: np.ndarray, owners: np.ndarray, n_patients: int
) -> _RocPlan:
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    is_positive = labels[order] == 1
    ends_run = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    return _RocPlan(
        thresholds=np.concatenate([[math.inf], sorted_scores[ends_run]]),
        positives=_side(owners[order][is_positive], n_patients),
        negatives=_side(owners[order][~is_positive], n_patients),
        positives_before=np.concatenate([[0], np.cumsum(is_positive)[ends_run]]),
        negatives_before=np.concatenate([[0], np.cumsum(~is_positive)[ends_run]]),
    )


@dataclass(frozen=True)
class _Weights:
    """One chunk of B patient weightings, in the two layouts the searches need."""

    by_row: np.ndarray  # (B, n_patients + 1); the last column (the padding patient) is 0
    by_patient: np.ndarray  # (n_patients, B), C-contiguous for the sparse products

    @classmethod
    def of(cls, counts: np.ndarray) -> _Weights:
        by_row = np.zeros((counts.shape[0], counts.shape[1] + 1))
        by_row[:, :-1] = counts
        return cls(by_row, np.ascontiguousarray(by_row[:, :-1].T))


@dataclass(frozen=True)
class _Running:
    """R(i) of one `_Side` under each of B weightings, searchable row by row. Weights are whole
    numbers, so every sum is exact and comparisons with whole-number limits are exact too."""

    side: _Side
    weights: _Weights
    boundaries: np.ndarray  # (B, n_blocks + 1): R(0), R(BLOCK), R(2 BLOCK), ...

    @classmethod
    def of(cls, side: _Side, weights: _Weights) -> _Running:
        block_sums = side.blocks @ weights.by_patient  # (n_blocks, B)
        boundaries = np.zeros((block_sums.shape[1], block_sums.shape[0] + 1))
        np.cumsum(block_sums.T, axis=1, out=boundaries[:, 1:])
        return cls(side, weights, boundaries)

    @property
    def total(self) -> np.ndarray:
        return self.boundaries[:, -1]

    def _inside(self, block: np.ndarray) -> np.ndarray:
        """(B, BLOCK): R(block * BLOCK + t + 1) for t = 0 .. BLOCK - 1, one block per row."""
        block = np.clip(block, 0, self.boundaries.shape[1] - 2)
        positions = block[:, None] * BLOCK + np.arange(BLOCK)
        owners = self.side.owners[positions]
        gathered = np.take_along_axis(self.weights.by_row, owners, axis=1)
        base = np.take_along_axis(self.boundaries, block[:, None], axis=1)
        return base + np.cumsum(gathered, axis=1)

    def value(self, i: np.ndarray) -> np.ndarray:
        """R(i[r]) in each row r."""
        block, offset = np.divmod(i, BLOCK)
        base = np.take_along_axis(self.boundaries, block[:, None], axis=1)[:, 0]
        inside = self._inside(block)
        partial = np.take_along_axis(inside, np.maximum(offset - 1, 0)[:, None], axis=1)[:, 0]
        return np.where(offset > 0, partial, base)

    def last_at_most(self, limit: np.ndarray) -> np.ndarray:
        """Per row the largest i in [0, size] with R(i) <= limit (limit >= 0)."""
        block = (self.boundaries <= limit[:, None]).sum(axis=1) - 1
        inside = (self._inside(block) <= limit[:, None]).sum(axis=1)
        return np.minimum(block * BLOCK + inside, self.side.size)

    def first_at_least(self, limit: np.ndarray) -> np.ndarray:
        """Per row the smallest i in [0, size] with R(i) >= limit (limit <= the row's total)."""
        boundary = (self.boundaries < limit[:, None]).sum(axis=1)  # first with R >= limit
        block = boundary - 1
        inside = (self._inside(block) < limit[:, None]).sum(axis=1)
        found = np.where(boundary == 0, 0, block * BLOCK + 1 + inside)
        return np.minimum(found, self.side.size)


def _largest_false_positives(negatives: np.ndarray, target: float) -> np.ndarray:
    """Per row the largest whole m in [0, N] with fl((N - m) / N) >= target (specificity)."""
    base = np.floor(negatives * (1.0 - target))
    best = np.zeros_like(negatives)
    with np.errstate(invalid="ignore", divide="ignore"):
        for candidate in (base - 1.0, base, base + 1.0):
            candidate = np.clip(candidate, 0.0, negatives)
            meets = (negatives - candidate) / negatives >= target
            best = np.where(meets, np.maximum(best, candidate), best)
    return best


def _smallest_true_positives(positives: np.ndarray, target: float) -> np.ndarray:
    """Per row the smallest whole d in [0, P] with fl(d / P) >= target (sensitivity)."""
    base = np.ceil(positives * target)
    best = positives.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        for candidate in (base + 1.0, base, base - 1.0):
            candidate = np.clip(candidate, 0.0, positives)
            meets = candidate / positives >= target
            best = np.where(meets, np.minimum(best, candidate), best)
    return best


def _chosen_point(
    plan: _RocPlan, positives: _Running, negatives: _Running, kind: str, target: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(candidate, TP, FP) per row at the point the rules of the module docstring pick.

    TP and FP only grow as the threshold falls, so "specificity >= s" is "FP <= m" for the
    largest whole m that meets it and "sensitivity >= s" is "TP >= d" for the smallest such d;
    each step is a search in R of one class, mapped to candidates through positives_before and
    negatives_before (both non-decreasing).
    """

    def true_pos_at(candidate: np.ndarray) -> np.ndarray:
        return positives.value(plan.positives_before[candidate])

    def false_pos_at(candidate: np.ndarray) -> np.ndarray:
        return negatives.value(plan.negatives_before[candidate])

    def last_candidate_with_false_pos_at_most(limit: np.ndarray) -> np.ndarray:
        included = negatives.last_at_most(limit)
        return np.maximum(np.searchsorted(plan.negatives_before, included, "right") - 1, 0)

    def first_candidate_with_true_pos_at_least(limit: np.ndarray) -> np.ndarray:
        included = positives.first_at_least(limit)
        candidate = np.searchsorted(plan.positives_before, included, "left")
        return np.minimum(candidate, plan.thresholds.size - 1)

    if kind == SENSITIVITY_AT_SPECIFICITY:
        meeting = last_candidate_with_false_pos_at_most(
            _largest_false_positives(negatives.total, target)
        )
        # The highest threshold with the same TP: the best specificity for that sensitivity.
        chosen = first_candidate_with_true_pos_at_least(true_pos_at(meeting))
    else:
        meeting = first_candidate_with_true_pos_at_least(
            _smallest_true_positives(positives.total, target)
        )
        # The lowest threshold with the same FP: the best sensitivity for that specificity.
        chosen = last_candidate_with_false_pos_at_most(false_pos_at(meeting))
    return chosen, true_pos_at(chosen), false_pos_at(chosen)


def _values_for_chunk(
    plan: _RocPlan,
    weights: _Weights,
    targets: list[tuple[str, float]],
    prevalence: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(chosen candidates (B, T), TP (B, T), FP (B, T), values (B, T, POINT_METRICS))."""
    positives = _Running.of(plan.positives, weights)
    negatives = _Running.of(plan.negatives, weights)
    chosen, true_pos, false_pos, values = [], [], [], []
    for kind, target in targets:
        candidate, tp, fp = _chosen_point(plan, positives, negatives, kind, target)
        chosen.append(candidate)
        true_pos.append(tp)
        false_pos.append(fp)
        values.append(_point_values(tp, fp, positives.total, negatives.total, prevalence))
    return (
        np.stack(chosen, axis=1),
        np.stack(true_pos, axis=1),
        np.stack(false_pos, axis=1),
        np.stack(values, axis=1),
    )


def _point_values(
    tp: np.ndarray,
    fp: np.ndarray,
    positives: np.ndarray,
    negatives: np.ndarray,
    prevalence: float | None,
) -> np.ndarray:
    """(B, len(POINT_METRICS)) numbers at the chosen points; NaN rows lack a class."""
    tn, fn = negatives - fp, positives - tp
    values = np.full((tp.size, len(POINT_METRICS)), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        values[:, 0] = tp / positives
        values[:, 1] = tn / negatives
        values[:, 2] = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        values[:, 3] = np.where(tn + fn > 0, tn / (tn + fn), np.nan)
    if prevalence is not None:
        values[:, 4], values[:, 5] = predictive_values(values[:, 0], values[:, 1], prevalence)
    values[(positives == 0) | (negatives == 0)] = np.nan
    return values


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def _targets(specificities: Sequence[float], sensitivities: Sequence[float]):
    return [(SENSITIVITY_AT_SPECIFICITY, s) for s in specificities] + [
        (SPECIFICITY_AT_SENSITIVITY, s) for s in sensitivities
    ]


def _column_points(
    labels: np.ndarray,
    scores: np.ndarray,
    owners: np.ndarray,
    n_patients: int,
    targets: list[tuple[str, float]],
    prevalence: float | None,
) -> tuple[_RocPlan | None, dict]:
    """The plan and the point estimates (the resampling engine with every weight 1) of a column."""
    n_positive = int(labels.sum())
    result = {
        "n": int(labels.size),
        "n_positive": n_positive,
        "observed_prevalence": n_positive / labels.size if labels.size else math.nan,
        "prevalence": prevalence,
        SENSITIVITY_AT_SPECIFICITY: [],
        SPECIFICITY_AT_SENSITIVITY: [],
    }
    defined = 0 < n_positive < labels.size
    plan = _roc_plan(labels, scores, owners, n_patients) if defined else None
    if plan is not None:  # the resampling engine with every patient drawn once
        chosen, true_pos, false_pos, values = _values_for_chunk(
            plan, _Weights.of(np.ones((1, n_patients))), targets, prevalence
        )
    for t, (kind, target) in enumerate(targets):
        point: dict = {"target": target, "threshold": math.nan}
        point.update(dict.fromkeys(POINT_METRICS, math.nan))
        point.update(dict.fromkeys(("tp", "fp", "tn", "fn")))
        if plan is not None:
            tp, fp = int(true_pos[0, t]), int(false_pos[0, t])
            point["threshold"] = float(plan.thresholds[chosen[0, t]])
            point.update(zip(POINT_METRICS, map(float, values[0, t]), strict=True))
            point.update(tp=tp, fp=fp, tn=labels.size - n_positive - fp, fn=n_positive - tp)
        if prevalence is None:
            point["ppv_at_prevalence"] = point["npv_at_prevalence"] = None
        result[kind].append(point)
    return plan, result


def _resampled_points(
    plans: list[_RocPlan | None],
    prevalences: list[float | None],
    targets: list[tuple[str, float]],
    chunks,
) -> list[np.ndarray | None]:
    """(B, targets, POINT_METRICS) resampled values per column (None where there is no plan)."""
    if not any(plans):
        return [None] * len(plans)
    stores: list[list[np.ndarray]] = [[] for _ in plans]
    for _, _, counts in chunks:
        weights = _Weights.of(counts)
        for plan, prevalence, store in zip(plans, prevalences, stores, strict=True):
            if plan is not None:
                store.append(_values_for_chunk(plan, weights, targets, prevalence)[3])
    return [
        np.concatenate(store) if plan is not None else None
        for plan, store in zip(plans, stores, strict=True)
    ]


def _operating_points_columns(
    columns: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None],
    n_patients: int,
    targets: list[tuple[str, float]],
    prevalences: list[float | None],
    n_resamples: int,
    seed: int,
    alpha: float,
    patient_counts: ArrayLike | None,
) -> list[dict | None]:
    """Points and intervals for every column, drawing the resamples once for all of them."""
    plans: list[_RocPlan | None] = []
    results: list[dict | None] = []
    for column, prevalence in zip(columns, prevalences, strict=True):
        plan, result = (
            (None, None)
            if column is None
            else _column_points(*column, n_patients, targets, prevalence)
        )
        plans.append(plan)
        results.append(result)
    if patient_counts is not None:
        fixed = np.asarray(patient_counts)
        if fixed.size and not np.array_equal(fixed, np.round(fixed)):
            raise ValueError("patient_counts must be whole numbers (times each patient is drawn)")
    chunks = patient_count_chunks(n_patients, n_resamples, seed, patient_counts)
    all_draws = _resampled_points(plans, prevalences, targets, chunks)
    n_drawn = next((d.shape[0] for d in all_draws if d is not None), None)
    if n_drawn is None:  # nothing was resampled: the count the caller asked for
        n_drawn = n_resamples if patient_counts is None else int(np.shape(patient_counts)[0])
    for result, draws in zip(results, all_draws, strict=True):
        if result is None:
            continue
        points = result[SENSITIVITY_AT_SPECIFICITY] + result[SPECIFICITY_AT_SENSITIVITY]
        for t, point in enumerate(points):
            ci: dict[str, list[float] | None] = {}
            used = 0
            for m, metric in enumerate(POINT_METRICS):
                if metric.endswith("_at_prevalence") and point[metric] is None:
                    ci[metric] = None
                elif draws is None:
                    ci[metric] = [math.nan, math.nan]
                else:
                    low, high, n_used = _percentile_interval(draws[:, t, m], alpha)
                    ci[metric] = [low, high]
                    used = n_used if metric == "sensitivity" else used
            point["ci"] = ci
            point["n_resamples_used"] = used
        result.update(n_patients=n_patients, n_resamples=n_drawn, alpha=alpha, seed=seed)
    return results


def _column_inputs(labels: np.ndarray, scores: np.ndarray, patient_index: np.ndarray, name: str):
    known_labels, known_scores = _known_labels_and_scores(
        labels, scores, y_name=f"y{name}", p_name=f"p{name}"
    )
    return known_labels, known_scores, patient_index[labels != UNKNOWN]


def operating_points(
    y: ArrayLike,
    p: ArrayLike,
    patients: ArrayLike,
    specificities: Sequence[float] = DEFAULT_SPECIFICITIES,
    sensitivities: Sequence[float] = DEFAULT_SENSITIVITIES,
    prevalence: float | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    *,
    patient_counts: ArrayLike | None = None,
) -> dict:
    """Sensitivity at each target specificity and specificity at each target sensitivity of one
    output, with PPV/NPV, and patient-bootstrap percentile intervals of all of them.

    y: (n,) labels 0/1/UNKNOWN; p: (n,) scores; patients: (n,) ids. prevalence: an expected
    prevalence in (0, 1) for "ppv_at_prevalence"/"npv_at_prevalence" (None: those are None).
    `patient_counts` (B, n_patients), patients in np.unique order, replaces the random draws.

    Returns {"n", "n_positive", "observed_prevalence", "prevalence", "n_patients",
    "n_resamples", "alpha", "seed", "sensitivity_at_specificity": [point per target],
    "specificity_at_sensitivity": [point per target]}; a point is {"target", "threshold" (inf
    when only calling nothing positive meets the target), "sensitivity", "specificity", "ppv",
    "npv", "ppv_at_prevalence", "npv_at_prevalence", "tp", "fp", "tn", "fn", "ci": {metric:
    [lower, upper]}, "n_resamples_used"}. With a single class among the known labels every
    number is NaN. Floats may be NaN or inf: `json_safe` the result before writing JSON.
    """
    labels = np.asarray(y)
    scores = np.asarray(p, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"y and p must be 1-D arrays of the same length; got {labels.shape} and {scores.shape}"
        )
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    targets = _targets(
        _check_targets(specificities, "specificities"),
        _check_targets(sensitivities, "sensitivities"),
    )
    patient_index, n_patients = _patient_index(patients, labels.size)
    column = _column_inputs(labels, scores, patient_index, "")
    (result,) = _operating_points_columns(
        [column],
        n_patients,
        targets,
        [_check_prevalence(prevalence)],
        n_resamples,
        seed,
        alpha,
        patient_counts,
    )
    return result


def operating_points_summary(
    Y: ArrayLike,
    P: ArrayLike,
    patients: ArrayLike,
    *,
    names: Sequence[str] | None = None,
    specificities: Sequence[float] = DEFAULT_SPECIFICITIES,
    sensitivities: Sequence[float] = DEFAULT_SENSITIVITIES,
    prevalence: float | None | Sequence[float | None] = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """`operating_points` for every column of (n, k) labels and scores, as a JSON-safe block for
    metrics.json; all outputs share the same patient resamples (drawn once).

    prevalence: one value for every output, or one per column (None where not wanted).
    Unavailable outputs (all scores NaN, or no known label) are left out. Returns
    {"definition": {...}, "bootstrap": {"unit", "n_resamples", "seed", "confidence": 0.95},
    "outputs": {name: the operating_points dict without its bootstrap fields}}; inf and NaN
    become None.
    """
    labels, scores = _matrices(Y, P)
    n_columns = labels.shape[1]
    names = column_names(names, n_columns)
    if prevalence is None or np.ndim(prevalence) == 0:
        prevalences = [prevalence] * n_columns
    else:
        prevalences = list(prevalence)
        if len(prevalences) != n_columns:
            raise ValueError(f"prevalence must be one value or {n_columns}; got {len(prevalences)}")
    prevalences = [_check_prevalence(value) for value in prevalences]
    targets = _targets(
        _check_targets(specificities, "specificities"),
        _check_targets(sensitivities, "sensitivities"),
    )
    patient_index, n_patients = _patient_index(patients, labels.shape[0])
    columns = []
    for j in range(n_columns):
        column_scores = scores[:, j].astype(np.float64)
        if _column_available(labels[:, j], column_scores):
            columns.append(_column_inputs(labels[:, j], column_scores, patient_index, f"[:, {j}]"))
        else:
            _check_labels(labels[:, j], f"Y[:, {j}]")
            columns.append(None)
    results = _operating_points_columns(
        columns, n_patients, targets, prevalences, n_resamples, seed, 0.05, None
    )
    outputs = {}
    for name, result in zip(names, results, strict=True):
        if result is None:
            continue
        for key in ("n_patients", "n_resamples", "alpha", "seed"):
            result.pop(key)
        outputs[name] = result
    return json_safe(
        {
            "definition": DEFINITION,
            "bootstrap": {
                "unit": "patient",
                "n_resamples": n_resamples,
                "seed": seed,
                "confidence": 0.95,
            },
            "outputs": outputs,
        }
    )
