"""Calibration of predicted probabilities: Brier score, expected calibration error (ECE) with its
reliability table, patient-bootstrap intervals, and temperature scaling. Pure numpy/scipy.

Conventions (those of `metrics`):

- Labels are 0, 1 or ``labels.UNKNOWN`` (-1); unknown entries are dropped column by column and
  their probabilities may be anything (NaN included). Known entries need finite probabilities in
  [0, 1].
- Matrices are (n images, k outputs); a 1-D array is one output.
- A column whose probabilities are all NaN (an output the model does not produce) or that has no
  known label is "unavailable": its numbers are NaN (None in JSON), never an exception.
- Undefined values are NaN.

Binning (`expected_calibration_error`), exactly:

- strategy="uniform": edges = np.linspace(0, 1, n_bins + 1), equal-width bins on [0, 1].
- strategy="quantile": inner edges = np.quantile(p, b / n_bins) for b = 1 .. n_bins - 1 over the
  known probabilities (numpy's default linear interpolation, the same as sklearn's np.percentile),
  outer edges 0 and 1, so the bins partition [0, 1]. Tied probabilities can make bins unequal or
  empty.
- Membership, for both: bin b holds edges[b] <= p < edges[b + 1]; the last bin is closed, it also
  holds p = 1 (np.histogram's rule). sklearn's calibration_curve puts a p lying exactly on an
  inner edge in the lower bin instead; everywhere else the two agree.
- ECE = sum_b (n_b / n) |o_b - m_b| with n_b the images in bin b, o_b their observed frequency of
  positives and m_b their mean predicted probability: the gaps weighted by bin count, which is
  |sum over the bin of (y - p)| / n summed over bins. Empty bins contribute nothing.

ECE is biased upward: even a perfectly calibrated scorer has ECE > 0 from sampling noise, about
sum_b sqrt(2 V_b / pi) / n with V_b = sum over bin b of p (1 - p), and more with more bins.

Temperature scaling (Guo et al. 2017, per output): p_T = sigmoid(z / T) for a logit z;
T > 1 softens over-confident outputs, T = 1 changes nothing. `fit_temperature` minimises the
mean binary cross-entropy (NLL) on validation; `apply_temperature` applies stored temperatures,
None meaning "leave this output as it is". Temperature scaling is monotone, so AUCs and ranks are
unchanged, but a threshold chosen on unscaled probabilities t corresponds to sigmoid(logit(t) / T)
on scaled ones.

Sources: Brier (1950); Naeini, Cooper & Hauskrecht (2015) and Guo, Pleiss, Sun & Weinberger (2017)
for ECE and temperature scaling; Efron & Tibshirani (1993) for the percentile bootstrap,
resampling patients.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sparse
from numpy.typing import ArrayLike
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit

from chexvision_lib.core.labels import OUTPUTS, UNKNOWN
from chexvision_lib.evaluation.metrics import (
    RESAMPLES_PER_CHUNK,
    _as_matrix,
    _checked_patient_counts,
    _draw_patient_counts,
    _known_labels_and_scores,
    _matrices,
    _percentile_interval,
)

BinStrategy = Literal["uniform", "quantile"]
BIN_STRATEGIES: tuple[str, ...] = ("uniform", "quantile")
DEFAULT_BINS = 15
Inputs = Literal["probabilities", "logits"]
INPUTS: tuple[str, ...] = ("probabilities", "logits")
# Probabilities are clipped to [EPS, 1 - EPS] before taking logits. A float32 probability has a
# resolution of 6e-8 just below 1, so it says nothing about logits beyond about +-16 anyway; pass
# logits (inputs="logits") where they are at hand.
PROBABILITY_EPS = 1e-7
# Temperatures searched, on a log scale; a fit that ends on a bound returns the bound.
TEMPERATURE_BOUNDS = (0.01, 100.0)

BINNING_RULES = {
    "uniform": "equal-width bins on [0, 1] (edges np.linspace(0, 1, n_bins + 1))",
    "quantile": "equal-count bins (inner edges at the quantiles of the probabilities, outer 0, 1)",
}
MEMBERSHIP_RULE = "bin b holds edges[b] <= p < edges[b+1]; the last bin also holds p = 1"
ECE_RULE = "sum over bins of (bin count / n) * |observed frequency - mean predicted probability|"


# ----------------------------------------------------------------------------------------------
# Checking
# ----------------------------------------------------------------------------------------------


def _known_probabilities(
    y: ArrayLike, p: ArrayLike, *, y_name: str = "y", p_name: str = "p"
) -> tuple[np.ndarray, np.ndarray]:
    """(labels in {0, 1}, probabilities) of the known entries; probabilities must be in [0, 1]."""
    labels, probs = _known_labels_and_scores(y, p, y_name=y_name, p_name=p_name)
    if probs.size and (probs.min() < 0.0 or probs.max() > 1.0):
        raise ValueError(f"{p_name} must be probabilities in [0, 1] where {y_name} is known")
    return labels, probs


def _check_binning(n_bins: int, strategy: str) -> None:
    if strategy not in BIN_STRATEGIES:
        raise ValueError(f"strategy must be one of {BIN_STRATEGIES}; got {strategy!r}")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")


def _check_labels(labels: np.ndarray, name: str) -> None:
    valid = np.isin(labels, (0, 1, UNKNOWN))
    if not valid.all():
        bad = labels[~valid][0]
        raise ValueError(f"{name} must hold 0, 1 or {UNKNOWN} (unknown); found {bad!r}")


def _column_available(labels: np.ndarray, scores: np.ndarray) -> bool:
    """False for an output the model does not produce (all NaN) or one without known labels."""
    return bool((labels != UNKNOWN).any()) and not bool(np.isnan(scores).all())


def json_safe(value: object) -> object:
    """A copy that json.dumps writes as strict JSON: NaN and +-inf -> None, numpy -> Python,
    arrays and tuples -> lists, dataclass tables via their `as_dict`."""
    if isinstance(value, ReliabilityTable):
        return value.as_dict()
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------------------------
# Brier score and ECE
# ----------------------------------------------------------------------------------------------


def brier_score(y: ArrayLike, p: ArrayLike) -> float:
    """Mean squared difference between probability and label, (1/n) sum (p - y)^2, over the
    known labels (sklearn.metrics.brier_score_loss); NaN when no label is known."""
    labels, probs = _known_probabilities(y, p)
    if labels.size == 0:
        return math.nan
    return float(np.mean((probs - labels) ** 2))


@dataclass(frozen=True)
class ReliabilityTable:
    """The bins of a reliability diagram: `edges` (n_bins + 1,); per bin `count` (int),
    `mean_predicted` and `observed_frequency` (NaN for an empty bin). See the module docstring
    for the binning rule."""

    strategy: str
    edges: np.ndarray
    count: np.ndarray
    mean_predicted: np.ndarray
    observed_frequency: np.ndarray

    @property
    def n_bins(self) -> int:
        return int(self.count.size)

    def as_dict(self) -> dict:
        """JSON-safe lists (None for empty bins' means)."""
        return {
            "strategy": self.strategy,
            "edges": json_safe(self.edges),
            "count": [int(c) for c in self.count],
            "mean_predicted": json_safe(self.mean_predicted),
            "observed_frequency": json_safe(self.observed_frequency),
        }


def bin_edges(
    p: ArrayLike, n_bins: int = DEFAULT_BINS, strategy: BinStrategy = "uniform"
) -> np.ndarray:
    """(n_bins + 1,) edges for these probabilities (only "quantile" looks at them)."""
    _check_binning(n_bins, strategy)
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    probs = np.asarray(p, dtype=np.float64)
    edges = np.empty(n_bins + 1)
    edges[0], edges[-1] = 0.0, 1.0
    if n_bins > 1:
        inner = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
        edges[1:-1] = np.quantile(probs, inner) if probs.size else inner
    return edges


def bin_index(p: ArrayLike, edges: np.ndarray) -> np.ndarray:
    """Bin of each probability: b with edges[b] <= p < edges[b + 1], the last bin closed."""
    return np.searchsorted(np.asarray(edges)[1:-1], np.asarray(p, dtype=np.float64), side="right")


def expected_calibration_error(
    y: ArrayLike,
    p: ArrayLike,
    n_bins: int = DEFAULT_BINS,
    strategy: BinStrategy = "uniform",
) -> tuple[float, ReliabilityTable]:
    """(ECE, its reliability table) over the known labels; ECE is NaN when none is known.

    ECE = sum_b (n_b / n) |o_b - m_b|, with the bins of the module docstring (by default 15
    equal-width bins on [0, 1], [e_b, e_b+1) with the last one closed).
    """
    _check_binning(n_bins, strategy)
    labels, probs = _known_probabilities(y, p)
    edges = bin_edges(probs, n_bins, strategy)
    bins = bin_index(probs, edges)
    count = np.bincount(bins, minlength=n_bins)
    predicted_sum = np.bincount(bins, weights=probs, minlength=n_bins)
    positive_sum = np.bincount(bins, weights=labels.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.where(count > 0, predicted_sum / count, math.nan)
        observed = np.where(count > 0, positive_sum / count, math.nan)
    table = ReliabilityTable(strategy, edges, count, mean_predicted, observed)
    if labels.size == 0:
        return math.nan, table
    ece = float(np.abs(positive_sum - predicted_sum).sum() / labels.size)
    return ece, table


# ----------------------------------------------------------------------------------------------
# Patient bootstrap
# ----------------------------------------------------------------------------------------------


def _patient_index(patients: ArrayLike, n_images: int) -> tuple[np.ndarray, int]:
    patient_ids = np.asarray(patients)
    if patient_ids.shape != (n_images,):
        raise ValueError(
            f"patients must be 1-D with one id per image ({n_images}); "
            f"got shape {patient_ids.shape}"
        )
    _, index = np.unique(patient_ids, return_inverse=True)
    index = index.ravel()
    return index, int(index.max()) + 1 if index.size else 0


def patient_count_chunks(
    n_patients: int, n_resamples: int, seed: int, patient_counts: ArrayLike | None = None
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, counts) chunks of (chunk, n_patients) patient draw counts, B in all.

    The draws are those of `metrics.bootstrap_auc` (same chunking, same generator), so AUC,
    calibration and operating-point intervals computed with one seed on one split share their
    resamples. `patient_counts` (B, n_patients) replaces the random draws. Arguments are checked
    here, before the first chunk is asked for.
    """
    fixed = _checked_patient_counts(patient_counts, n_resamples, int(n_patients))
    total = n_resamples if fixed is None else fixed.shape[0]

    def chunks() -> Iterator[tuple[int, int, np.ndarray]]:
        rng = np.random.default_rng(seed)
        for start in range(0, total, RESAMPLES_PER_CHUNK):
            stop = min(start + RESAMPLES_PER_CHUNK, total)
            if fixed is None:
                yield start, stop, _draw_patient_counts(rng, stop - start, int(n_patients))
            else:
                yield start, stop, fixed[start:stop]

    return chunks()


def calibration_with_ci(
    Y: ArrayLike,
    P: ArrayLike,
    patients: ArrayLike,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    *,
    n_bins: int = DEFAULT_BINS,
    strategy: BinStrategy = "uniform",
    patient_counts: ArrayLike | None = None,
) -> dict:
    """Brier score and ECE per column with percentile-bootstrap intervals, resampling patients.

    Each resample draws as many patients as there are, with replacement (the draws of
    `metrics.bootstrap_auc` for the same patients and seed); an image counts as many times as its
    patient was drawn. The bins are fixed at those of the full sample (for "uniform" they are
    fixed anyway; for "quantile" the interval is that of the ECE under this binning). Everything
    reduces to per-patient sums of (y - p) per bin, of (p - y)^2 and of image counts, so all
    resamples of a chunk cost one sparse matrix product for all columns together. A resample in
    which no image of a column is drawn is dropped for that column.

    ECE is biased upward (module docstring) and a resample's ECE more so, so for a well
    calibrated output the interval sits above the point estimate and may even exclude it: read it
    as "no worse than the upper bound", not as an interval around a true ECE of 0. The Brier
    score has no such problem.

    Y, P: (n,) or (n, k) labels (0/1/UNKNOWN) and probabilities; patients: (n,) ids of any sortable
    type. An unavailable column (all probabilities NaN, or no known label) gets NaN everywhere and
    a None table. `patient_counts` (B, n_patients), patients in np.unique order, replaces the
    random draws.

    Returns a dict: "brier", "brier_lower", "brier_upper", "ece", "ece_lower", "ece_upper" (k,);
    "n" (k,) known images; "n_resamples_used" (k,) int; "tables" (k,) list of ReliabilityTable or
    None; "resampled_brier", "resampled_ece" (B, k), NaN where dropped; and "n_resamples",
    "n_patients", "n_bins", "strategy", "alpha", "seed".
    """
    labels, scores = _matrices(Y, P)
    _check_binning(n_bins, strategy)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    patient_index, n_patients = _patient_index(patients, labels.shape[0])
    n_columns = labels.shape[1]

    # Per-patient sums: (y - p) per (column, bin), then per column the image count and the
    # squared error. Column j's bins are columns j * n_bins ... of `gap_sums`.
    gap_sums = np.zeros((n_patients, n_columns * n_bins))
    image_counts = np.zeros((n_patients, n_columns))
    squared_errors = np.zeros((n_patients, n_columns))
    brier, ece, n_known = np.full(n_columns, math.nan), np.full(n_columns, math.nan), []
    tables: list[ReliabilityTable | None] = []
    for j in range(n_columns):
        column_scores = scores[:, j].astype(np.float64)
        if not _column_available(labels[:, j], column_scores):
            _check_labels(labels[:, j], f"Y[:, {j}]")
            tables.append(None)
            n_known.append(int((labels[:, j] != UNKNOWN).sum()))
            continue
        y, p = _known_probabilities(
            labels[:, j], column_scores, y_name=f"Y[:, {j}]", p_name=f"P[:, {j}]"
        )
        owners = patient_index[labels[:, j] != UNKNOWN]
        ece[j], table = expected_calibration_error(y, p, n_bins, strategy)
        brier[j] = brier_score(y, p)
        tables.append(table)
        n_known.append(int(y.size))
        bins = bin_index(p, table.edges)
        gap_sums[:, j * n_bins : (j + 1) * n_bins] = np.bincount(
            owners * n_bins + bins, weights=y - p, minlength=n_patients * n_bins
        ).reshape(n_patients, n_bins)
        image_counts[:, j] = np.bincount(owners, minlength=n_patients)
        squared_errors[:, j] = np.bincount(owners, weights=(p - y) ** 2, minlength=n_patients)
    # Sparse: a patient's images fill few bins. (sums columns, patients) times (patients, chunk)
    # is several times faster than the dense product, for 2,797 patients as for 25,596.
    sums = sparse.csr_matrix(np.hstack([gap_sums, image_counts, squared_errors]).T)

    resampled_brier, resampled_ece = [], []
    for _, _, counts in patient_count_chunks(n_patients, n_resamples, seed, patient_counts):
        by_patient = np.ascontiguousarray(counts.T, dtype=np.float64)
        totals = (sums @ by_patient).T  # (chunk, columns of `sums`)
        gaps = totals[:, : n_columns * n_bins].reshape(-1, n_columns, n_bins)
        weight = totals[:, n_columns * n_bins : n_columns * (n_bins + 1)]
        squared = totals[:, n_columns * (n_bins + 1) :]
        with np.errstate(invalid="ignore", divide="ignore"):
            resampled_ece.append(np.where(weight > 0, np.abs(gaps).sum(axis=2) / weight, np.nan))
            resampled_brier.append(np.where(weight > 0, squared / weight, np.nan))
    resampled_brier = np.vstack(resampled_brier)
    resampled_ece = np.vstack(resampled_ece)
    available = np.array([t is not None for t in tables])
    resampled_brier[:, ~available] = np.nan
    resampled_ece[:, ~available] = np.nan

    result = {"brier": brier, "ece": ece}
    for name, resampled in (("brier", resampled_brier), ("ece", resampled_ece)):
        intervals = [_percentile_interval(resampled[:, j], alpha) for j in range(n_columns)]
        result[f"{name}_lower"] = np.array([low for low, _, _ in intervals])
        result[f"{name}_upper"] = np.array([high for _, high, _ in intervals])
    return {
        **result,
        "n": np.array(n_known, dtype=np.int64),
        # Brier and ECE are dropped together: when no image of the column is drawn.
        "n_resamples_used": (~np.isnan(resampled_ece)).sum(axis=0).astype(np.int64),
        "tables": tables,
        "resampled_brier": resampled_brier,
        "resampled_ece": resampled_ece,
        "n_resamples": int(resampled_brier.shape[0]),
        "n_patients": n_patients,
        "n_bins": int(n_bins),
        "strategy": strategy,
        "alpha": alpha,
        "seed": seed,
    }


# ----------------------------------------------------------------------------------------------
# Temperature scaling
# ----------------------------------------------------------------------------------------------


def _check_inputs(inputs: str) -> None:
    if inputs not in INPUTS:
        raise ValueError(f"inputs must be one of {INPUTS}; got {inputs!r}")


def to_logits(probs: ArrayLike, eps: float = PROBABILITY_EPS) -> np.ndarray:
    """logit(clip(p, eps, 1 - eps)); NaN stays NaN."""
    return logit(np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0 - eps))


def _binary_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of sigmoid(z / T): mean(log(1 + e^s) - y s), s = z / T."""
    s = logits / temperature
    return float(np.mean(np.logaddexp(0.0, s) - labels * s))


def fit_temperature(
    values: ArrayLike,
    y: ArrayLike,
    *,
    inputs: Inputs = "probabilities",
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    eps: float = PROBABILITY_EPS,
) -> float | None:
    """The temperature T minimising the NLL of sigmoid(z / T) against the known labels of one
    output (fit it on validation, never on the split it is reported on).

    values: (n,) probabilities (inputs="probabilities", turned into logits after clipping to
    [eps, 1 - eps]) or logits (inputs="logits"). The NLL is convex in 1 / T (a logistic regression
    on z without intercept), hence unimodal in log T, and is minimised by bounded Brent search
    (scipy.optimize.minimize_scalar) over log T in log(bounds); a minimum at a bound (no signal,
    or inverted scores) returns the bound. Returns None where T cannot be fitted: no known label
    or a single class among them (the NLL then falls for ever towards T = 0). All logits 0 -> 1.0.
    """
    _check_inputs(inputs)
    low, high = bounds
    if not 0.0 < low < high < math.inf:
        raise ValueError(f"bounds must satisfy 0 < low < high < inf; got {bounds}")
    if inputs == "probabilities":
        labels, scores = _known_probabilities(y, values, p_name="values")
        logits = to_logits(scores, eps)
    else:
        labels, logits = _known_labels_and_scores(y, values, p_name="values")
    n_positive = int(labels.sum())
    if n_positive == 0 or n_positive == labels.size:
        return None
    if not logits.any():
        return 1.0
    targets = labels.astype(np.float64)
    result = minimize_scalar(
        lambda log_t: _binary_nll(logits, targets, math.exp(log_t)),
        bounds=(math.log(low), math.log(high)),
        method="bounded",
        options={"xatol": 1e-9},
    )
    return float(min(max(math.exp(result.x), low), high))


def fit_temperatures(
    values: ArrayLike,
    Y: ArrayLike,
    *,
    inputs: Inputs = "probabilities",
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    eps: float = PROBABILITY_EPS,
) -> list[float | None]:
    """`fit_temperature` per column of (n, k) values and labels: k floats or None (an output with
    all values NaN, no known label or one class), the shape of config.json's thresholds."""
    labels, scores = _matrices(Y, values)
    temperatures: list[float | None] = []
    for j in range(labels.shape[1]):
        column = scores[:, j].astype(np.float64)
        if not _column_available(labels[:, j], column):
            temperatures.append(None)
            continue
        temperatures.append(
            fit_temperature(column, labels[:, j], inputs=inputs, bounds=bounds, eps=eps)
        )
    return temperatures


def apply_temperature(
    values: ArrayLike,
    temperatures: float | None | Sequence[float | None],
    *,
    inputs: Inputs = "probabilities",
    eps: float = PROBABILITY_EPS,
) -> np.ndarray:
    """Temperature-scaled probabilities sigmoid(z / T), same shape as `values`.

    values: (n,) or (n, k) probabilities (clipped to [eps, 1 - eps] before the logit) or logits.
    temperatures: one T (or None) for a 1-D input or for every column, or a sequence of k, e.g.
    config.json's list. None leaves that output unchanged: probabilities are returned as they are
    (not even clipped), logits become sigmoid(z). NaN stays NaN. Temperatures must be > 0.
    """
    _check_inputs(inputs)
    array = np.asarray(values, dtype=np.float64)
    matrix = _as_matrix(array, "values")
    n_columns = matrix.shape[1]
    if temperatures is None or np.ndim(temperatures) == 0:
        per_column = [temperatures] * n_columns
    else:
        per_column = list(temperatures)
        if len(per_column) != n_columns:
            raise ValueError(
                f"temperatures must be one value or {n_columns} (one per column); "
                f"got {len(per_column)}"
            )
    scaled = np.empty_like(matrix)
    for j, temperature in enumerate(per_column):
        column = matrix[:, j]
        if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperatures must be finite and > 0 (or None); got {temperature}")
        if temperature is None:
            scaled[:, j] = column if inputs == "probabilities" else expit(column)
            continue
        logits = to_logits(column, eps) if inputs == "probabilities" else column
        scaled[:, j] = expit(logits / float(temperature))
    return scaled.reshape(array.shape)


# ----------------------------------------------------------------------------------------------
# metrics.json
# ----------------------------------------------------------------------------------------------


def _columns(ci: dict, columns: slice) -> dict:
    """The `calibration_with_ci` result of some of its columns."""
    per_column = {"brier", "brier_lower", "brier_upper", "ece", "ece_lower", "ece_upper", "n"}
    per_column |= {"n_resamples_used", "tables"}
    part = {key: value[columns] if key in per_column else value for key, value in ci.items()}
    part["resampled_brier"] = ci["resampled_brier"][:, columns]
    part["resampled_ece"] = ci["resampled_ece"][:, columns]
    return part


def _column_entries(ci: dict, j: int) -> dict:
    return {
        "brier": ci["brier"][j],
        "brier_ci95": [ci["brier_lower"][j], ci["brier_upper"][j]],
        "ece": ci["ece"][j],
        "ece_ci95": [ci["ece_lower"][j], ci["ece_upper"][j]],
        "reliability": ci["tables"][j],
    }


def column_names(names: Sequence[str] | None, n_columns: int) -> list[str]:
    """The output name of each column: `names`, or OUTPUTS when there are 15 columns."""
    if names is None:
        return (
            list(OUTPUTS)
            if n_columns == len(OUTPUTS)
            else [f"output_{j}" for j in range(n_columns)]
        )
    names = list(names)
    if len(names) != n_columns:
        raise ValueError(f"names must name the {n_columns} columns; got {len(names)}")
    return names


def calibration_summary(
    Y: ArrayLike,
    P: ArrayLike,
    patients: ArrayLike,
    *,
    names: Sequence[str] | None = None,
    temperatures: Sequence[float | None] | None = None,
    n_bins: int = DEFAULT_BINS,
    strategy: BinStrategy = "uniform",
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Calibration block for metrics.json (JSON-safe: floats, ints, None, lists, dicts).

    Y, P: (n, k) labels and unscaled probabilities (the columns of predictions.csv), patients
    (n,); names: the k output names (default: OUTPUTS when k = 15). With `temperatures` (k floats
    or None, as stored in config.json) each output with a temperature also gets "after_temperature"
    (the same numbers for apply_temperature(P, temperatures)) and "change" (after - before, with a
    paired interval: both use the same patient resamples). Unavailable outputs are left out.

    {"binning": {"strategy", "n_bins", "bins", "membership", "ece"},
     "bootstrap": {"unit": "patient", "n_resamples", "seed", "confidence": 0.95},
     "outputs": {name: {"n", "positives", "brier", "brier_ci95": [lo, hi], "ece", "ece_ci95",
                        "reliability": {"strategy", "edges", "count", "mean_predicted",
                                        "observed_frequency"},
                        "temperature": T or None,
                        "after_temperature": {same five keys}, "change": {"brier", "brier_ci95",
                        "ece", "ece_ci95"}}}}
    """
    labels, scores = _matrices(Y, P)
    n_columns = labels.shape[1]
    names = column_names(names, n_columns)
    options = {"n_bins": n_bins, "strategy": strategy, "n_resamples": n_resamples, "seed": seed}
    after = None
    if temperatures is None:
        before = calibration_with_ci(labels, scores, patients, **options)
    else:
        temperatures = list(temperatures)
        scaled = apply_temperature(scores, temperatures)
        # Before and after side by side in one pass: one set of draws, one product per chunk.
        both = calibration_with_ci(
            np.hstack([labels, labels]), np.hstack([scores, scaled]), patients, **options
        )
        before, after = _columns(both, slice(0, n_columns)), _columns(both, slice(n_columns, None))
    outputs = {}
    for j, name in enumerate(names):
        if before["tables"][j] is None:
            continue
        known = labels[:, j] != UNKNOWN
        entry = {
            "n": int(before["n"][j]),
            "positives": int((labels[known, j] == 1).sum()),
            **_column_entries(before, j),
            "temperature": None if temperatures is None else temperatures[j],
        }
        if after is not None and temperatures[j] is not None:
            entry["after_temperature"] = _column_entries(after, j)
            change = {}
            for metric in ("brier", "ece"):
                resampled = f"resampled_{metric}"
                difference = after[resampled][:, j] - before[resampled][:, j]
                low, high, _ = _percentile_interval(difference, 0.05)
                change[metric] = after[metric][j] - before[metric][j]
                change[f"{metric}_ci95"] = [low, high]
            entry["change"] = change
        outputs[name] = entry
    return json_safe(
        {
            "binning": {
                "strategy": strategy,
                "n_bins": int(n_bins),
                "bins": BINNING_RULES[strategy],
                "membership": MEMBERSHIP_RULE,
                "ece": ECE_RULE,
            },
            "bootstrap": {
                "unit": "patient",
                "n_resamples": int(before["n_resamples"]),
                "seed": seed,
                "confidence": 0.95,
            },
            "outputs": outputs,
        }
    )
