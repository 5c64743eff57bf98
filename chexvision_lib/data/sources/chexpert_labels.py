"""CheXpert-style label columns -> our 14 NIH findings and Abnormal.

CheXpert's train.csv / valid.csv and MIMIC-CXR-JPG's mimic-cxr-2.0.0-chexpert.csv and -negbio.csv
hold the 14 CheXpert observations (label_space.CHEXPERT_OBSERVATIONS), each valued
    1.0 positive, 0.0 negative, -1.0 uncertain, blank not mentioned in the report.
- Uncertain, by the policy chosen (Irvin et al. 2019, section 4): "ignore" -> UNKNOWN (U-Ignore,
  the default: losses and metrics skip the label), "ones" -> 1 (U-Ones), "zeros" -> 0 (U-Zeros).
- Blank -> 0: the labeler found no mention, which the CheXpert paper treats as negative.
- The observations then map onto NIH findings by label_space (CheXpert map): Cardiomegaly, Edema,
  Consolidation, Pneumonia, Atelectasis, Pneumothorax, Effusion (= Pleural Effusion); the other
  seven NIH findings are UNKNOWN for these datasets.
- Abnormal: 1 where any of the 12 pathology observations (all but No Finding and Support Devices)
  is 1 after the policy; else 0 where No Finding is 1; else UNKNOWN (nothing positive and no
  statement of normality: e.g. only uncertain mentions under U-Ignore, or only a support device).
  The labeler sets No Finding only when no pathology is positive or uncertain, so the two rules
  do not meet on its output; were they to, the positive pathology wins.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from chexvision_lib.core.labels import ABNORMAL, UNKNOWN
from chexvision_lib.data.label_space import CHEXPERT_OBSERVATIONS, to_nih_findings
from chexvision_lib.data.sources.reader_parts import csv_row, first_row

UNCERTAINTY_POLICIES: tuple[str, ...] = ("ignore", "ones", "zeros")
NO_FINDING = "No Finding"
PATHOLOGIES: tuple[str, ...] = tuple(
    o for o in CHEXPERT_OBSERVATIONS if o not in (NO_FINDING, "Support Devices")
)
_UNCERTAIN_AS = {"ignore": UNKNOWN, "ones": 1, "zeros": 0}


def read_observations(raw: pd.DataFrame, path: Path, *, uncertainty: str) -> pd.DataFrame:
    """The 14 observation columns of a CSV read as text -> int8 0/1/UNKNOWN after the policy.
    A value other than 1.0 / 0.0 / -1.0 / blank is an error naming the file, row and column."""
    if uncertainty not in _UNCERTAIN_AS:
        raise ValueError(
            f"uncertainty: {uncertainty!r} is not one of {', '.join(UNCERTAINTY_POLICIES)}"
        )
    out = {}
    for name in CHEXPERT_OBSERVATIONS:
        text = raw[name].str.strip()
        values = pd.to_numeric(text.where(text != ""), errors="coerce")
        bad = (text != "") & ~values.isin([1, 0, -1])
        if bad.any():
            at = first_row(bad)
            raise ValueError(
                f"{path}, row {csv_row(at)}: {name!r} is {raw[name].iloc[at]!r}; expected "
                "1.0 (positive), 0.0 (negative), -1.0 (uncertain) or blank (not mentioned)"
            )
        values = values.fillna(0).to_numpy().astype(np.int8)
        out[name] = np.where(values == -1, _UNCERTAIN_AS[uncertainty], values).astype(np.int8)
    return pd.DataFrame(out, index=raw.index)


def abnormal_target(observations: pd.DataFrame) -> pd.Series:
    """Abnormal from the observations after the policy (see the module docstring)."""
    positive = (observations[list(PATHOLOGIES)] == 1).any(axis=1)
    normal = observations[NO_FINDING] == 1
    values = np.where(positive, 1, np.where(normal, 0, UNKNOWN)).astype(np.int8)
    return pd.Series(values, index=observations.index, name=ABNORMAL)


def chexpert_targets(
    raw: pd.DataFrame, path: Path, *, uncertainty: str, dataset: str
) -> pd.DataFrame:
    """The 14 NIH finding columns and Abnormal of a CheXpert-style CSV read as text; `dataset`
    ("chexpert" or "mimic") names the label map."""
    observations = read_observations(raw, path, uncertainty=uncertainty)
    findings = to_nih_findings(observations, dataset)
    return findings.assign(**{ABNORMAL: abnormal_target(observations)})
