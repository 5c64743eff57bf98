"""The label vocabulary of NIH ChestX-ray14, in one place.

Every table, model head, metrics file and model card uses this order; nothing else in the package
spells out the finding names.
"""

from __future__ import annotations

# Canonical order of Wang et al. (CVPR 2017) and of the CheXNet paper.
FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "No Finding"
# The binary target: abnormal = at least one of the 14 findings (i.e. not "No Finding").
ABNORMAL = "Abnormal"
# The 15 outputs of every model, in head order: 14 findings, then the abnormal logit.
OUTPUTS: tuple[str, ...] = (*FINDINGS, ABNORMAL)
NUM_FINDINGS = len(FINDINGS)

# Spellings that other NIH files use for the same finding (BBox_List_2017.csv says "Infiltrate").
ALIASES: dict[str, str] = {"Infiltrate": "Infiltration", "Pleural Thickening": "Pleural_Thickening"}

# Label value for "not known for this image" (binary-only external datasets have no finding labels);
# losses and metrics ignore it.
UNKNOWN = -1


def canonical_finding(name: str) -> str:
    """Return the canonical spelling of a finding name, or raise naming the accepted ones."""
    name = ALIASES.get(name.strip(), name.strip())
    if name not in FINDINGS:
        raise ValueError(f"unknown finding {name!r}; expected one of {', '.join(FINDINGS)}")
    return name


def parse_finding_labels(text: str) -> list[int]:
    """Turn an NIH `Finding Labels` cell ("Effusion|Mass", "No Finding") into 14 zeros and ones.

    Labels are split on '|' and matched exactly: substring matching would, for instance, count
    "Pleural_Thickening" text as a hit for any finding whose name it contains.
    """
    parts = [p.strip() for p in str(text).split("|")]
    if parts == [NO_FINDING]:
        return [0] * NUM_FINDINGS
    if NO_FINDING in parts:
        raise ValueError(f"{text!r} mixes {NO_FINDING!r} with findings")
    vector = [0] * NUM_FINDINGS
    for part in parts:
        vector[FINDINGS.index(canonical_finding(part))] = 1
    return vector
