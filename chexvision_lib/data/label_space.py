"""One label space: each public dataset's labels mapped onto the NIH 14 findings and Abnormal.

A dataset label maps to an NIH finding only where both mean the same thing on a radiograph; the
README's "Datasets" table is printed from `LABEL_MAPS` (`label_space_markdown`). Every NIH finding
that no label of a dataset maps to is UNKNOWN (-1) for all of its images, so losses and metrics
ignore it there rather than counting it negative. Labels kept out of the mapping on purpose:
- CheXpert/MIMIC "Lung Lesion" and VinDr "Nodule/Mass": each is "a nodule OR a mass", so a positive
  says nothing about either NIH finding on its own (NIH separates them at 3 cm).
- "Lung Opacity" (CheXpert, MIMIC, VinDr) is wider than NIH's Infiltration or Consolidation.
- RSNA's "Lung Opacity" is the challenge's pneumonia target (opacities suspicious for pneumonia,
  read by radiologists on NIH images), so it maps to Pneumonia, as torchxrayvision maps it too.
- Findings NIH does not have (fractures, support devices, enlarged cardiomediastinum, ...).
A term that names two NIH findings at once maps to both (hydropneumothorax: Pneumothorax and
Effusion). PadChest and Indiana label from report terms, an absent term counting negative, so
every term that names an NIH finding or a subtype of one must be listed: a missing subtype
would count its images negative.
How each dataset's own values become 0/1/UNKNOWN (uncertainty, several readers, report terms) and
how its Abnormal target is defined is its reader's job (data/sources/*.py); this module only maps
names.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from chexvision_lib.core.labels import FINDINGS, UNKNOWN

# The 14 CheXpert observations (Irvin et al. 2019); MIMIC-CXR-JPG's chexpert/negbio files use them.
CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
_CHEXPERT_MAP: dict[str, str | None] = {
    "No Finding": None,
    "Enlarged Cardiomediastinum": None,
    "Cardiomegaly": "Cardiomegaly",
    "Lung Opacity": None,
    "Lung Lesion": None,
    "Edema": "Edema",
    "Consolidation": "Consolidation",
    "Pneumonia": "Pneumonia",
    "Atelectasis": "Atelectasis",
    "Pneumothorax": "Pneumothorax",
    "Pleural Effusion": "Effusion",
    "Pleural Other": None,
    "Fracture": None,
    "Support Devices": None,
}

# PadChest (Bustos et al. 2020) report terms, lower case as in its `Labels` column. Only the terms
# that name an NIH finding (or a named subtype of one) are listed; the other ~170 terms are
# unmapped and only count towards Abnormal.
# A label's NIH finding, several findings, or None (unmapped: it counts towards Abnormal only).
Target = str | tuple[str, ...] | None

_PADCHEST_MAP: dict[str, Target] = {
    "atelectasis": "Atelectasis",
    "atelectasis basal": "Atelectasis",
    "laminar atelectasis": "Atelectasis",
    "lobar atelectasis": "Atelectasis",
    "segmental atelectasis": "Atelectasis",
    "round atelectasis": "Atelectasis",
    "total atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "pleural effusion": "Effusion",
    "loculated pleural effusion": "Effusion",
    "loculated fissural effusion": "Effusion",
    "hydropneumothorax": ("Pneumothorax", "Effusion"),
    "infiltrates": "Infiltration",
    "mass": "Mass",
    "pulmonary mass": "Mass",
    "nodule": "Nodule",
    "multiple nodules": "Nodule",
    "pneumonia": "Pneumonia",
    "atypical pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
    "consolidation": "Consolidation",
    "pulmonary edema": "Edema",
    "emphysema": "Emphysema",
    "pulmonary fibrosis": "Fibrosis",
    "pleural thickening": "Pleural_Thickening",
    "apical pleural thickening": "Pleural_Thickening",
    "calcified pleural thickening": "Pleural_Thickening",
    "hiatal hernia": "Hernia",
}

# RSNA Pneumonia Detection Challenge (stage_2_detailed_class_info.csv classes).
_RSNA_MAP: dict[str, str | None] = {
    "Lung Opacity": "Pneumonia",
    "No Lung Opacity / Not Normal": None,
    "Normal": None,
}

# Indiana University / Open-i, `Problems` terms of indiana_reports.csv (MeSH-style, ';'-separated).
_INDIANA_MAP: dict[str, Target] = {
    "Pulmonary Atelectasis": "Atelectasis",
    "Atelectases": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Pleural Effusion": "Effusion",
    "Infiltrate": "Infiltration",
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Hydropneumothorax": ("Pneumothorax", "Effusion"),
    "Consolidation": "Consolidation",
    "Pulmonary Edema": "Edema",
    "Edema": "Edema",
    "Pulmonary Emphysema": "Emphysema",
    "Emphysema": "Emphysema",
    "Bullous Emphysema": "Emphysema",
    "Pulmonary Fibrosis": "Fibrosis",
    "Fibrosis": "Fibrosis",
    "Hernia, Hiatal": "Hernia",
    "Hernia, Diaphragmatic": "Hernia",
}

# VinDr-CXR (Nguyen et al. 2022) image-level labels, columns of image_labels_{train,test}.csv.
_VINDR_MAP: dict[str, str | None] = {
    "Aortic enlargement": None,
    "Atelectasis": "Atelectasis",
    "Calcification": None,
    "Cardiomegaly": "Cardiomegaly",
    "Clavicle fracture": None,
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Emphysema": "Emphysema",
    "Enlarged PA": None,
    "ILD": None,
    "Infiltration": "Infiltration",
    "Lung Opacity": None,
    "Lung cavity": None,
    "Lung cyst": None,
    "Mediastinal shift": None,
    "Nodule/Mass": None,
    "Pleural effusion": "Effusion",
    "Pleural thickening": "Pleural_Thickening",
    "Pneumothorax": "Pneumothorax",
    "Pulmonary fibrosis": "Fibrosis",
    "Rib fracture": None,
    "Other lesion": None,
    "COPD": None,
    "Lung tumor": None,
    "Pneumonia": "Pneumonia",
    "Tuberculosis": None,
    "Other disease": None,
    "Other diseases": None,
    "No finding": None,
}

LABEL_MAPS: dict[str, dict[str, Target]] = {
    "nih": {finding: finding for finding in FINDINGS},
    "chexpert": _CHEXPERT_MAP,
    "mimic": _CHEXPERT_MAP,
    "padchest": _PADCHEST_MAP,
    "rsna": _RSNA_MAP,
    "indiana": _INDIANA_MAP,
    "vindr": _VINDR_MAP,
    "binary": {},
}


def targets(value: Target) -> tuple[str, ...]:
    """The NIH findings one label maps to (none, one or several)."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


for _dataset, _mapping in LABEL_MAPS.items():  # a typo here would silently drop a finding
    _wrong = {t for v in _mapping.values() for t in targets(v)} - set(FINDINGS)
    assert not _wrong, f"{_dataset}: {_wrong} are not NIH findings"


def label_map(dataset: str) -> dict[str, Target]:
    if dataset not in LABEL_MAPS:
        raise ValueError(f"dataset: unknown {dataset!r}; known: {sorted(LABEL_MAPS)}")
    return LABEL_MAPS[dataset]


def provided_findings(dataset: str) -> list[str]:
    """The NIH findings a dataset labels (in FINDINGS order); the others are UNKNOWN there."""
    mapped = {t for v in label_map(dataset).values() for t in targets(v)}
    return [finding for finding in FINDINGS if finding in mapped]


def combine_known(values: np.ndarray) -> np.ndarray:
    """Several 0/1/UNKNOWN labels of one image -> one: 1 if any is 1, else 0 if any is 0, else
    UNKNOWN. Rows are images, columns the labels that map to one finding."""
    values = np.asarray(values)
    if values.shape[1] == 0:
        return np.full(values.shape[0], UNKNOWN, dtype=np.int8)
    out = np.where((values == 0).any(axis=1), 0, UNKNOWN)
    return np.where((values == 1).any(axis=1), 1, out).astype(np.int8)


def to_nih_findings(labels: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """A dataset's own labels (columns = its label names, values 0/1/UNKNOWN) -> the 14 NIH
    finding columns, each the `combine_known` of the labels mapping to it, UNKNOWN where none do.

    Columns of `labels` that the dataset's map does not know are an error (a misspelt header would
    otherwise drop a finding without a word)."""
    mapping = label_map(dataset)
    unknown = [c for c in labels.columns if c not in mapping]
    if unknown:
        raise ValueError(f"{dataset}: labels {unknown} are not in its label map {sorted(mapping)}")
    bad = ~labels.isin([0, 1, UNKNOWN])
    if bad.any().any():
        column = bad.any()[bad.any()].index[0]
        row = int(bad[column].to_numpy().nonzero()[0][0])
        value = labels[column].iloc[row]
        value = value.item() if hasattr(value, "item") else value  # 2, not np.int64(2)
        raise ValueError(
            f"{dataset}: label {column!r} of image {row} is {value!r}; expected 0, 1 or {UNKNOWN}"
        )
    out = {}
    for finding in FINDINGS:
        sources = [c for c in labels.columns if finding in targets(mapping[c])]
        out[finding] = combine_known(labels[sources].to_numpy()) if sources else UNKNOWN
    return pd.DataFrame(out, index=labels.index).astype("int8")


def label_space_markdown() -> str:
    """The mapping as a Markdown table: one row per NIH finding, one column per dataset."""
    datasets = [d for d in LABEL_MAPS if d not in ("nih", "binary", "mimic")]
    header = "| NIH finding | " + " | ".join(datasets) + " |"
    lines = [header, "|" + "---|" * (len(datasets) + 1)]
    for finding in FINDINGS:
        cells = []
        for dataset in datasets:
            names = [k for k, v in LABEL_MAPS[dataset].items() if finding in targets(v)]
            cells.append(", ".join(names) if names else "-")
        lines.append(f"| {finding} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
