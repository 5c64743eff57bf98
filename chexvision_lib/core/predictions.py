"""The predictions-file schema: one row per image, metadata, `prob_<output>` and `label_<output>`.

Every step after evaluation reads predictions through here, so the column names live in one
place."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chexvision_lib.core.labels import ABNORMAL, OUTPUTS
from chexvision_lib.core.text_files import read_table

METADATA_COLUMNS = ("image_id", "patient", "age", "sex", "view")


def prob_column(name: str) -> str:
    return f"prob_{name}"


def label_column(name: str) -> str:
    return f"label_{name}"


def predictions_frame(
    metadata: pd.DataFrame, probs: np.ndarray, labels: np.ndarray
) -> pd.DataFrame:
    """One row per image: metadata, 15 probabilities, 15 labels (-1 = unknown)."""
    frame = metadata.reset_index(drop=True).copy()
    for i, name in enumerate(OUTPUTS):
        frame[prob_column(name)] = probs[:, i]
    for i, name in enumerate(OUTPUTS):
        frame[label_column(name)] = labels[:, i].astype(int)
    return frame


def read_predictions(path: str | Path) -> pd.DataFrame:
    frame = read_table(path, dtype={"patient": str, "image_id": str})
    missing = [
        c
        for c in ("image_id", "patient", prob_column(ABNORMAL), label_column(ABNORMAL))
        if c not in frame.columns
    ]
    if missing:
        raise ValueError(f"{path}: not a CheXVision predictions file (missing {missing})")
    return frame
