"""Cross-dataset heatmaps: one output's AUC for every (trained on, tested on) pair of datasets.

Same conventions as `plots`: plain data in (a cross-dataset study's matrix.csv as a DataFrame), a
bare matplotlib `Figure` out, written as a PNG when `path` is given, the research-use disclaimer
in the footer. Rows are the datasets a model was trained on, columns the datasets whose test
split it was scored on; a cell shows the AUC with its 95% CI. The in-distribution cells (a model
on its own dataset's test split) are outlined: every other cell is data the model never saw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.core.labels import ABNORMAL
from chexvision_lib.reporting.plots import _finish, _new_figure, display_name

# matrix.csv's output name for the mean AUC over the findings a cell shares.
MACRO = "macro"
CMAP = "viridis"
AUC_RANGE = (0.5, 1.0)  # chance to perfect; an AUC below 0.5 shows as the darkest colour
DIAGONAL_COLOUR = "#d62728"
MISSING_COLOUR = "#eeeeee"


def output_title(output: str) -> str:
    """'Abnormal', 'Pleural Thickening', 'macro AUC over the shared findings'."""
    return "macro AUC over the shared findings" if output == MACRO else display_name(output)


def matrix_grid(
    matrix: pd.DataFrame, output: str, trained: Sequence[str], tested: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(auc, ci_low, ci_high, scored) arrays of shape (len(trained), len(tested)) for `output`;
    `scored` is False where the pair does not share the output (no row in the matrix)."""
    shape = (len(trained), len(tested))
    auc, low, high = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    scored = np.zeros(shape, dtype=bool)
    rows = matrix[matrix["output"] == output]
    for row in rows.itertuples(index=False):
        if row.train_dataset in trained and row.test_dataset in tested:
            i, j = list(trained).index(row.train_dataset), list(tested).index(row.test_dataset)
            auc[i, j], low[i, j], high[i, j] = row.auc, row.ci_low, row.ci_high
            scored[i, j] = True
    return auc, low, high, scored


def _cell_text(auc: float, low: float, high: float, scored: bool) -> str:
    if not scored:
        return "not shared"
    if math.isnan(auc):
        return "n/a\n(one class)"
    interval = "" if math.isnan(low) or math.isnan(high) else f"\n[{low:.3f}, {high:.3f}]"
    return f"{auc:.3f}{interval}"


def _footer(figure: Figure, note: str) -> None:
    """The disclaimer (bold) at the bottom and, above it, how to read the figure."""
    height = figure.get_figheight()
    style = {"fontsize": 8, "color": "#444444", "va": "bottom", "ha": "left"}
    figure.text(0.01, 0.08 / height, DISCLAIMER, fontweight="bold", **style)
    figure.text(0.01, 0.25 / height, note, **style)


def cross_dataset_heatmap(
    matrix: pd.DataFrame,
    output: str = ABNORMAL,
    *,
    trained: Sequence[str] | None = None,
    tested: Sequence[str] | None = None,
    n_resamples: int | None = None,
    path: str | Path | None = None,
) -> Figure:
    """A heatmap of `output`'s AUC, trained-on rows x tested-on columns, each cell annotated
    with the AUC and its 95% CI and the in-distribution cells outlined.

    `matrix`: long form, columns train_dataset, test_dataset, output, auc, ci_low, ci_high (a
    cross-dataset study's matrix.csv). `trained` / `tested`: the row and column order (default:
    as they first appear). Pairs without a row for `output` show "not shared".
    """
    trained = list(trained or pd.unique(matrix["train_dataset"]))
    tested = list(tested or pd.unique(matrix["test_dataset"]))
    auc, low, high, scored = matrix_grid(matrix, output, trained, tested)
    width = max(8.0, 1.7 * len(tested) + 3.0)
    height = 1.1 * len(trained) + 2.4
    figure = _new_figure(width, height)
    ax = figure.add_subplot()
    ax.set_facecolor(MISSING_COLOUR)
    sns.heatmap(
        pd.DataFrame(auc, index=trained, columns=tested),
        mask=np.isnan(auc),
        vmin=AUC_RANGE[0],
        vmax=AUC_RANGE[1],
        cmap=CMAP,
        linewidths=1.5,
        linecolor="white",
        cbar_kws={"label": "AUC"},
        ax=ax,
    )
    colours, norm = sns.color_palette(CMAP, as_cmap=True), Normalize(*AUC_RANGE)
    for i in range(len(trained)):
        for j in range(len(tested)):
            value = auc[i, j]
            if math.isnan(value):
                colour = "#666666"
            else:  # dark text on the light end of the colour map, white on the dark end
                red, green, blue, _ = colours(norm(value))
                colour = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
            text = _cell_text(value, low[i, j], high[i, j], bool(scored[i, j]))
            ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=9, color=colour)
            if trained[i] == tested[j]:
                ax.add_patch(
                    Rectangle((j, i), 1, 1, fill=False, edgecolor=DIAGONAL_COLOUR, linewidth=3)
                )
    ax.set_xlabel("tested on (that dataset's test split)")
    ax.set_ylabel("trained on")
    ax.tick_params(axis="x", labelrotation=30)
    ax.tick_params(axis="y", labelrotation=0)
    ax.set_title(f"{output_title(output)}: AUC [95% CI] across datasets", fontsize=11)
    resamples = f", {n_resamples} resamples" if n_resamples else ""
    _footer(
        figure,
        f"Outlined: in-distribution (own test split). 95% CI: patient bootstrap{resamples}. "
        "Not shared: not labelled by both datasets.",
    )
    return _finish(figure, path)
