"""Evaluation metrics as pure functions on numpy arrays: AUCs, operating points, intervals, tests.

Conventions shared by every function here:

- Labels are 0 (negative), 1 (positive) or ``labels.UNKNOWN`` (-1, not known for that image).
  Every metric drops the unknown entries first, class by class; their scores may be anything (NaN
  included), while the scores of known entries must be finite.
- A prediction is positive when ``score >= threshold``.
- Anything undefined (an AUC with only one class present, a ratio whose denominator is 0) is NaN,
  never an exception, so a table of metrics over many subgroups never stops half way.
- Matrices are (n images, k outputs); a 1-D array is one output.

Sources: the Mann-Whitney form of the AUC (Hanley & McNeil 1982); DeLong, DeLong & Clarke-Pearson
(1988) for the variance of correlated AUCs, computed with the midrank algorithm of Sun & Xu (2014);
Holm (1979) for step-down multiplicity adjustment; Efron & Tibshirani (1993) for the percentile
bootstrap, resampling patients (the independent unit) rather than images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sparse
from numpy.typing import ArrayLike

from chexvision_lib.core.labels import UNKNOWN

ThresholdMethod = Literal["youden", "f1"]
THRESHOLD_METHODS: tuple[str, ...] = ("youden", "f1")

# Age bands for subgroup tables; `age_band` returns AGE_UNKNOWN for missing or implausible ages.
AGE_BANDS: tuple[str, ...] = ("0-17", "18-39", "40-59", "60-79", "80+")
AGE_BAND_LOWER_EDGES: tuple[int, ...] = (0, 18, 40, 60, 80)
AGE_UNKNOWN = "unknown"
# NIH Data_Entry_2017 holds a handful of ages in the hundreds (e.g. 412): entry errors.
MAX_PLAUSIBLE_AGE = 120

# Resamples processed together in bootstrap_auc: a chunk needs a few (rows x 128) float32 arrays,
# rows <= half the images (under 7 MB each for 25k images); larger chunks were not faster.
RESAMPLES_PER_CHUNK = 128
# Patient counts, their sums and those sums plus halves (ties) are exact in float32 below 2**23.
_FLOAT32_EXACT_LIMIT = 2**23


# ----------------------------------------------------------------------------------------------
# Input checking
# ----------------------------------------------------------------------------------------------


def _known_labels_and_scores(
    y: ArrayLike, p: ArrayLike, *, y_name: str = "y", p_name: str = "p"
) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels as int8 in {0, 1}, scores as float64) for the entries whose label is known."""
    labels = np.asarray(y)
    scores = np.asarray(p, dtype=np.float64)
    if labels.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"{y_name} and {p_name} must be 1-D arrays of the same length; "
            f"got shapes {labels.shape} and {scores.shape}"
        )
    valid = np.isin(labels, (0, 1, UNKNOWN))
    if not valid.all():
        bad = labels[~valid][0]
        raise ValueError(f"{y_name} must hold 0, 1 or {UNKNOWN} (unknown); found {bad!r}")
    known = labels != UNKNOWN
    labels, scores = labels[known].astype(np.int8), scores[known]
    if not np.isfinite(scores).all():
        raise ValueError(f"{p_name} must be finite wherever {y_name} is known (0 or 1)")
    return labels, scores


def _as_matrix(values: ArrayLike, name: str) -> np.ndarray:
    """View a 1-D array as one column; leave 2-D arrays alone; refuse anything else."""
    matrix = np.asarray(values)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be (n,) or (n, k); got shape {matrix.shape}")
    return matrix


def _matrices(Y: ArrayLike, P: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = _as_matrix(Y, "Y"), _as_matrix(P, "P")
    if labels.shape != scores.shape:
        raise ValueError(f"Y and P must have the same shape; got {labels.shape} and {scores.shape}")
    return labels, scores


def _nanmean(values: np.ndarray) -> float:
    """Mean of the non-NaN values; NaN (without numpy's empty-slice warning) when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


# ----------------------------------------------------------------------------------------------
# AUC
# ----------------------------------------------------------------------------------------------


def midranks(values: ArrayLike) -> np.ndarray:
    """1-based ranks with tied values sharing the mean of the ranks they span ("midranks").

    Sun & Xu (2014), Algorithm 1 (their "ComputeMidrank"), vectorised: sort once, find the runs of
    equal values, give each run the average of its first and last rank.
    """
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts_run = np.empty(values.size, dtype=bool)
    starts_run[:1] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=starts_run[1:])
    run_index = np.cumsum(starts_run) - 1
    run_first = np.flatnonzero(starts_run)  # 0-based position of each run's first element
    run_end = np.append(run_first[1:], values.size)  # 0-based position one past its last
    run_midrank = (run_first + 1 + run_end) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = run_midrank[run_index]
    return ranks


def roc_auc(y: ArrayLike, p: ArrayLike) -> float:
    """Area under the ROC curve, ignoring entries whose label is UNKNOWN; NaN with one class only.

    Mann-Whitney form (Hanley & McNeil 1982): the probability that a random positive scores above
    a random negative, ties counting 1/2, computed from midranks of the pooled scores:
    AUC = (sum of positive midranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg).
    Equals sklearn.metrics.roc_auc_score (trapezoidal ROC area) to rounding.
    """
    labels, scores = _known_labels_and_scores(y, p)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = midranks(scores)
    # Midranks are half-integers, so this sum is exact in float64 for any realistic n.
    positive_rank_sum = float(ranks[labels == 1].sum())
    return (positive_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def per_class_auc(Y: ArrayLike, P: ArrayLike) -> np.ndarray:
    """ROC AUC of each column of (n, k) labels Y and scores P; NaN for a column with one class."""
    labels, scores = _matrices(Y, P)
    return np.array([roc_auc(labels[:, j], scores[:, j]) for j in range(labels.shape[1])])


def macro_auc(Y: ArrayLike, P: ArrayLike) -> float:
    """Mean of the per-class AUCs over the classes where it is defined (NaN if none is)."""
    return _nanmean(per_class_auc(Y, P))


# ----------------------------------------------------------------------------------------------
# Thresholds and operating points
# ----------------------------------------------------------------------------------------------


def _counts_at_each_threshold(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, tp, fp) for every distinct score used as threshold, highest threshold first.

    These are the ROC curve's and the PR curve's thresholds: between two consecutive distinct
    scores no prediction changes, so no other threshold gives a different confusion matrix
    (thresholds above the top score predict nothing positive and are not candidates here).
    """
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order].astype(np.int64)
    true_positives = np.cumsum(sorted_labels)
    false_positives = np.arange(1, labels.size + 1) - true_positives
    # The counts at threshold t include every score >= t, i.e. up to the last of a run of ties.
    ends_run = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    return sorted_scores[ends_run], true_positives[ends_run], false_positives[ends_run]


def choose_threshold(y: ArrayLike, p: ArrayLike, method: ThresholdMethod = "youden") -> float:
    """Operating threshold that maximises Youden's J or F1 over the curve's thresholds.

    method="youden": J = sensitivity + specificity - 1 (Youden 1950) maximised over the ROC curve's
    thresholds; method="f1": F1 = 2 TP / (2 TP + FP + FN) maximised over the PR curve's thresholds.
    Candidates are the distinct scores (positive means score >= threshold); ties in the criterion
    go to the highest threshold, the one that calls fewest images positive. The criteria are
    compared as exact integer expressions so that ties are real ties, not rounding accidents.
    NaN when the known labels hold only one class.
    """
    if method not in THRESHOLD_METHODS:
        raise ValueError(f"method must be one of {THRESHOLD_METHODS}; got {method!r}")
    labels, scores = _known_labels_and_scores(y, p)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    thresholds, tp, fp = _counts_at_each_threshold(labels, scores)
    if method == "youden":
        # J * n_pos * n_neg = tp * n_neg - fp * n_pos: same argmax, integer arithmetic.
        best = np.argmax(tp * n_neg - fp * n_pos)
    else:
        # F1 = 2 tp / (tp + fp + n_pos); quotients of exact integers are correctly rounded, so
        # equal fractions compare equal.
        best = np.argmax(2.0 * tp / (tp + fp + n_pos))
    return float(thresholds[best])


def choose_thresholds(Y: ArrayLike, P: ArrayLike, method: ThresholdMethod = "youden") -> np.ndarray:
    """`choose_threshold` for each column of (n, k) labels Y and scores P; returns (k,)."""
    labels, scores = _matrices(Y, P)
    return np.array(
        [choose_threshold(labels[:, j], scores[:, j], method) for j in range(labels.shape[1])]
    )


def confusion_matrix_2x2(y: ArrayLike, p: ArrayLike, threshold: float) -> np.ndarray:
    """[[tn, fp], [fn, tp]] (sklearn's layout) for positive = p >= threshold, unknowns dropped."""
    labels, scores = _known_labels_and_scores(y, p)
    predicted = scores >= threshold
    actual = labels == 1
    tp = int(np.count_nonzero(predicted & actual))
    fp = int(np.count_nonzero(predicted & ~actual))
    fn = int(np.count_nonzero(~predicted & actual))
    tn = labels.size - tp - fp - fn
    return np.array([[tn, fp], [fn, tp]], dtype=np.int64)


def binary_metrics(y: ArrayLike, p: ArrayLike, threshold: float) -> dict[str, float | int]:
    """Counts and rates at one operating point; positive prediction means p >= threshold.

    Returns tp, fp, tn, fn (int) and sensitivity = tp/(tp+fn), specificity = tn/(tn+fp),
    ppv = tp/(tp+fp), npv = tn/(tn+fn), f1 = 2tp/(2tp+fp+fn), accuracy = (tp+tn)/n (float, NaN
    where the denominator is 0), plus the threshold itself. Unknown labels are dropped.
    """
    (tn, fp), (fn, tp) = confusion_matrix_2x2(y, p, threshold).tolist()
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "threshold": float(threshold),
    }


# ----------------------------------------------------------------------------------------------
# Weighted AUC for many weightings at once (the bootstrap's engine)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _WeightedAucPlan:
    """One output's images arranged so that AUCs under many weightings cost two sparse products.

    Weights live on "units" (patients in the bootstrap, images in `weighted_roc_auc`); every image
    takes the weight of its unit. The images of the smaller class are the "query" side, those of
    the other class the "reference" side, and U = sum over queries i of w_i times (the reference
    weight below s_i + half the reference weight tied with s_i) counts weighted (query above
    reference) pairs.

    With g_1 < ... < g_K the distinct query scores, a reference image scoring s counts fully for
    every group above s and half for a group equal to s. As steps down the groups: +1 at the first
    group above s, or, when s = g_k, +1/2 at group k and +1/2 at group k + 1. The cumulative sum of
    the weighted steps at group k is then exactly what a query scoring g_k needs, and
    U = sum_k Q_k cumsum(steps)_k with Q_k the query weight at g_k. A group with no step of its own
    shares the cumulative sum of the group before, so it is merged into that one (and groups before
    the first step, whose sum is 0, are dropped): the rows are the R <= K distinct step positions.
    Both Q and the steps are (R x units) count matrices times the unit weights, so one resample
    costs O(images) plus a cumulative sum of length R; nothing is sorted per resample.
    """

    query_is_negative: bool
    query_by_row: sparse.csr_matrix  # (R, units): query images per merged score group and unit
    reference_steps: sparse.csr_matrix  # (R, units): reference steps (1 or 1/2) per row and unit
    query_per_unit: np.ndarray  # (units,) query images per unit
    reference_per_unit: np.ndarray  # (units,) reference images per unit


def _weighted_auc_plan(
    labels: np.ndarray, scores: np.ndarray, units: np.ndarray, n_units: int, dtype: type
) -> _WeightedAucPlan | None:
    """Build the plan for known labels (0/1), finite scores and unit indices; None if one class."""
    positive = labels == 1
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == labels.size:
        return None
    # The cumulative sum over the query groups is the one sequential step: keep it short.
    query_is_negative = n_pos > labels.size - n_pos
    query = ~positive if query_is_negative else positive
    query_scores, reference_scores = scores[query], scores[~query]
    query_units, reference_units = units[query], units[~query]

    group_scores = np.unique(query_scores)
    n_groups = group_scores.size
    first_group_above = np.searchsorted(group_scores, reference_scores, side="right")
    first_group_at_or_above = np.searchsorted(group_scores, reference_scores, side="left")
    tied = first_group_at_or_above < first_group_above
    step_group = np.concatenate([first_group_above, first_group_at_or_above[tied]])
    step_unit = np.concatenate([reference_units, reference_units[tied]])
    step_size = np.concatenate([np.where(tied, 0.5, 1.0), np.full(int(tied.sum()), 0.5)])
    counted = step_group < n_groups  # steps above the top query group never count
    step_group, step_unit, step_size = step_group[counted], step_unit[counted], step_size[counted]

    # Merge each query group into the nearest step position at or below it.
    step_rows = np.unique(step_group)
    query_row = np.searchsorted(step_rows, np.searchsorted(group_scores, query_scores), "right") - 1
    has_row = query_row >= 0  # queries below every reference image pair with nothing
    shape = (step_rows.size, n_units)
    return _WeightedAucPlan(
        query_is_negative=query_is_negative,
        query_by_row=sparse.csr_matrix(
            (np.ones(int(has_row.sum()), dtype=dtype), (query_row[has_row], query_units[has_row])),
            shape=shape,
        ),
        reference_steps=sparse.csr_matrix(
            (step_size.astype(dtype), (np.searchsorted(step_rows, step_group), step_unit)),
            shape=shape,
        ),
        query_per_unit=np.bincount(query_units, minlength=n_units).astype(dtype),
        reference_per_unit=np.bincount(reference_units, minlength=n_units).astype(dtype),
    )


def _cumulative_sum_down_rows(matrix: np.ndarray, block: int = 32) -> None:
    """In place, the cumulative sum along axis 0 of a C-ordered (K, B) array (same as np.cumsum).

    np.cumsum along axis 0 runs one chain of dependent additions per column; adding whole rows
    instead keeps the B columns in SIMD lanes (5x faster here). Rows go in blocks: prefix sums
    inside every block at once (block - 1 row additions), then each block adds the total of the
    blocks before it, then the rows after the last full block.
    """
    n_full_rows = matrix.shape[0] // block * block
    blocks = matrix[:n_full_rows].reshape(-1, block, matrix.shape[1])
    for row in range(1, block):
        blocks[:, row] += blocks[:, row - 1]
    if blocks.shape[0] > 1:
        totals_so_far = np.cumsum(blocks[:, -1], axis=0)  # short: one row per block
        blocks[1:] += totals_so_far[:-1, None, :]
    tail = matrix[n_full_rows:]
    if n_full_rows and tail.shape[0]:
        tail[0] += matrix[n_full_rows - 1]
    for row in range(1, tail.shape[0]):
        tail[row] += tail[row - 1]


def _weighted_aucs(plan: _WeightedAucPlan, unit_weights: np.ndarray) -> np.ndarray:
    """AUC under each column of (units, B) weights; NaN where a class has zero total weight."""
    query_weight = plan.query_by_row @ unit_weights  # (R, B)
    reference_below = plan.reference_steps @ unit_weights
    _cumulative_sum_down_rows(reference_below)
    # float64 accumulation: the per-row products are exact, their sum need not be in float32.
    pairs_query_above = np.einsum("rb,rb->b", query_weight, reference_below, dtype=np.float64)
    total_pairs = (plan.query_per_unit @ unit_weights).astype(np.float64) * (
        plan.reference_per_unit @ unit_weights
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = pairs_query_above / total_pairs
    fraction[total_pairs == 0] = np.nan
    return 1.0 - fraction if plan.query_is_negative else fraction


def weighted_roc_auc(y: ArrayLike, p: ArrayLike, weights: ArrayLike) -> float | np.ndarray:
    """ROC AUC with non-negative image weights: one (n,) weighting, or many as a (B, n) matrix.

    AUC_w = sum_{i pos, j neg} w_i w_j ([s_i > s_j] + [s_i = s_j] / 2) / (sum_pos w_i sum_neg w_j),
    the Mann-Whitney statistic with each image counted w times (sklearn's `sample_weight`).
    Returns a float for (n,) weights and a (B,) array for (B, n); NaN where a class has no weight.
    """
    labels = np.asarray(y)
    weight_matrix = np.asarray(weights, dtype=np.float64)
    one_weighting = weight_matrix.ndim == 1
    weight_matrix = np.atleast_2d(weight_matrix)
    if weight_matrix.ndim != 2 or weight_matrix.shape[1] != labels.shape[0]:
        raise ValueError(
            f"weights must be (n,) or (B, n) with n = len(y) = {labels.shape[0]}; "
            f"got shape {np.shape(weights)}"
        )
    if not (np.isfinite(weight_matrix).all() and (weight_matrix >= 0).all()):
        raise ValueError("weights must be finite and non-negative")
    known_labels, scores = _known_labels_and_scores(y, p)
    weight_matrix = weight_matrix[:, labels != UNKNOWN]
    units = np.arange(known_labels.size)
    plan = _weighted_auc_plan(known_labels, scores, units, known_labels.size, np.float64)
    if plan is None:
        aucs = np.full(weight_matrix.shape[0], math.nan)
    else:
        aucs = _weighted_aucs(plan, np.ascontiguousarray(weight_matrix.T))
    return float(aucs[0]) if one_weighting else aucs


# ----------------------------------------------------------------------------------------------
# Patient bootstrap
# ----------------------------------------------------------------------------------------------


def _draw_patient_counts(rng: np.random.Generator, n_resamples: int, n_patients: int) -> np.ndarray:
    """(n_resamples, n_patients) times each patient is drawn, n_patients draws with replacement."""
    draws = rng.integers(0, n_patients, size=(n_resamples, n_patients))
    offsets = (np.arange(n_resamples) * n_patients)[:, None]
    flat_counts = np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_patients)
    return flat_counts.reshape(n_resamples, n_patients)


def _checked_patient_counts(
    patient_counts: ArrayLike | None, n_resamples: int, n_patients: int
) -> np.ndarray | None:
    """The caller's (B, n_patients) draw counts, checked; None when draws are to be random."""
    if patient_counts is None:
        if n_resamples < 1:
            raise ValueError(f"n_resamples must be at least 1; got {n_resamples}")
        return None
    counts = np.asarray(patient_counts)
    if counts.ndim != 2 or counts.shape[1] != n_patients:
        raise ValueError(f"patient_counts must be (B, n_patients={n_patients}); got {counts.shape}")
    if (counts < 0).any():
        raise ValueError("patient_counts must be non-negative")
    return counts


def bootstrap_auc(
    Y: ArrayLike,
    P: ArrayLike,
    patients: ArrayLike,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    *,
    macro_columns: Sequence[int] | None = None,
    patient_counts: ArrayLike | None = None,
) -> dict:
    """Percentile-bootstrap confidence intervals for per-class and macro AUCs, resampling patients.

    Images of one patient are correlated, so the patient is the resampling unit (Efron & Tibshirani
    1993, percentile method): each resample draws as many patients as there are, with replacement,
    and an image's weight is the number of times its patient was drawn; the AUC of the resample is
    the weighted Mann-Whitney statistic (see `weighted_roc_auc`), computed for all resamples of a
    chunk at once. A resample in which a class has no positive or no negative weight is dropped for
    that class. The macro AUC of a resample is the mean over `macro_columns` (default: all columns)
    whose point AUC is defined, and a resample is dropped for the macro if any of them is undefined
    in it, so every macro value averages the same classes.

    Y, P: (n,) or (n, k) labels (0/1/UNKNOWN) and scores; patients: (n,) patient ids of any
    sortable type. Same inputs and seed give the same intervals. `patient_counts`, a
    (B, n_patients) matrix of how many times each patient (in np.unique(patients) order) is drawn,
    replaces the random draws (for tests, or to reuse one set of resamples across models).

    Returns a dict: "auc", "lower", "upper" ((k,) point AUCs and the alpha/2, 1 - alpha/2
    percentiles), "n_resamples_used" ((k,) int), "macro_auc", "macro_lower", "macro_upper",
    "macro_n_resamples_used", "resampled_auc" ((B, k), NaN where dropped), "resampled_macro_auc"
    ((B,)), "n_resamples", "n_patients", "alpha", "seed".
    """
    labels, scores = _matrices(Y, P)
    patient_ids = np.asarray(patients)
    if patient_ids.shape != (labels.shape[0],):
        raise ValueError(
            f"patients must be 1-D with one id per image ({labels.shape[0]}); "
            f"got shape {patient_ids.shape}"
        )
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    _, patient_index = np.unique(patient_ids, return_inverse=True)
    patient_index = patient_index.ravel()
    n_patients = int(patient_index.max()) + 1 if patient_index.size else 0
    n_classes = labels.shape[1]
    macro_set = list(range(n_classes)) if macro_columns is None else list(macro_columns)
    if any(not 0 <= column < n_classes for column in macro_set):
        raise ValueError(f"macro_columns must index the {n_classes} columns; got {macro_set}")

    fixed_counts = _checked_patient_counts(patient_counts, n_resamples, n_patients)
    if fixed_counts is not None:
        n_resamples = fixed_counts.shape[0]

    point_auc = np.empty(n_classes)
    class_inputs = []
    for j in range(n_classes):
        known = labels[:, j] != UNKNOWN
        known_labels, known_scores = _known_labels_and_scores(
            labels[:, j], scores[:, j], y_name=f"Y[:, {j}]", p_name=f"P[:, {j}]"
        )
        point_auc[j] = roc_auc(known_labels, known_scores)
        class_inputs.append((known_labels, known_scores, patient_index[known]))
    # Plans are built once per (class, dtype); float64 is only needed for enormous resamples.
    plans: dict[tuple[int, type], _WeightedAucPlan | None] = {}

    images_per_patient = np.bincount(patient_index, minlength=n_patients)
    rng = np.random.default_rng(seed)
    resampled = np.full((n_resamples, n_classes), math.nan)
    for start in range(0, n_resamples, RESAMPLES_PER_CHUNK):
        stop = min(start + RESAMPLES_PER_CHUNK, n_resamples)
        if fixed_counts is None:
            counts = _draw_patient_counts(rng, stop - start, n_patients)
        else:
            counts = fixed_counts[start:stop]
        # Weight sums stay exact in float32 unless a resample holds more than 2**23 images.
        exact_in_float32 = (counts @ images_per_patient).max() < _FLOAT32_EXACT_LIMIT
        dtype = np.float32 if exact_in_float32 else np.float64
        weights_by_patient = np.ascontiguousarray(counts.T, dtype=dtype)  # (patients, chunk)
        for j in range(n_classes):
            if (j, dtype) not in plans:
                plans[j, dtype] = _weighted_auc_plan(*class_inputs[j], n_patients, dtype)
            plan = plans[j, dtype]
            if plan is not None:
                resampled[start:stop, j] = _weighted_aucs(plan, weights_by_patient)

    macro_defined = [j for j in macro_set if not math.isnan(point_auc[j])]
    if macro_defined:
        # NaN in any averaged class makes the resample's macro NaN, i.e. dropped.
        resampled_macro = resampled[:, macro_defined].mean(axis=1)
    else:
        resampled_macro = np.full(n_resamples, math.nan)

    lower, upper, used = np.full(n_classes, math.nan), np.full(n_classes, math.nan), []
    for j in range(n_classes):
        lower[j], upper[j], n_used = _percentile_interval(resampled[:, j], alpha)
        used.append(n_used)
    macro_lower, macro_upper, macro_used = _percentile_interval(resampled_macro, alpha)
    return {
        "auc": point_auc,
        "lower": lower,
        "upper": upper,
        "n_resamples_used": np.array(used, dtype=np.int64),
        "macro_auc": float(point_auc[macro_defined].mean()) if macro_defined else math.nan,
        "macro_lower": macro_lower,
        "macro_upper": macro_upper,
        "macro_n_resamples_used": macro_used,
        "resampled_auc": resampled,
        "resampled_macro_auc": resampled_macro,
        "n_resamples": n_resamples,
        "n_patients": n_patients,
        "alpha": alpha,
        "seed": seed,
    }


def _percentile_interval(values: np.ndarray, alpha: float) -> tuple[float, float, int]:
    """(alpha/2 and 1 - alpha/2 percentiles of the non-NaN values, how many there were)."""
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return math.nan, math.nan, 0
    low, high = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high), int(finite.size)


# ----------------------------------------------------------------------------------------------
# DeLong
# ----------------------------------------------------------------------------------------------


def delong_covariance(y: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of r scorers on the same images and DeLong's (1988) estimate of their covariance.

    scores: (n,) or (n, r). Fast algorithm of Sun & Xu (2014): with m positives X and n negatives
    Z, midranks T_xz in the pooled sample, T_x within positives and T_z within negatives give the
    structural components V10(X_i) = (T_xz(X_i) - T_x(X_i)) / n (the fraction of negatives below
    X_i, ties 1/2) and V01(Z_j) = 1 - (T_xz(Z_j) - T_z(Z_j)) / m (the fraction of positives above
    Z_j); AUC = mean V10 and Cov = S10 / m + S01 / n with S10, S01 the sample covariance matrices
    (ddof=1) of the components across scorers. Covariance is NaN with fewer than 2 of a class.
    Returns ((r,) AUCs, (r, r) covariance).
    """
    labels = np.asarray(y)
    score_matrix = _as_matrix(np.asarray(scores, dtype=np.float64), "scores")
    if score_matrix.shape[0] != labels.shape[0]:
        raise ValueError(
            f"scores must have one row per label ({labels.shape[0]}); got {score_matrix.shape}"
        )
    known = labels != UNKNOWN
    known_labels, _ = _known_labels_and_scores(labels, score_matrix[:, 0], p_name="scores")
    for column in range(1, score_matrix.shape[1]):
        _known_labels_and_scores(labels, score_matrix[:, column], p_name=f"scores[:, {column}]")
    n_scorers = score_matrix.shape[1]
    positives = score_matrix[known][known_labels == 1]
    negatives = score_matrix[known][known_labels == 0]
    n_pos, n_neg = positives.shape[0], negatives.shape[0]
    if n_pos == 0 or n_neg == 0:
        return np.full(n_scorers, math.nan), np.full((n_scorers, n_scorers), math.nan)

    v10 = np.empty((n_scorers, n_pos))
    v01 = np.empty((n_scorers, n_neg))
    for r in range(n_scorers):
        pooled_ranks = midranks(np.concatenate([positives[:, r], negatives[:, r]]))
        v10[r] = (pooled_ranks[:n_pos] - midranks(positives[:, r])) / n_neg
        v01[r] = 1.0 - (pooled_ranks[n_pos:] - midranks(negatives[:, r])) / n_pos
    aucs = v10.mean(axis=1)
    if n_pos < 2 or n_neg < 2:
        return aucs, np.full((n_scorers, n_scorers), math.nan)
    s10 = np.atleast_2d(np.cov(v10, ddof=1))
    s01 = np.atleast_2d(np.cov(v01, ddof=1))
    return aucs, s10 / n_pos + s01 / n_neg


def _normal_quantile(alpha: float) -> float:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    return NormalDist().inv_cdf(1.0 - alpha / 2.0)


def delong_auc_ci(y: ArrayLike, p: ArrayLike, alpha: float = 0.05) -> dict[str, float]:
    """One AUC with its DeLong (1988) variance and Wald interval AUC +- z_{1-alpha/2} SE.

    The interval is clipped to [0, 1]. Returns auc, variance, se, ci_low, ci_high.
    """
    z_critical = _normal_quantile(alpha)
    aucs, covariance = delong_covariance(y, p)
    auc, variance = float(aucs[0]), float(covariance[0, 0])
    se = math.sqrt(variance) if variance >= 0 else math.nan
    return {
        "auc": auc,
        "variance": variance,
        "se": se,
        "ci_low": max(0.0, auc - z_critical * se) if not math.isnan(se) else math.nan,
        "ci_high": min(1.0, auc + z_critical * se) if not math.isnan(se) else math.nan,
    }


def delong_test(
    y: ArrayLike, p1: ArrayLike, p2: ArrayLike, alpha: float = 0.05
) -> dict[str, float]:
    """DeLong's (1988) test of AUC(p1) = AUC(p2) for two scorers of the same images, two-sided.

    diff = auc1 - auc2, se = sqrt(Var1 + Var2 - 2 Cov12) from `delong_covariance` (Sun & Xu 2014),
    z = diff / se, p_value = 2 (1 - Phi(|z|)), and the Wald interval diff +- z_{1-alpha/2} se.
    When se is 0 (e.g. identical scores) z is 0 with p_value 1 if diff is 0, else +-inf with 0.
    Returns auc1, auc2, diff, se, z, p_value, ci_low, ci_high.
    """
    z_critical = _normal_quantile(alpha)
    first, second = np.asarray(p1, dtype=np.float64), np.asarray(p2, dtype=np.float64)
    if first.ndim != 1 or first.shape != second.shape:
        raise ValueError(
            f"p1 and p2 must be 1-D of the same length; got {first.shape} and {second.shape}"
        )
    aucs, covariance = delong_covariance(y, np.column_stack([first, second]))
    diff = float(aucs[0] - aucs[1])
    variance = float(covariance[0, 0] + covariance[1, 1] - 2.0 * covariance[0, 1])
    # Rounding can leave a tiny negative variance for (near-)identical scorers.
    se = math.sqrt(max(variance, 0.0)) if not math.isnan(variance) else math.nan
    if math.isnan(se) or math.isnan(diff):
        z = p_value = math.nan
    elif se == 0.0:
        z = 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
        p_value = 1.0 if diff == 0.0 else 0.0
    else:
        z = diff / se
        p_value = math.erfc(abs(z) / math.sqrt(2.0))  # = 2 (1 - Phi(|z|))
    return {
        "auc1": float(aucs[0]),
        "auc2": float(aucs[1]),
        "diff": diff,
        "se": se,
        "z": z,
        "p_value": p_value,
        "ci_low": diff - z_critical * se,
        "ci_high": diff + z_critical * se,
    }


def holm_correction(pvalues: ArrayLike) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, in the input order.

    With the m non-NaN p-values sorted p_(1) <= ... <= p_(m), the adjusted value of p_(i) is
    max_{j <= i} min(1, (m - j + 1) p_(j)): monotone in p and capped at 1. NaN entries stay NaN
    and do not count towards m. Reject at level alpha where the adjusted value is <= alpha.
    """
    values = np.asarray(pvalues, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"pvalues must be 1-D; got shape {values.shape}")
    present = np.flatnonzero(~np.isnan(values))
    if ((values[present] < 0) | (values[present] > 1)).any():
        raise ValueError("pvalues must lie in [0, 1] (NaN allowed)")
    adjusted = np.full(values.shape, math.nan)
    order = present[np.argsort(values[present], kind="mergesort")]
    n_tests = order.size
    multipliers = n_tests - np.arange(n_tests)  # m, m - 1, ..., 1
    stepped = np.minimum(1.0, np.maximum.accumulate(multipliers * values[order]))
    adjusted[order] = stepped
    return adjusted


# ----------------------------------------------------------------------------------------------
# Subgroups
# ----------------------------------------------------------------------------------------------


def age_band(ages: ArrayLike) -> np.ndarray:
    """Age band label per age: AGE_BANDS ("0-17", "18-39", "40-59", "60-79", "80+").

    Missing, negative or implausible (> MAX_PLAUSIBLE_AGE) ages get AGE_UNKNOWN. Returns an object
    array of strings, ready to be a DataFrame column.
    """
    values = np.asarray(ages, dtype=np.float64)
    bands = np.array(AGE_BANDS, dtype=object)
    index = np.searchsorted(np.array(AGE_BAND_LOWER_EDGES), values, side="right") - 1
    plausible = np.isfinite(values) & (values >= 0) & (values <= MAX_PLAUSIBLE_AGE)
    labels = np.full(values.shape, AGE_UNKNOWN, dtype=object)
    labels[plausible] = bands[index[plausible]]
    return labels


def subgroup_table(
    frame: pd.DataFrame,
    group_column: str,
    label_columns: Sequence[str],
    prob_columns: Sequence[str],
) -> pd.DataFrame:
    """AUC per value of `group_column` per output, with the counts that say how far to trust it.

    One row per (subgroup value, output) with columns [group_column, "output", "n_images",
    "n_positive", "auc"]; "output" is the label column's name, "n_images" counts images whose label
    for that output is known. Missing group values form their own group (NaN) rather than vanish.
    """
    if len(label_columns) != len(prob_columns):
        raise ValueError(
            f"label_columns and prob_columns must pair up; got {len(label_columns)} and "
            f"{len(prob_columns)}"
        )
    missing = [c for c in (group_column, *label_columns, *prob_columns) if c not in frame.columns]
    if missing:
        raise ValueError(f"frame has no column(s) {missing}; it has {list(frame.columns)}")
    rows = []
    for group_value, group in frame.groupby(group_column, dropna=False, sort=True):
        for label_column, prob_column in zip(label_columns, prob_columns, strict=True):
            labels = group[label_column].to_numpy()
            known = labels != UNKNOWN
            rows.append(
                {
                    group_column: group_value,
                    "output": label_column,
                    "n_images": int(known.sum()),
                    "n_positive": int((labels[known] == 1).sum()),
                    "auc": roc_auc(labels, group[prob_column].to_numpy()),
                }
            )
    return pd.DataFrame(rows, columns=[group_column, "output", "n_images", "n_positive", "auc"])


def choose_thresholds_for(probs: np.ndarray, labels: np.ndarray, method: str) -> list[float | None]:
    """Per-output thresholds from validation; None where an output has no usable labels."""
    thresholds: list[float | None] = []
    for column in range(probs.shape[1]):
        known = (labels[:, column] >= 0) & ~np.isnan(probs[:, column])
        y = labels[known, column]
        if known.sum() == 0 or y.min() == y.max():
            thresholds.append(None)
        else:
            thresholds.append(
                float(choose_thresholds(y[:, None], probs[known, column][:, None], method)[0])
            )
    return thresholds
