"""Reliability diagrams: is a predicted 30% positive in 30% of cases?

Same conventions as `plots`: plain data in (predictions.csv as a DataFrame), a bare matplotlib
`Figure` out, written as a PNG when `path` is given, with the split in the title and the
research-use footer. The numbers come from `evaluation.calibration`, so the figure and
metrics.json agree for the same binning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from chexvision_lib.core.labels import ABNORMAL, OUTPUTS
from chexvision_lib.evaluation.calibration import (
    BINNING_RULES,
    DEFAULT_BINS,
    BinStrategy,
    ReliabilityTable,
    apply_temperature,
    brier_score,
    expected_calibration_error,
)
from chexvision_lib.reporting.plots import (
    CURVE_COLOUR,
    _finish,
    _footer,
    _known,
    _new_figure,
    display_name,
    split_caption,
)

AFTER_COLOUR = "#d95f02"
Temperatures = Mapping[str, float | None] | Sequence[float | None] | None


def calibration_outputs(predictions: pd.DataFrame) -> list[str]:
    """Outputs (in head order) with probabilities and at least one known label (one class is
    enough: calibration, unlike an AUC, is defined for it)."""
    names = []
    for name in OUTPUTS:
        if f"prob_{name}" in predictions and f"label_{name}" in predictions:
            labels, _, _ = _known(predictions, name)
            if labels.size:
                names.append(name)
    return names


def _temperature_of(temperatures: Temperatures, name: str) -> float | None:
    """A name -> T mapping, or a list in OUTPUTS order like config.json's; None: no scaling."""
    if temperatures is None:
        return None
    if isinstance(temperatures, Mapping):
        return temperatures.get(name)
    values = list(temperatures)
    if len(values) != len(OUTPUTS):
        raise ValueError(
            f"temperatures must be a mapping or one value per output ({len(OUTPUTS)}); "
            f"got {len(values)}"
        )
    return values[OUTPUTS.index(name)]


def _draw_curve(ax: Axes, table: ReliabilityTable, colour: str, marker: str, label: str) -> None:
    filled = table.count > 0
    ax.plot(
        table.mean_predicted[filled],
        table.observed_frequency[filled],
        marker=marker,
        markersize=4.5,
        lw=1.4,
        color=colour,
        label=label,
    )


def _draw_counts(ax: Axes, before: ReliabilityTable, after: ReliabilityTable | None) -> None:
    """Images per bin under the curve, on a log scale (most probabilities of a rare finding sit
    in the lowest bins); after temperature scaling as an outline."""
    widths = np.diff(before.edges)
    ax.bar(
        before.edges[:-1],
        np.where(before.count > 0, before.count, np.nan),
        widths,
        align="edge",
        color=CURVE_COLOUR,
        alpha=0.45,
        edgecolor="white",
        lw=0.5,
        label="images per bin",
    )
    if after is not None:
        ax.stairs(
            np.where(after.count > 0, after.count, np.nan),
            after.edges,
            color=AFTER_COLOUR,
            lw=1.1,
            label="images per bin, scaled",
        )
    if (before.count > 0).any():
        ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.25, lw=0.5)


def _panel_title(
    name: str,
    before: tuple[float, float],
    after: tuple[float, float] | None,
    temperature: float | None,
) -> str:
    title = "Abnormal vs normal" if name == ABNORMAL else display_name(name)
    if after is None:
        return f"{title}\nECE {before[0]:.3f} · Brier {before[1]:.3f}"
    return (
        f"{title} (T = {temperature:.2f})\n"
        f"ECE {before[0]:.3f} → {after[0]:.3f} · Brier {before[1]:.3f} → {after[1]:.3f}"
    )


def _draw_output(
    curve_ax: Axes,
    count_ax: Axes,
    predictions: pd.DataFrame,
    name: str,
    temperature: float | None,
    n_bins: int,
    strategy: BinStrategy,
    large: bool,
) -> None:
    labels, probs, _ = _known(predictions, name)
    ece, table = expected_calibration_error(labels, probs, n_bins, strategy)
    before = (ece, brier_score(labels, probs))
    after_table, after = None, None
    if temperature is not None:
        scaled = apply_temperature(probs, temperature)
        after_ece, after_table = expected_calibration_error(labels, scaled, n_bins, strategy)
        after = (after_ece, brier_score(labels, scaled))
    curve_ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="perfect calibration")
    _draw_curve(curve_ax, table, CURVE_COLOUR, "o", "model")
    if after_table is not None:
        _draw_curve(curve_ax, after_table, AFTER_COLOUR, "s", "after temperature scaling")
    curve_ax.set_xlim(0, 1)
    curve_ax.set_ylim(-0.01, 1.01)
    curve_ax.grid(alpha=0.25, lw=0.5)
    curve_ax.tick_params(labelbottom=False, labelsize=10 if large else 8)
    curve_ax.set_title(
        _panel_title(name, before, after, temperature), fontsize=12 if large else 9.5
    )
    n_pos = int(labels.sum())
    curve_ax.text(
        0.03,
        0.96,
        f"{n_pos:,} positive / {labels.size:,}",
        transform=curve_ax.transAxes,
        ha="left",
        va="top",
        fontsize=10 if large else 7.5,
        color="#333333",
    )
    _draw_counts(count_ax, table, after_table)
    count_ax.tick_params(labelsize=9 if large else 7)


def reliability_diagram(
    predictions: pd.DataFrame,
    path: str | Path | None = None,
    *,
    outputs: Sequence[str] | None = None,
    temperatures: Temperatures = None,
    n_bins: int = DEFAULT_BINS,
    strategy: BinStrategy = "uniform",
    split: str | None = None,
    split_label: str | None = None,
) -> Figure:
    """One reliability panel per output: observed frequency of positives against the mean
    predicted probability in each bin, the diagonal of perfect calibration, and the images per
    bin as a histogram under it; ECE and Brier score in the title.

    predictions: predictions.csv as a DataFrame (prob_<output>, label_<output>, patient).
    outputs: default, every output with probabilities and a known label. temperatures: a list in
    OUTPUTS order (as in config.json) or a name -> T mapping; outputs with a temperature also get
    the curve after scaling and "before → after" in the title. `split` names the split shown
    ("test"); `split_label` replaces its description. A single output is drawn large.
    """
    available = calibration_outputs(predictions)
    names = list(outputs) if outputs is not None else available
    if not names:
        raise ValueError(
            "predictions hold no output with probabilities and a known label; expected "
            "prob_<output> and label_<output> columns for some of " + ", ".join(OUTPUTS)
        )
    missing = [name for name in names if name not in available]
    if missing:
        raise ValueError(f"predictions have no probabilities with a known label for {missing}")
    large = len(names) == 1
    # One cell more than there are outputs (unless one), so the legend has a cell of its own.
    ncols = 1 if large else min(4, len(names) + 1)
    nrows = 1 if large else math.ceil((len(names) + 1) / ncols)
    width, height = (7.4, 7.8) if large else (3.3 * ncols + 0.5, 4.0 * nrows + 1.2)
    figure = _new_figure(width, height)
    grid = figure.add_gridspec(nrows, ncols)
    cells = [grid[k // ncols, k % ncols] for k in range(nrows * ncols)]
    panels = []
    for cell, name in zip(cells, names, strict=False):
        inner = cell.subgridspec(2, 1, height_ratios=(3.2, 1.0), hspace=0.04)
        curve_ax = figure.add_subplot(inner[0])
        count_ax = figure.add_subplot(inner[1], sharex=curve_ax)
        _draw_output(
            curve_ax,
            count_ax,
            predictions,
            name,
            _temperature_of(temperatures, name),
            n_bins,
            strategy,
            large,
        )
        panels.append((curve_ax, count_ax))
    for k, (curve_ax, count_ax) in enumerate(panels):
        if large or k + ncols >= len(panels):
            count_ax.set_xlabel("mean predicted probability", fontsize=10 if large else 8.5)
        if large or k % ncols == 0:
            curve_ax.set_ylabel("observed frequency", fontsize=10 if large else 8.5)
            count_ax.set_ylabel("images", fontsize=9 if large else 7.5)
    legend: dict[str, object] = {}
    for curve_ax, count_ax in panels:
        for ax in (curve_ax, count_ax):
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                legend.setdefault(label, handle)
    if large:
        panels[0][0].legend(list(legend.values()), list(legend), loc="lower right", fontsize=9)
    else:
        spare = [figure.add_subplot(cell) for cell in cells[len(names) :]]
        spare[0].legend(
            list(legend.values()), list(legend), loc="center", fontsize=9, frameon=False
        )
        for ax in spare:
            ax.set_axis_off()
    caption = split_caption(split, len(predictions), predictions["patient"].nunique(), split_label)
    figure.suptitle(f"Reliability — {caption}", fontsize=11 if large else 13)
    _footer(
        figure,
        f"{n_bins} {BINNING_RULES[strategy].split(' (')[0]}; ECE: bin-count-weighted mean of "
        "|observed − predicted|. Bars: images per bin (log scale).",
    )
    return _finish(figure, path)
