"""Compare two models on the same images: DeLong's test per output, Holm across the findings.

Works from two predictions.csv files (or run folders), so any pair of results can be compared
after the fact. Both must score the same images with the same labels; the comparison uses the
images they share and says how many that is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chexvision_lib.core.labels import ABNORMAL, FINDINGS, OUTPUTS
from chexvision_lib.core.predictions import label_column, prob_column, read_predictions
from chexvision_lib.evaluation.metrics import delong_test, holm_correction


def predictions_path(run_or_file: str | Path, split: str) -> Path:
    path = Path(run_or_file)
    if path.is_dir():
        path = path / split / "predictions.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `chexvision evaluate RUN --split {split}`")
    return path


def compare_predictions(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """One row per output both models predict: AUCs, difference (a - b) with its 95% CI,
    DeLong p-value, and Holm-adjusted p-value across the 14 findings."""
    merged = a.merge(b, on="image_id", suffixes=("_a", "_b"), validate="one_to_one")
    if merged.empty:
        raise ValueError("the two prediction files share no image_id")
    rows = []
    for name in OUTPUTS:
        label_a, label_b = merged[label_column(name) + "_a"], merged[label_column(name) + "_b"]
        if not np.array_equal(label_a.to_numpy(), label_b.to_numpy()):
            raise ValueError(f"{name}: the two files disagree on labels; compare like with like")
        p_a, p_b = merged[prob_column(name) + "_a"], merged[prob_column(name) + "_b"]
        known = (label_a >= 0) & p_a.notna() & p_b.notna()
        y = label_a[known].to_numpy()
        if known.sum() == 0 or y.min() == y.max():
            continue
        test = delong_test(y, p_a[known].to_numpy(), p_b[known].to_numpy())
        rows.append({"output": name, "n": int(known.sum()), "positives": int(y.sum()), **test})
    table = pd.DataFrame(rows)
    findings = table["output"].isin(FINDINGS)
    table["p_holm"] = np.nan
    table.loc[findings, "p_holm"] = holm_correction(table.loc[findings, "p_value"].to_numpy())
    table.loc[table["output"] == ABNORMAL, "p_holm"] = table.loc[
        table["output"] == ABNORMAL, "p_value"
    ]  # a single test: nothing to correct
    table.attrs["n_shared_images"] = len(merged)
    return table


def compare_runs(run_a: str | Path, run_b: str | Path, split: str = "test") -> pd.DataFrame:
    a = read_predictions(predictions_path(run_a, split))
    b = read_predictions(predictions_path(run_b, split))
    return compare_predictions(a, b)


def format_comparison(table: pd.DataFrame, name_a: str, name_b: str) -> str:
    shown = table.assign(
        **{
            f"AUC {name_a}": table["auc1"].map("{:.4f}".format),
            f"AUC {name_b}": table["auc2"].map("{:.4f}".format),
            "difference [95% CI]": [
                f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]"
                for d, lo, hi in zip(table["diff"], table["ci_low"], table["ci_high"], strict=True)
            ],
            "p (DeLong)": table["p_value"].map("{:.3g}".format),
            "p (Holm)": table["p_holm"].map("{:.3g}".format),
        }
    )
    columns = [
        "output",
        "n",
        "positives",
        f"AUC {name_a}",
        f"AUC {name_b}",
        "difference [95% CI]",
        "p (DeLong)",
        "p (Holm)",
    ]
    note = (
        f"{table.attrs.get('n_shared_images', '?')} shared images; Holm correction across the "
        "14 findings; the Abnormal row is a single test."
    )
    return shown[columns].to_string(index=False) + "\n" + note
