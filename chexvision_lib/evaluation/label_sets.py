"""Score the same predictions against other label sets: expert labels instead of text-mined ones.

- Google's adjudicated labels (Majkowska et al., Radiology 2019; `google2019_nih-chest-xray-labels
  .csv`): Pneumothorax, Airspace opacity and Nodule or mass, YES/NO per image. Our outputs are
  mapped to these categories (below); Fracture has no NIH counterpart and is not scored.
- A binary list in the format of Tang et al. (2020)'s radiologist label files: one `image 0|1` per
  line (space, tab or comma separated), scored against the abnormal output.
Only images present in both the predictions and the label file are scored, and the count is
reported. AUCs carry patient-bootstrap 95% CIs.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from chexvision_lib.core.labels import ABNORMAL
from chexvision_lib.core.predictions import prob_column
from chexvision_lib.core.text_files import read_table, read_text
from chexvision_lib.evaluation.metrics import bootstrap_auc

# Each expert category is scored by the highest probability among the NIH findings it covers.
# Airspace opacity (Majkowska et al.): consolidation, pneumonia, infiltrate/opacity, oedema and
# atelectasis all appear as airspace opacity on a radiograph.
GOOGLE_MAPPING: dict[str, tuple[str, ...]] = {
    "Pneumothorax": ("Pneumothorax",),
    "Airspace opacity": ("Consolidation", "Pneumonia", "Infiltration", "Edema", "Atelectasis"),
    "Nodule or mass": ("Nodule", "Mass"),
}


def read_google_labels(path: str | Path) -> pd.DataFrame:
    """image_id + one 0/1 column per mapped category (YES/NO in the file)."""
    frame = read_table(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("Image Index", *GOOGLE_MAPPING) if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a Google expert label file (missing {missing})")
    out = pd.DataFrame({"image_id": frame["Image Index"].str.strip()})
    for category in GOOGLE_MAPPING:
        values = frame[category].str.strip().str.upper()
        bad = ~values.isin(["YES", "NO"])
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise ValueError(
                f"{path}, row {row + 2}: {category} must be YES or NO, "
                f"got {frame[category].iloc[row]!r}"
            )
        out[category] = (values == "YES").astype(int)
    if out["image_id"].duplicated().any():
        # Majkowska et al. list some images in both their val and test sets with one label.
        out = out.drop_duplicates("image_id")
    return out


def read_binary_labels(path: str | Path) -> pd.DataFrame:
    """A Tang-style label list: `image 0|1` per line -> image_id, label."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p for p in re.split(r"[\s,]+", line.strip()) if p]
        if len(parts) != 2 or parts[1] not in ("0", "1"):
            raise ValueError(f"{path}, line {number}: expected 'image 0|1', got {line.strip()!r}")
        rows.append((Path(parts[0]).name, int(parts[1])))
    frame = pd.DataFrame(rows, columns=["image_id", "label"])
    if frame.empty:
        raise ValueError(f"{path}: no labels found")
    return frame


def _auc_rows(
    merged: pd.DataFrame, targets: dict[str, tuple[str, np.ndarray]], n_resamples: int, seed: int
) -> pd.DataFrame:
    rows = []
    patients = merged["patient"].to_numpy()
    for name, (label_name, scores) in targets.items():
        y = merged[label_name].to_numpy()
        usable = ~np.isnan(scores)
        ci = bootstrap_auc(
            y[usable], scores[usable], patients[usable], n_resamples=n_resamples, seed=seed
        )
        rows.append(
            {
                "label": name,
                "n_images": int(usable.sum()),
                "positives": int(y.sum()),
                "auc": float(ci["auc"][0]),
                "ci_low": float(ci["lower"][0]),
                "ci_high": float(ci["upper"][0]),
            }
        )
    return pd.DataFrame(rows)


def score_against_google(
    predictions: pd.DataFrame, labels: pd.DataFrame, n_resamples: int = 2000, seed: int = 0
) -> pd.DataFrame:
    merged = predictions.merge(labels, on="image_id", how="inner")
    if merged.empty:
        raise ValueError(
            "no image of the predictions has a Google expert label "
            "(they cover NIH test/validation images only)"
        )
    targets = {
        category: (category, merged[[prob_column(f) for f in findings]].max(axis=1).to_numpy())
        for category, findings in GOOGLE_MAPPING.items()
    }
    table = _auc_rows(merged, targets, n_resamples, seed)
    table["scored_by"] = ["max(" + ", ".join(GOOGLE_MAPPING[c]) + ")" for c in table["label"]]
    return table


def score_against_binary(
    predictions: pd.DataFrame, labels: pd.DataFrame, n_resamples: int = 2000, seed: int = 0
) -> pd.DataFrame:
    merged = predictions.merge(labels, on="image_id", how="inner")
    if merged.empty:
        raise ValueError("no image of the predictions is in the label file")
    targets = {"Abnormal (label file)": ("label", merged[prob_column(ABNORMAL)].to_numpy())}
    return _auc_rows(merged, targets, n_resamples, seed)
