"""Figures people look at: ROC curves, confusion matrices, training curves, AUC bars, CAM grids.

Every function takes plain data read from a run folder (predictions.csv, metrics.json,
history.csv, Grad-CAM arrays), writes a PNG when `path` is given and returns the
`matplotlib.figure.Figure`, so a notebook shows it inline when it is a cell's last expression.

The figures are bare `Figure` objects, not pyplot figures: they never touch pyplot's global state
or backend, so a notebook does not show each one twice (once from pyplot, once as the returned
value) and a long loop of figures does not pile up open pyplot windows; PNGs are rendered by Agg
whatever backend is active.

Every results figure states which split it shows and carries the research-use footer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike
from sklearn.metrics import auc as area_under_curve
from sklearn.metrics import roc_curve

from chexvision_lib.core.labels import ABNORMAL, FINDINGS, OUTPUTS
from chexvision_lib.evaluation.references import CHEXNET_2017, REFERENCES

DPI = 150
FOOTER = "Research use only — not for clinical use"
# Keys of the operating points in an output's entry of metrics.json.
VALIDATION_POINT = "at_validation_threshold"
HALF_POINT = "at_0.5"
CASES = ("TP", "FP", "TN", "FN")
# Readable split names for captions; metrics.json may carry its own "split_description".
SPLIT_WORDS = {"test": "test split", "val": "validation split", "train": "training split"}
# The false-positive-rate grid on which bootstrap TPRs are compared (0.005 steps).
ROC_BAND_GRID = np.linspace(0.0, 1.0, 201)
CURVE_COLOUR = "#1f5aa6"
VALIDATION_MARKER = {"marker": "o", "color": "#d62728", "markeredgecolor": "black", "markersize": 7}
HALF_MARKER = {"marker": "s", "color": "white", "markeredgecolor": "black", "markersize": 6}
# Height kept free under the plots for two lines of small footer text, in inches.
FOOTER_INCHES = 0.45


# ----------------------------------------------------------------------------------------------
# Shared pieces
# ----------------------------------------------------------------------------------------------


def display_name(output: str) -> str:
    """The label as printed on figures ("Pleural_Thickening" -> "Pleural Thickening")."""
    return output.replace("_", " ")


def split_caption(
    split: str | None,
    n_images: int | None = None,
    n_patients: int | None = None,
    split_label: str | None = None,
) -> str:
    """'test split, n=25,596 images / 2,797 patients' (split_label replaces the split's words)."""
    words = split_label or SPLIT_WORDS.get(str(split), f"{split} split" if split else "split")
    if n_images is None:
        return words
    counts = f"n={n_images:,} images"
    if n_patients is not None:
        counts += f" / {n_patients:,} patients"
    return f"{words}, {counts}"


def _metrics_caption(metrics: dict, split_label: str | None) -> str:
    return split_caption(
        metrics.get("split"),
        metrics.get("n_images"),
        metrics.get("n_patients"),
        split_label or metrics.get("split_description"),
    )


def _new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure that keeps a strip at the bottom free for the footer."""
    figure = Figure(figsize=(width, height), layout="constrained")
    bottom = FOOTER_INCHES / height
    # rect is (left, bottom, width, height) in figure fractions.
    figure.get_layout_engine().set(rect=(0.0, bottom, 1.0, 1.0 - bottom))
    return figure


def _footer(figure: Figure, note: str = "") -> None:
    """The research-use line (bold) at the bottom and, above it, an optional note on how to read
    the figure."""
    height = figure.get_figheight()
    style = {"fontsize": 8, "color": "#444444", "va": "bottom", "ha": "left"}
    figure.text(0.01, 0.08 / height, FOOTER, fontweight="bold", **style)
    if note:
        figure.text(0.01, 0.25 / height, note, **style)


def _rate(value: float | None) -> str:
    """A rate from metrics.json to 3 decimals; 'n/a' where it is undefined (null / NaN)."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def _finish(figure: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=DPI, facecolor="white")
    return figure


def _grid(figure: Figure, n_panels: int, ncols: int) -> tuple[list[Axes], list[Axes]]:
    """(panels in reading order, unused axes of the last row)."""
    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    axes = list(np.atleast_1d(figure.subplots(nrows, ncols, squeeze=False)).ravel())
    return axes[:n_panels], axes[n_panels:]


def _known(predictions: pd.DataFrame, output: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, probabilities, row mask) of the rows where this output's label (0 or 1, not
    UNKNOWN or empty) and score exist."""
    labels = predictions[f"label_{output}"].to_numpy()
    probs = predictions[f"prob_{output}"].to_numpy(dtype=np.float64)
    known = np.isin(labels, (0, 1)) & np.isfinite(probs)
    return labels[known].astype(np.int8), probs[known], known


def plottable_outputs(predictions: pd.DataFrame) -> list[str]:
    """Outputs (in head order) with probabilities and both classes among the known labels."""
    names = []
    for name in OUTPUTS:
        if f"prob_{name}" not in predictions or f"label_{name}" not in predictions:
            continue
        labels, _, _ = _known(predictions, name)
        if labels.size and 0 < labels.sum() < labels.size:
            names.append(name)
    return names


# ----------------------------------------------------------------------------------------------
# ROC curves with patient-bootstrap bands
# ----------------------------------------------------------------------------------------------


def _patient_counts(rng: np.random.Generator, n_resamples: int, n_patients: int) -> np.ndarray:
    """(n_resamples, n_patients): how often each patient is drawn when drawing n_patients."""
    draws = rng.integers(0, n_patients, size=(n_resamples, n_patients))
    offsets = (np.arange(n_resamples) * n_patients)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_patients)
    return counts.reshape(n_resamples, n_patients)


def _cumulative_with_zero(weights: np.ndarray) -> np.ndarray:
    """Row-wise cumulative sums with a leading zero column: column k sums the first k entries."""
    out = np.zeros((weights.shape[0], weights.shape[1] + 1), dtype=weights.dtype)
    np.cumsum(weights, axis=1, out=out[:, 1:])
    return out


def _interpolate_rows(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Linear interpolation of each row's polyline (x non-decreasing from 0) at the grid points.

    At a vertical step (several points at one x) the top point is taken. All rows go through one
    searchsorted call by shifting row r's x values (all in [0, 1]) by 2 r.
    """
    n_rows, n_points = x.shape
    shift = 2.0 * np.arange(n_rows)[:, None]
    flat_x = (x + shift).ravel()
    flat_grid = (grid[None, :] + shift).ravel()
    left = np.searchsorted(flat_x, flat_grid, side="right") - 1
    left = left.reshape(n_rows, grid.size)
    left_in_row = left - (np.arange(n_rows) * n_points)[:, None]
    right = left + (left_in_row < n_points - 1)
    x0, x1 = x.ravel()[left], x.ravel()[right]
    y0, y1 = y.ravel()[left], y.ravel()[right]
    span = x1 - x0
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(span > 0, (y1 - y0) / span, 0.0)
    return y0 + slope * (grid[None, :] - x0)


def bootstrap_roc_band(
    y: ArrayLike,
    p: ArrayLike,
    patients: ArrayLike,
    fpr_grid: np.ndarray = ROC_BAND_GRID,
    n_resamples: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    resamples_per_chunk: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile band (lower, upper) of the true-positive rate at each false-positive rate.

    Patients are the resampling unit (their images are correlated): each resample draws as many
    patients as there are, with replacement, and weights each image by how often its patient was
    drawn; the weighted ROC curve is interpolated linearly on `fpr_grid` (at a vertical step,
    the top). The draws depend only on the patient ids and the seed, so the outputs of one split
    share them. Entries with label UNKNOWN or a
    non-finite score are ignored. Resamples without positives or negatives are dropped; NaN bands
    come back if none is left. Same inputs and seed give the same band.
    """
    labels = np.asarray(y)
    scores = np.asarray(p, dtype=np.float64)
    _, patient_index = np.unique(np.asarray(patients), return_inverse=True)
    patient_index = patient_index.ravel()
    if not (labels.shape == scores.shape == patient_index.shape) or labels.ndim != 1:
        raise ValueError(
            "y, p and patients must be 1-D and of equal length; got shapes "
            f"{labels.shape}, {scores.shape}, {np.asarray(patients).shape}"
        )
    n_patients = int(patient_index.max()) + 1 if patient_index.size else 0
    known = np.isin(labels, (0, 1)) & np.isfinite(scores)
    labels, scores, patient_index = labels[known], scores[known], patient_index[known]
    order = np.argsort(-scores, kind="mergesort")
    is_positive = labels[order] == 1
    sorted_scores = scores[order]
    # Only the last image of a run of tied scores is a point of the ROC curve; at that point the
    # curve has counted the first `positives_before` positives and `negatives_before` negatives.
    # The leading 0 is the curve's (0, 0) corner.
    ends_run = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    positives_before = np.concatenate([[0], np.cumsum(is_positive)[ends_run]])
    negatives_before = np.concatenate([[0], np.cumsum(~is_positive)[ends_run]])
    positive_owner = patient_index[order][is_positive]
    negative_owner = patient_index[order][~is_positive]

    rng = np.random.default_rng(seed)
    tpr_on_grid = np.full((n_resamples, fpr_grid.size), np.nan)
    for start in range(0, n_resamples, resamples_per_chunk):
        stop = min(start + resamples_per_chunk, n_resamples)
        counts = _patient_counts(rng, stop - start, n_patients).astype(np.float32)
        # Cumulative weights of positives and of negatives in score order, with a leading 0 so
        # that index k means "the first k"; integer sums are exact in float32.
        true_pos = _cumulative_with_zero(counts[:, positive_owner])[:, positives_before]
        false_pos = _cumulative_with_zero(counts[:, negative_owner])[:, negatives_before]
        total_pos, total_neg = true_pos[:, -1], false_pos[:, -1]
        usable = (total_pos > 0) & (total_neg > 0)
        if not usable.all():
            true_pos, false_pos = true_pos[usable], false_pos[usable]
            total_pos, total_neg = total_pos[usable], total_neg[usable]
        if not usable.any():
            continue
        tpr = true_pos / total_pos[:, None]
        fpr = false_pos / total_neg[:, None]
        tpr_on_grid[np.arange(start, stop)[usable]] = _interpolate_rows(fpr, tpr, fpr_grid)
    drawn = tpr_on_grid[~np.isnan(tpr_on_grid).any(axis=1)]
    if drawn.size == 0:
        return np.full(fpr_grid.size, np.nan), np.full(fpr_grid.size, np.nan)
    lower, upper = np.percentile(drawn, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return lower, upper


def _auc_title(name: str, entry: dict | None, fallback_auc: float) -> str:
    """'Effusion\\nAUC 0.863 [0.851, 0.874]' from metrics.json (our own AUC if it lacks one)."""
    if entry and entry.get("auc") is not None:
        ci = entry.get("auc_ci95") or [None, None]
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if None not in ci else ""
        return f"{display_name(name)}\nAUC {entry['auc']:.3f}{interval}"
    return f"{display_name(name)}\nAUC {fallback_auc:.3f}"


def _operating_point_label(key: str, point: dict, detailed: bool) -> str:
    """Legend text of an operating point; the detailed form adds the threshold and the rates
    (a grid's shared legend cannot: every panel has its own threshold)."""
    if key == HALF_POINT:
        words = "threshold 0.5"
    else:
        words = "validation-chosen threshold"
        if detailed:
            words += f" {point['threshold']:.3f}"
    if detailed:
        words += f"\nsensitivity {point['sensitivity']:.3f}, specificity {point['specificity']:.3f}"
    return words


def _draw_roc(
    ax: Axes,
    predictions: pd.DataFrame,
    name: str,
    entry: dict | None,
    n_resamples: int,
    seed: int,
    detailed: bool,
) -> None:
    """ROC curve, bootstrap band, chance line and the operating points of one output."""
    labels, probs, known = _known(predictions, name)
    fpr, tpr, _ = roc_curve(labels, probs)
    lower, upper = bootstrap_roc_band(
        labels, probs, predictions["patient"].to_numpy()[known], n_resamples=n_resamples, seed=seed
    )
    auc_value = float(area_under_curve(fpr, tpr))
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="chance")
    ax.fill_between(
        ROC_BAND_GRID,
        lower,
        upper,
        color=CURVE_COLOUR,
        alpha=0.22,
        lw=0,
        label="95% CI (patient bootstrap)",
    )
    curve_label = "ROC curve"
    if detailed and entry and entry.get("auc") is not None:
        curve_label += f" (AUC {entry['auc']:.3f})"
    ax.plot(fpr, tpr, color=CURVE_COLOUR, lw=1.8 if detailed else 1.3, label=curve_label)
    for key, style in ((VALIDATION_POINT, VALIDATION_MARKER), (HALF_POINT, HALF_MARKER)):
        point = (entry or {}).get(key)
        if not point or point.get("sensitivity") is None or point.get("specificity") is None:
            continue
        ax.plot(
            1.0 - point["specificity"],
            point["sensitivity"],
            ls="none",
            zorder=5,
            label=_operating_point_label(key, point, detailed),
            **style,
        )
    ax.set_title(_auc_title(name, entry, auc_value), fontsize=13 if detailed else 10)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.005)
    ax.set_aspect("equal")
    ax.grid(alpha=0.25, lw=0.5)
    n_pos = int(labels.sum())
    ax.text(
        0.97,
        0.04,
        f"{n_pos:,} positive / {labels.size:,}",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=10 if detailed else 7.5,
        color="#333333",
    )


def roc_grid(
    predictions: pd.DataFrame,
    metrics: dict,
    path: str | Path | None = None,
    n_resamples: int = 200,
    seed: int = 0,
    *,
    split_label: str | None = None,
) -> Figure:
    """One ROC panel per output (4 columns; outputs without labels or scores are skipped).

    Panel titles give the AUC and its 95% CI from metrics.json; the shaded band is the patient-
    bootstrap 95% CI of the TPR; markers are the operating points at the validation-chosen
    threshold and at 0.5. `split_label` overrides the split's description ("official test split").
    """
    names = plottable_outputs(predictions)
    if not names:
        raise ValueError(
            "predictions hold no output with probabilities and both classes among known labels; "
            "expected prob_<output> and label_<output> columns for some of " + ", ".join(OUTPUTS)
        )
    if len(names) == 1:
        # A grid of one panel is the single large figure (binary-only datasets).
        return roc_binary(
            predictions, metrics, path, n_resamples, seed, output=names[0], split_label=split_label
        )
    # One cell more than there are outputs, so that the legend always has a cell of its own.
    ncols = min(4, len(names) + 1)
    nrows = math.ceil((len(names) + 1) / ncols)
    figure = _new_figure(3.25 * ncols + 0.6, 3.35 * nrows + 1.1)
    panels, spare = _grid(figure, len(names) + 1, ncols)
    panels, spare = panels[:-1], [panels[-1], *spare]
    entries = metrics.get("outputs", {})
    for ax, name in zip(panels, names, strict=True):
        _draw_roc(ax, predictions, name, entries.get(name), n_resamples, seed, detailed=False)
    for ax in panels:
        ax.tick_params(labelsize=8)
    # One legend for all panels, gathered from every panel: an output without a validation
    # threshold has no such marker, so no single panel need hold them all.
    legend_entries: dict[str, object] = {}
    for ax in panels:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend_entries.setdefault(label, handle)
    spare[0].legend(
        list(legend_entries.values()), list(legend_entries), loc="center", fontsize=9, frameon=False
    )
    for ax in spare:
        ax.set_axis_off()
    caption = split_caption(
        metrics.get("split"),
        len(predictions),
        predictions["patient"].nunique(),
        split_label or metrics.get("split_description"),
    )
    figure.suptitle(f"ROC curves — {caption}", fontsize=13)
    for k, ax in enumerate(panels):
        # Axis labels on the outer panels only: the bottom panel of each column, the first column.
        if k + ncols >= len(panels):
            ax.set_xlabel("1 − specificity (FPR)", fontsize=9)
        if k % ncols == 0:
            ax.set_ylabel("Sensitivity (TPR)", fontsize=9)
    _footer(
        figure,
        "Titles: AUC [95% CI] from metrics.json. Shaded: 95% CI of the sensitivity at each FPR, "
        f"{n_resamples} bootstrap resamples of patients.",
    )
    return _finish(figure, path)


def roc_binary(
    predictions: pd.DataFrame,
    metrics: dict,
    path: str | Path | None = None,
    n_resamples: int = 200,
    seed: int = 0,
    *,
    output: str = ABNORMAL,
    split_label: str | None = None,
) -> Figure:
    """One large ROC curve (Abnormal by default), with sensitivity and specificity at each
    operating point in the legend."""
    if output not in plottable_outputs(predictions):
        raise ValueError(
            f"predictions have no usable {output!r} output (needs prob_{output} and label_{output} "
            "with both classes among the known labels)"
        )
    figure = _new_figure(7.4, 8.2)
    ax = figure.subplots()
    entry = metrics.get("outputs", {}).get(output)
    _draw_roc(ax, predictions, output, entry, n_resamples, seed, detailed=True)
    if output == ABNORMAL:
        ax.set_title(ax.get_title().replace(ABNORMAL, "Abnormal vs normal", 1), fontsize=13)
    ax.set_xlabel("False-positive rate (1 − specificity)")
    ax.set_ylabel("True-positive rate (sensitivity)")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 0.08), fontsize=9, framealpha=0.95)
    caption = split_caption(
        metrics.get("split"),
        len(predictions),
        predictions["patient"].nunique(),
        split_label or metrics.get("split_description"),
    )
    figure.suptitle(caption, fontsize=10.5)
    _footer(
        figure,
        "AUC [95% CI] from metrics.json. Shaded: 95% CI of the sensitivity at each FPR, "
        f"{n_resamples} bootstrap resamples of patients.",
    )
    return _finish(figure, path)


# ----------------------------------------------------------------------------------------------
# Confusion matrices
# ----------------------------------------------------------------------------------------------


def _confusion_counts(point: dict) -> np.ndarray:
    """[[tn, fp], [fn, tp]]: rows are the truth, columns the prediction (negative first)."""
    return np.array([[point["tn"], point["fp"]], [point["fn"], point["tp"]]], dtype=np.int64)


def _draw_confusion(ax: Axes, name: str, point: dict, large: bool) -> None:
    counts = _confusion_counts(point)
    row_totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        row_fraction = np.where(row_totals > 0, counts / row_totals, np.nan)
    annotations = np.array(
        [
            [
                f"{counts[i, j]:,}"
                + ("" if np.isnan(row_fraction[i, j]) else f"\n{100 * row_fraction[i, j]:.1f}%")
                for j in range(2)
            ]
            for i in range(2)
        ]
    )
    classes = ["Normal", "Abnormal"] if name == ABNORMAL else ["Negative", "Positive"]
    # Colour by row percentage: raw counts would paint every cell of a rare finding by its
    # negatives alone.
    # A row with no images (no positives in this split) is drawn empty-coloured, not masked, so
    # that its zero counts are still written.
    sns.heatmap(
        np.nan_to_num(row_fraction),
        ax=ax,
        annot=annotations,
        fmt="",
        cmap="Blues",
        vmin=0.0,
        vmax=1.0,
        cbar=False,
        square=True,
        linewidths=1,
        linecolor="white",
        xticklabels=classes,
        yticklabels=classes,
        annot_kws={"fontsize": 14 if large else 9},
    )
    ax.set_xlabel("Prediction", fontsize=11 if large else 8.5)
    ax.set_ylabel("Truth", fontsize=11 if large else 8.5)
    ax.tick_params(labelsize=11 if large else 8, length=0)
    ax.tick_params(axis="y", rotation=90)
    for label in ax.get_yticklabels():
        label.set_verticalalignment("center")
    title = f"{display_name(name)} (threshold {point['threshold']:.3f})"
    if large:
        title += (
            f"\nsensitivity {_rate(point.get('sensitivity'))}, "
            f"specificity {_rate(point.get('specificity'))}"
        )
    ax.set_title(title, fontsize=12 if large else 9.5)


def confusion_matrices(
    metrics: dict,
    path: str | Path | None = None,
    outputs: Sequence[str] | None = None,
    at: str = VALIDATION_POINT,
    *,
    split_label: str | None = None,
) -> Figure:
    """2x2 confusion matrix heatmaps (counts and row %) at one operating point of metrics.json.

    outputs=None takes every output that has the operating point `at` ("at_validation_threshold"
    or "at_0.5"); a single output is drawn large.
    """
    entries = metrics.get("outputs", {})
    if outputs is None:
        outputs = [name for name in OUTPUTS if at in entries.get(name, {})]
        if not outputs:
            found = sorted({key for e in entries.values() for key in e if key.startswith("at_")})
            raise ValueError(f"no output in metrics has {at!r}; operating points found: {found}")
    for name in outputs:
        if name not in entries:
            raise ValueError(f"metrics have no output {name!r}; they have {list(entries)}")
        if at not in entries[name]:
            found = [key for key in entries[name] if key.startswith("at_")]
            raise ValueError(f"metrics for {name!r} have no {at!r}; they have {found}")
    large = len(outputs) == 1
    ncols = min(4, len(outputs))
    nrows = math.ceil(len(outputs) / ncols)
    width, height = (5.8, 6.4) if large else (3.2 * ncols + 0.4, 3.15 * nrows + 1.1)
    figure = _new_figure(width, height)
    panels, spare = _grid(figure, len(outputs), ncols)
    for ax, name in zip(panels, outputs, strict=True):
        _draw_confusion(ax, name, entries[name][at], large)
    for ax in spare:
        ax.set_axis_off()
    where = {
        VALIDATION_POINT: "the validation-chosen threshold" + ("" if large else "s"),
        HALF_POINT: "threshold 0.5",
    }.get(at, at.removeprefix("at_").replace("_", " "))
    caption = _metrics_caption(metrics, split_label)
    figure.suptitle(
        f"{'Confusion matrix' if large else 'Confusion matrices'} at {where}\n{caption}",
        fontsize=11 if large else 13,
    )
    _footer(figure, "Rows: truth; columns: prediction; cells: count and % of the row")
    return _finish(figure, path)


# ----------------------------------------------------------------------------------------------
# Training curves
# ----------------------------------------------------------------------------------------------


def best_epoch(history: pd.DataFrame) -> tuple[int, str] | None:
    """(epoch, column) that training's early stopping keeps: macro AUC, binary AUC where the
    macro is NaN (binary datasets); with weight EMA, the better of the raw and the averaged
    weights' (history's `monitor`, `monitor_weights`), so the column may be `ema_macro_auc`.
    None if nothing was ever measured."""
    macro = history.get("macro_auc", pd.Series(np.nan, index=history.index)).astype(float)
    binary = history.get("binary_auc", pd.Series(np.nan, index=history.index)).astype(float)
    monitored = macro.where(macro.notna(), binary)
    if "monitor" in history:
        monitored = history["monitor"].astype(float)
    if monitored.isna().all():
        return None
    row = monitored.idxmax()
    column = "macro_auc" if not math.isnan(macro[row]) else "binary_auc"
    if "monitor_weights" in history and history.loc[row, "monitor_weights"] == "ema":
        column = f"ema_{column}"
    return int(history.loc[row, "epoch"]), column


def _shade_frozen(ax: Axes, history: pd.DataFrame) -> None:
    if "phase" not in history:
        return
    frozen = history.loc[history["phase"] == "frozen", "epoch"]
    if frozen.empty:
        return
    ax.axvspan(
        frozen.min() - 0.5,
        frozen.max() + 0.5,
        color="#f2d388",
        alpha=0.35,
        lw=0,
        label="backbone frozen",
    )


def _plot_if_measured(ax: Axes, history: pd.DataFrame, column: str, **style: object) -> bool:
    if column not in history or history[column].isna().all():
        return False
    ax.plot(history["epoch"], history[column].astype(float), marker="o", markersize=3, **style)
    return True


def training_curves(history: pd.DataFrame, path: str | Path | None = None) -> Figure:
    """Three panels from history.csv: losses, validation AUCs (best epoch marked), learning rates
    on a log scale; the frozen-backbone phase is shaded."""
    if "epoch" not in history:
        raise ValueError(f"history needs an 'epoch' column; it has {list(history.columns)}")
    history = history.sort_values("epoch").reset_index(drop=True)
    figure = _new_figure(15.5, 4.9)
    loss_ax, auc_ax, lr_ax = figure.subplots(1, 3)
    for ax in (loss_ax, auc_ax, lr_ax):
        _shade_frozen(ax, history)

    _plot_if_measured(loss_ax, history, "train_loss", color="#1f77b4", label="training loss")
    _plot_if_measured(loss_ax, history, "val_loss", color="#ff7f0e", label="validation loss")
    loss_ax.set_title("Loss")
    loss_ax.set_ylabel("binary cross-entropy")

    # Per-finding AUCs as faint context lines: a single finding collapsing shows here first.
    finding_columns = [f"auc_{f}" for f in FINDINGS if f"auc_{f}" in history]
    for k, column in enumerate(finding_columns):
        if history[column].notna().any():
            auc_ax.plot(
                history["epoch"],
                history[column],
                color="#b8b8b8",
                lw=0.7,
                label="per finding" if k == 0 else None,
            )
    _plot_if_measured(auc_ax, history, "macro_auc", color="#2ca02c", lw=2, label="macro AUC")
    _plot_if_measured(
        auc_ax, history, "binary_auc", color="#9467bd", lw=2, label="binary AUC (abnormal)"
    )
    # With weight EMA: the averaged weights' AUC, dashed, in the colour of the raw one.
    _plot_if_measured(
        auc_ax, history, "ema_macro_auc", color="#2ca02c", ls="--", label="macro AUC (EMA)"
    )
    _plot_if_measured(
        auc_ax, history, "ema_binary_auc", color="#9467bd", ls="--", label="binary AUC (EMA)"
    )
    best = best_epoch(history)
    if best is not None:
        epoch, column = best
        value = float(history.loc[history["epoch"] == epoch, column].iloc[0])
        what = ("macro" if "macro" in column else "binary") + (", EMA" if "ema_" in column else "")
        auc_ax.plot(
            epoch,
            value,
            marker="*",
            markersize=15,
            color="#d62728",
            markeredgecolor="black",
            ls="none",
            zorder=5,
            label=f"best epoch {epoch} ({what} AUC {value:.3f})",
        )
        for ax in (loss_ax, auc_ax, lr_ax):
            ax.axvline(epoch, color="#d62728", ls=":", lw=1)
    auc_ax.set_title("Validation AUC")
    auc_ax.set_ylabel("ROC AUC")

    # Zero learning rates (the frozen backbone) have no place on a log axis.
    for column, colour, label in (
        ("lr", "#1f77b4", "head"),
        ("backbone_lr", "#8c564b", "backbone"),
    ):
        if column in history:
            rate = history[column].astype(float).where(history[column] > 0)
            if rate.notna().any():
                lr_ax.plot(
                    history["epoch"], rate, marker="o", markersize=3, color=colour, label=label
                )
    lr_ax.set_yscale("log")
    lr_ax.set_title("Learning rate (at epoch end)")
    lr_ax.set_ylabel("learning rate")

    for ax in (loss_ax, auc_ax, lr_ax):
        ax.set_xlabel("epoch")
        # Whole epochs only: a tick per epoch while they fit, otherwise a few integer ticks.
        if len(history) <= 15:
            ax.set_xticks(history["epoch"].to_numpy())
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(history["epoch"].min() - 0.5, history["epoch"].max() + 0.5)
        ax.grid(alpha=0.3, lw=0.5)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8.5)
    figure.suptitle(
        "Training history — AUCs and validation loss on the validation split "
        "(patients disjoint from training)",
        fontsize=12,
    )
    _footer(figure)
    return _finish(figure, path)


# ----------------------------------------------------------------------------------------------
# Per-finding AUC against published figures
# ----------------------------------------------------------------------------------------------


REFERENCE_LINE_STYLES = (
    {"color": "#555555", "ls": "--"},
    {"color": "#d95f02", "ls": "-."},
    {"color": "#e6ab02", "ls": ":"},
    {"color": "#7570b3", "ls": (0, (5, 1, 1, 1, 1, 1))},
)


def auc_bars(
    metrics: dict, path: str | Path | None = None, *, split_label: str | None = None
) -> Figure:
    """Our per-finding AUC (with 95% CI) beside CheXNet 2017's, and the published macro AUCs as
    vertical lines, each labelled with the split it was measured on."""
    entries = metrics.get("outputs", {})
    if not any(entries.get(f, {}).get("auc") is not None for f in FINDINGS):
        raise ValueError(
            "metrics hold no per-finding AUC (a binary-only split?); auc_bars compares the 14 "
            "findings with CheXNet and needs at least one of them"
        )
    caption = _metrics_caption(metrics, split_label)
    findings = list(FINDINGS)
    ours = np.array([entries.get(f, {}).get("auc", np.nan) or np.nan for f in findings], float)
    intervals = np.array(
        [entries.get(f, {}).get("auc_ci95") or [np.nan, np.nan] for f in findings], float
    )
    chexnet = np.array([CHEXNET_2017[f] for f in findings])
    rows = np.arange(len(findings))
    height = 0.38
    chance = 0.5

    figure = _new_figure(10.5, 10.0)
    ax = figure.subplots()
    # Bars start at chance (AUC 0.5), so their length is the skill above guessing.
    ax.barh(
        rows - height / 2,
        ours - chance,
        height,
        left=chance,
        color="#1f5aa6",
        label=f"This model — {caption}; error bars: 95% CI (patient bootstrap)",
    )
    lower_error = np.clip(ours - intervals[:, 0], 0, None)
    upper_error = np.clip(intervals[:, 1] - ours, 0, None)
    ax.errorbar(
        ours,
        rows - height / 2,
        xerr=[lower_error, upper_error],
        fmt="none",
        ecolor="black",
        elinewidth=1,
        capsize=2.5,
    )
    ax.barh(
        rows + height / 2,
        chexnet - chance,
        height,
        left=chance,
        color="#bdbdbd",
        edgecolor="#7f7f7f",
        hatch="//",
        label="CheXNet 2017 per finding — random patient split of the authors, "
        "not the official test list",
    )
    for row, value, upper in zip(rows, ours, intervals[:, 1], strict=True):
        if not np.isnan(value):
            right = upper if not np.isnan(upper) else value
            ax.text(
                right + 0.004,
                row - height / 2,
                f"{value:.3f}",
                va="center",
                fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.6},
                zorder=4,
            )

    macro = metrics.get("macro_auc")
    lines = [
        (
            f"{ref['name']}: macro {ref['macro_auc']:.3f} — {ref['split']}",
            ref["macro_auc"],
            style,
        )
        for ref, style in zip(REFERENCES, REFERENCE_LINE_STYLES, strict=False)
    ]
    if macro is not None:
        lines.insert(
            0,
            (f"This model: macro {macro:.3f} — {caption}", macro, {"color": "#1f5aa6", "ls": "-"}),
        )
    for label, value, style in lines:
        ax.axvline(value, lw=1.6, label=label, **style)

    ax.set_yticks(rows, [display_name(f) for f in findings])
    ax.invert_yaxis()
    values = np.concatenate([ours, intervals.ravel(), chexnet, [v for _, v, _ in lines]])
    low = min(chance, np.nanmin(values)) - 0.01
    # Room right of the highest CI for its value label (an axis a little past 1.0 if need be).
    ax.set_xlim(low, np.nanmax(values) + 0.045)
    ax.set_xlabel("ROC AUC (bars start at chance, 0.5)")
    ax.grid(axis="x", alpha=0.3, lw=0.5)
    handles, labels = ax.get_legend_handles_labels()
    # Bars first, then the vertical lines (matplotlib lists the lines first).
    n_lines = len(lines)
    order = [*range(n_lines, len(handles)), *range(n_lines)]
    ax.legend(
        [handles[k] for k in order],
        [labels[k] for k in order],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.07),
        fontsize=8.5,
        frameon=False,
    )
    figure.suptitle(
        "Per-finding ROC AUC against published figures\n"
        "The splits differ: the comparison is indicative, not like-for-like",
        fontsize=12,
    )
    _footer(figure)
    return _finish(figure, path)


# ----------------------------------------------------------------------------------------------
# Grad-CAM case grids
# ----------------------------------------------------------------------------------------------


def select_cases(
    predictions: pd.DataFrame, output: str, threshold: float, per_group: int = 2, seed: int = 0
) -> pd.DataFrame:
    """Up to `per_group` rows each of TP, FP, TN, FN for one output (positive: prob >= threshold).

    The most confident come first: positives predicted with the highest probability, negatives
    with the lowest. Ties are broken at random (reproducibly with `seed`). Rows with unknown
    labels or missing probabilities are never picked. Returns the chosen rows with their original
    index (the row's position in predictions.csv, i.e. in the cache) and a `case` column, in the
    order TP, FP, TN, FN.
    """
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; expected one of {', '.join(OUTPUTS)}")
    for column in (f"prob_{output}", f"label_{output}"):
        if column not in predictions:
            raise ValueError(f"predictions have no column {column!r}")
    if per_group < 0:
        raise ValueError(f"per_group must be >= 0; got {per_group}")
    labels = predictions[f"label_{output}"].to_numpy()
    probs = predictions[f"prob_{output}"].to_numpy(dtype=np.float64)
    known = np.isin(labels, (0, 1)) & np.isfinite(probs)
    predicted = probs >= threshold
    masks = {
        "TP": known & (labels == 1) & predicted,
        "FP": known & (labels == 0) & predicted,
        "TN": known & (labels == 0) & ~predicted,
        "FN": known & (labels == 1) & ~predicted,
    }
    # A random permutation first, then a stable sort: equal probabilities come out in random order.
    shuffled = np.random.default_rng(seed).permutation(len(predictions))
    chosen = []
    for case in CASES:
        candidates = shuffled[masks[case][shuffled]]
        confidence = probs[candidates] if case in ("TP", "FP") else -probs[candidates]
        picked = candidates[np.argsort(-confidence, kind="stable")[:per_group]]
        chosen.append(predictions.iloc[picked].assign(case=case))
    return pd.concat(chosen) if chosen else predictions.iloc[:0].assign(case=[])


def cam_grid(
    images: Sequence[np.ndarray],
    overlays: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | Path | None = None,
    ncols: int = 4,
    *,
    show_original: bool = True,
    title: str = "Grad-CAM overlays",
    caption: str | None = None,
) -> Figure:
    """A grid of Grad-CAM cells: each the grey input beside its colour overlay (or the overlay
    alone), titled e.g. "TP · Effusion p=0.91". `caption` names the split shown."""
    if not (len(images) == len(overlays) == len(titles)):
        raise ValueError(
            f"images, overlays and titles must have equal lengths; got {len(images)}, "
            f"{len(overlays)}, {len(titles)}"
        )
    if not images:
        raise ValueError("cam_grid needs at least one image")
    cells = []
    for k, (grey, overlay) in enumerate(zip(images, overlays, strict=True)):
        grey, overlay = np.asarray(grey), np.asarray(overlay)
        if grey.ndim != 2 or overlay.shape != (*grey.shape, 3):
            raise ValueError(
                f"case {k}: expected an (H, W) image and an (H, W, 3) overlay; "
                f"got {grey.shape} and {overlay.shape}"
            )
        if show_original:
            gap = np.full((grey.shape[0], max(2, grey.shape[1] // 40), 3), 255, np.uint8)
            rgb = np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
            cells.append(np.hstack([rgb, gap, overlay.astype(np.uint8)]))
        else:
            cells.append(overlay.astype(np.uint8))
    ncols = max(1, min(ncols, len(cells)))
    nrows = math.ceil(len(cells) / ncols)
    cell_width = 4.4 if show_original else 2.5
    figure = _new_figure(cell_width * ncols + 0.3, 2.4 * nrows + 0.9)
    # Extra room between cells, so that each pair of images reads as one case.
    figure.get_layout_engine().set(wspace=0.06 if show_original else 0.02)
    panels, spare = _grid(figure, len(cells), ncols)
    for ax, cell, cell_title in zip(panels, cells, titles, strict=True):
        ax.imshow(cell, interpolation="lanczos")
        ax.set_title(cell_title, fontsize=9.5)
        ax.set_axis_off()
    for ax in spare:
        ax.set_axis_off()
    figure.suptitle(f"{title} — {caption}" if caption else title, fontsize=12)
    _footer(
        figure,
        "Each cell: input image (left) and its Grad-CAM overlay (right)" if show_original else "",
    )
    return _finish(figure, path)
