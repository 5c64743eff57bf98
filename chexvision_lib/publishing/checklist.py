"""The model card's reporting checklist: the TRIPOD+AI and CLAIM items that apply to a shared
model, each filled from the model folder's own files or marked "not reported".

References (item numbers as published):
    TRIPOD+AI  Collins GS, Moons KGM, Dhiman P, et al. TRIPOD+AI statement: updated guidance for
               reporting clinical prediction models that use regression or machine learning
               methods. BMJ 2024;385:e078378 (27 main items, 1 to 27c).
    CLAIM      Tejani AS, Klontzas ME, Gatti AA, et al. Checklist for Artificial Intelligence in
               Medical Imaging (CLAIM): 2024 Update. Radiology: Artificial Intelligence
               2024;6(4):e240300 (44 items; numbered differently from CLAIM 2020).
Each row names the checklist items it answers; where a checklist has no item of its own for it,
its column is empty rather than a near miss.

`checklist_rows(inputs)` reads only what the card itself reads (config.json with its data and
publication sections, results/<split>/metrics.json, subgroups.csv) plus what else lies in the
folder (expert-label results, external_* results) and the card's own text. Evidence names files
relative to the folder and never a local path (config.json holds none: `build_model_folder` cuts
them). This module imports nothing heavy and not model_card, which imports it: a `CardFacts` is
anything shaped like `model_card.CardInputs`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from chexvision_lib.core.disclaimer import DISCLAIMER

if TYPE_CHECKING:
    import pandas as pd

REPORTED = "reported"
NOT_REPORTED = "not reported"
NOT_APPLICABLE = "not applicable"
STATUSES = (REPORTED, NOT_REPORTED, NOT_APPLICABLE)

# The card's own headings that two items point at (model_card renders them with these).
INTENDED_USE_HEADING = "## Intended use"
LIMITATIONS_HEADING = "## Limitations"
CARD_FILE = "README.md"
# evaluate_run writes another dataset's results to RUN/external_<cache>_<split>/.
EXTERNAL_PREFIX = "external_"
# Results against expert-read labels (e.g. Google's adjudicated labels for NIH images) are
# recognised by these words in a results file's name.
EXPERT_LABEL_WORDS = ("expert", "google", "radiologist")
RESULT_SUFFIXES = (".csv", ".json")
# data.provenance.NIH_KINDS, repeated: data.provenance imports numpy and PIL (via the synthetic
# set), and the card module must import light.
NIH_KINDS = ("nih", "hub_parquet")
BINARY_OUTPUT = "Abnormal"


@dataclass(frozen=True)
class ChecklistItem:
    id: str
    title: str
    tripod_ai: str  # TRIPOD+AI (2024) item(s), "" where none applies
    claim: str  # CLAIM 2024 update item(s), "" where none applies


ITEMS: tuple[ChecklistItem, ...] = (
    # 3b: target population, intended purpose and users; CLAIM 3: intended use and role of the
    # AI approach, 41: implications for practice, including the intended use.
    ChecklistItem("intended_use", "Intended use and users", "3b", "3, 41"),
    # 5a: sources of data; CLAIM 7: data sources.
    ChecklistItem("data_source", "Data source, its file hashes and verification", "5a", "7"),
    # 11: how missing data were handled, reasons for omitting data; CLAIM 12: missing data.
    ChecklistItem("missing_data", "Missing data and images left out", "11", "12"),
    # 8a: outcome, how and when assessed; CLAIM 14: method used to obtain the reference
    # standard, 16: source of the reference-standard annotations.
    ChecklistItem("reference_standard", "Reference standard of the labels", "8a", "14, 16"),
    # 8b: qualifications of outcome assessors where assessment is subjective; CLAIM 15: rationale
    # for the reference standard where alternatives exist (expert reading is the alternative).
    ChecklistItem("expert_labels", "Results against expert-read labels", "8b", "15"),
    # 12a: how the data were used and partitioned; CLAIM 19: assignment to partitions, 20: level
    # at which partitions are disjoint.
    ChecklistItem(
        "patient_split", "Partitions and the level at which they are disjoint", "12a", "19, 20"
    ),
    # 21: participants and outcome events in each analysis; CLAIM 35: numbers of patients or
    # examinations included.
    ChecklistItem("sample_sizes", "Images, patients and positives per split", "21", "35"),
    # 12e: performance measures; 23a: estimates with confidence intervals; CLAIM 28: metrics,
    # 29: measures of uncertainty, 37: performance metrics and their uncertainty.
    ChecklistItem(
        "discrimination",
        "Discrimination (ROC AUC) with confidence intervals",
        "12e, 23a",
        "28, 29, 37",
    ),
    # 12e names calibration among the performance measures; CLAIM 28: metrics of performance.
    ChecklistItem("calibration", "Calibration", "12e, 23a", "28"),
    # 23a: "including for any key subgroups"; no CLAIM 2024 item is titled for subgroup
    # performance, so none is named.
    ChecklistItem("subgroups", "Performance in subgroups", "23a", ""),
    # 15: model output, "how the thresholds were identified"; CLAIM 38: estimates of diagnostic
    # performance (sensitivity, specificity at the operating point).
    ChecklistItem("operating_point", "Operating point and how it was chosen", "15", "38"),
    # CLAIM 33: testing on external data; TRIPOD+AI has no single external-validation item.
    ChecklistItem("external_validation", "Evaluation on external data", "", "33"),
    # 26: limitations; CLAIM 40: study limitations.
    ChecklistItem("limitations", "Limitations", "26", "40"),
)


class ChecklistRow(NamedTuple):
    item: ChecklistItem
    status: str
    evidence: str


class CardFacts(Protocol):
    """What the checklist reads: `model_card.CardInputs` has all of it."""

    @property
    def folder(self) -> Path: ...
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def metrics(self) -> dict[str, Any]: ...
    @property
    def val_metrics(self) -> dict[str, Any] | None: ...
    @property
    def subgroups(self) -> pd.DataFrame | None: ...
    @property
    def split(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def training(self) -> dict[str, Any]: ...
    @property
    def synthetic(self) -> bool: ...
    @property
    def verification(self) -> dict[str, Any] | None: ...
    @property
    def metrics_file(self) -> str: ...
    @property
    def subgroups_file(self) -> str: ...
    def split_description(self, split: str) -> str: ...


# ----------------------------------------------------------------------------------------------
# Small formatting helpers (the card's rules: AUC-like numbers to 4 decimals, rates to 3)
# ----------------------------------------------------------------------------------------------


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _four(value: object) -> str:
    return "n/a" if _missing(value) or not isinstance(value, int | float) else f"{value:.4f}"


def _three(value: object) -> str:
    return "n/a" if _missing(value) or not isinstance(value, int | float) else f"{value:.3f}"


def _interval(interval: object) -> str | None:
    if not isinstance(interval, list | tuple) or len(interval) != 2:
        return None
    if any(_missing(v) or not isinstance(v, int | float) for v in interval):
        return None
    return f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def _count(value: object) -> str:
    return f"{int(value):,}" if isinstance(value, int | float) and not _missing(value) else "n/a"


def _code(text: object) -> str:
    return f"`{text}`"


# ----------------------------------------------------------------------------------------------
# The card's own text
# ----------------------------------------------------------------------------------------------


def _card_section(text: str, heading: str) -> str | None:
    """The lines under `heading` (a line of its own) up to the next heading of its level."""
    lines = text.splitlines()
    if heading not in lines:
        return None
    start = lines.index(heading) + 1
    level = heading.split(" ", 1)[0] + " "
    end = next((k for k in range(start, len(lines)) if lines[k].startswith(level)), len(lines))
    return "\n".join(lines[start:end])


def _bold_leads(section: str) -> list[str]:
    """The bold words that open the section's paragraphs and bullets ('Research', ...)."""
    leads = re.findall(r"^(?:- )?\*\*(.+?)\*\*", section, flags=re.MULTILINE)
    return [lead.strip().rstrip(":.").strip() for lead in leads]


def _intended_use(inputs: CardFacts, card: str) -> tuple[str, str]:
    section = _card_section(card, INTENDED_USE_HEADING)
    if section is None:
        return NOT_REPORTED, f"the card has no {_code(INTENDED_USE_HEADING)} section"
    evidence = f"{_code(INTENDED_USE_HEADING)} section of this card"
    leads = _bold_leads(section)
    if leads:
        evidence += f" ({'; '.join(leads)})"
    if DISCLAIMER in card.split("\n## ", 1)[0]:  # above the card's first section
        evidence += "; the not-for-clinical-use disclaimer opens the card"
    return REPORTED, evidence + "."


def _limitations(inputs: CardFacts, card: str) -> tuple[str, str]:
    section = _card_section(card, LIMITATIONS_HEADING)
    if section is None:
        return NOT_REPORTED, f"the card has no {_code(LIMITATIONS_HEADING)} section"
    leads = _bold_leads(section)
    listed = f": {'; '.join(leads)}" if leads else ""
    return (
        REPORTED,
        f"{_code(LIMITATIONS_HEADING)} section of this card, {len(leads)} items{listed}.",
    )


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def _verification_words(inputs: CardFacts) -> str:
    verification = inputs.verification
    if verification is None:
        return "verification: not recorded (folder built before chexvision verified sources)"
    if verification.get("verified"):
        words = (
            "verification: **verified** — the SHA-256 of both split lists equal those of NIH's "
            "official train_val_list.txt and test_list.txt"
        )
        release = verification.get("data_entry_release")
        words += f"; Data_Entry CSV: {release}" if release else ""
        notes = verification.get("notes") or []
        return words + "".join(f"; note: {note}" for note in notes)
    reasons = verification.get("reasons") or ["no reason recorded"]
    return "verification: **not verified** as NIH's release — " + "; ".join(reasons)


def _data_source(inputs: CardFacts) -> tuple[str, str]:
    data = inputs.data
    files = data.get("split_files") or {}
    name = data.get("dataset_name", "unknown data source")
    parts = [f"{name}, read by the {_code(data.get('kind'))} loader"]
    if data.get("dataset_revision"):
        parts.append(f"dataset revision {_code(data['dataset_revision'])}")
    if files:
        parts.append("SHA-256: " + "; ".join(f"{_code(f)} {_code(d)}" for f, d in files.items()))
    parts.append(_verification_words(inputs))
    status = REPORTED if files or data.get("dataset_revision") else NOT_REPORTED
    if status == NOT_REPORTED:
        parts.append("no file hash or dataset revision was recorded to identify the data")
    return status, ". ".join(parts) + "."


def _missing_data(inputs: CardFacts) -> tuple[str, str]:
    data = inputs.data
    recorded = inputs.training.get("data_source", {})
    parts = []
    skipped = data.get("skipped")
    if isinstance(skipped, dict):
        counted = {k: v for k, v in skipped.items() if v}
        if counted:
            parts.append(
                "left out while indexing: "
                + ", ".join(f"{_code(k)} {_count(v)}" for k, v in counted.items())
            )
        else:
            parts.append("no image was left out while indexing (`data.skipped` is empty)")
    without_patient = recorded.get("images_without_patient")
    if without_patient is not None:
        parts.append(
            f"images whose name gave no patient ID (each its own patient): "
            f"{_count(without_patient)}"
        )
    evaluated = []
    counts = data.get("counts") or {}
    for split, entry in (data.get("splits") or {}).items():
        indexed, scored = counts.get(split), entry.get("n_images")
        if indexed is not None and scored is not None and indexed != scored:
            evaluated.append(
                f"{split}: {_count(scored)} of {_count(indexed)} indexed images scored"
            )
    if evaluated:
        parts.append("; ".join(evaluated))
    if not parts:
        return NOT_REPORTED, "the data source recorded no count of images left out."
    parts.append("images that failed to decode: not recorded in config.json")
    return REPORTED, "; ".join(parts) + "."


def _reference_standard(inputs: CardFacts) -> tuple[str, str]:
    data, kind = inputs.data, inputs.data.get("kind")
    csv = next((f for f in data.get("split_files") or {} if f.startswith("Data_Entry")), None)
    label_file = _code(csv) if csv else "the Data_Entry CSV"
    if inputs.synthetic:
        return REPORTED, (
            "synthetic set: each image carries the findings the generator drew into it "
            "(`chexvision_lib.data.synthetic`); no report, reader or NLP is involved."
        )
    if kind in NIH_KINDS and (inputs.verification or {}).get("verified"):
        return REPORTED, (
            f"NIH's labels, read from {label_file}: text-mined from the radiology reports by NLP "
            "(Wang et al., 2017), not read from the images; the test labels are mined the same "
            "way."
        )
    if kind in NIH_KINDS:
        return NOT_REPORTED, (
            f"labels read from {label_file} of an unverified data source; how they were "
            "derived is not established by the files."
        )
    if kind == "binary":
        return NOT_REPORTED, (
            "labels from the external dataset's class folders or labels CSV; how that "
            "dataset's labels were assigned is not recorded."
        )
    return NOT_REPORTED, "the data source's kind, and so its labels, were not recorded."


def _expert_label_files(folder: Path) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*")):
        name = path.name.lower()
        result = path.is_file() and path.suffix.lower() in RESULT_SUFFIXES
        if result and any(word in name for word in EXPERT_LABEL_WORDS):
            found.append(path.relative_to(folder).as_posix())
    return found


def _expert_labels(inputs: CardFacts) -> tuple[str, str]:
    files = _expert_label_files(inputs.folder)
    if files:
        return REPORTED, "results against expert labels: " + ", ".join(map(_code, files)) + "."
    if inputs.synthetic:
        return NOT_APPLICABLE, "synthetic images: there is no expert reading of them."
    return NOT_REPORTED, (
        "no results against expert-read labels (e.g. Google's adjudicated NIH labels) in this "
        "folder; every number on the card is against the dataset's own labels."
    )


def _patient_split(inputs: CardFacts) -> tuple[str, str]:
    data, kind = inputs.data, inputs.data.get("kind")
    splits = data.get("splits") or {}
    if kind not in (*NIH_KINDS, "binary") or not splits:
        return NOT_REPORTED, "how the splits were drawn was not recorded by the data source."
    order = [s for s in ("train", "val", "test") if s in splits]
    parts = ["; ".join(f"{split}: {inputs.split_description(split)}" for split in order)]
    training = inputs.training
    if training.get("folds"):
        parts.append(
            f"the run trained on cross-validation fold {training.get('fold')} of "
            f"{training['folds']}, grouped by patient, over train + val"
        )
    parts.append(
        "disjoint at the patient level: chexvision checks the split of every index and cache "
        "(`check_patient_disjoint`; `prepare` and every opening of a cache refuse a patient "
        "with images in two splits), so the run was trained and evaluated on patient-disjoint "
        "splits"
    )
    return REPORTED, ". ".join(parts) + "."


def _positives(metrics: dict[str, Any] | None) -> object:
    if not metrics:
        return None
    return (metrics.get("outputs", {}).get(BINARY_OUTPUT) or {}).get("positives")


def _sample_sizes(inputs: CardFacts) -> tuple[str, str]:
    data = inputs.data
    counts = data.get("counts") or {}
    splits = data.get("splits") or {}
    evaluated = {inputs.split: inputs.metrics}
    if inputs.val_metrics is not None:
        evaluated["val"] = inputs.val_metrics
    rows = []
    for split in ("train", "val", "test"):
        entry = splits.get(split, {})
        words = []
        if split in counts:
            words.append(f"{_count(counts[split])} images indexed")
        if entry.get("n_images") is not None:
            words.append(f"{_count(entry['n_images'])} scored")
        if entry.get("n_patients") is not None:
            words.append(f"{_count(entry['n_patients'])} patients")
        positives = _positives(evaluated.get(split))
        if positives is not None:
            words.append(f"{_count(positives)} with a finding")
        if words:
            rows.append(f"{split}: {', '.join(words)}")
    if not rows:
        return NOT_REPORTED, "no image or patient count was recorded."
    unrecorded = [
        s for s in ("train", "val", "test") if splits.get(s, {}).get("n_patients") is None
    ]
    if unrecorded:
        rows.append(f"patients not recorded for {', '.join(unrecorded)}")
    return REPORTED, "; ".join(rows) + "."


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


def _discrimination(inputs: CardFacts) -> tuple[str, str]:
    metrics = inputs.metrics
    outputs = metrics.get("outputs", {})
    with_ci = [
        n for n, e in outputs.items() if not _missing(e.get("auc")) and _interval(e.get("auc_ci95"))
    ]
    where = _code(inputs.metrics_file)
    if not with_ci:
        return NOT_REPORTED, f"{where} holds no AUC with a confidence interval."
    parts = []
    macro = _interval(metrics.get("macro_auc_ci95"))
    if not _missing(metrics.get("macro_auc")) and macro:
        parts.append(f"macro AUC (14 findings) {_four(metrics['macro_auc'])} {macro}")
    binary = outputs.get(BINARY_OUTPUT, {})
    if BINARY_OUTPUT in with_ci:
        parts.append(f"binary AUC {_four(binary['auc'])} {_interval(binary['auc_ci95'])}")
    parts.append(f"{len(with_ci)} of {len(outputs)} outputs with an interval, from {where}")
    bootstrap = metrics.get("bootstrap") or {}
    if bootstrap:
        confidence = bootstrap.get("confidence")
        level = f"{confidence:.0%} " if isinstance(confidence, int | float) else ""
        parts.append(
            f"{level}intervals from {_count(bootstrap.get('n_resamples'))} bootstrap resamples "
            f"of {bootstrap.get('unit', 'unrecorded unit')}s, seed {bootstrap.get('seed', 'n/a')}"
        )
    else:
        parts.append("how the intervals were computed is not recorded")
    return REPORTED, "; ".join(parts) + "."


def _calibration_output_words(name: str, entry: object) -> str | None:
    if not isinstance(entry, dict):
        return None
    words = []
    for metric, label in (("brier", "Brier"), ("ece", "ECE")):
        if not _missing(entry.get(metric)) and isinstance(entry.get(metric), int | float):
            interval = _interval(entry.get(f"{metric}_ci95"))
            words.append(f"{label} {_four(entry[metric])}" + (f" {interval}" if interval else ""))
    return f"{name}: {', '.join(words)}" if words else None


def _calibration(inputs: CardFacts) -> tuple[str, str]:
    where = _code(inputs.metrics_file)
    block = inputs.metrics.get("calibration")
    if not block:
        return NOT_REPORTED, f"{where} has no `calibration` entry."
    parts = [f"{where} has a `calibration` entry"]
    block = block if isinstance(block, dict) else {}
    outputs = block.get("outputs")
    if isinstance(outputs, dict) and outputs:
        shown = _calibration_output_words(BINARY_OUTPUT, outputs.get(BINARY_OUTPUT))
        parts += [shown] if shown else []
        parts.append(f"{len(outputs)} outputs")
    binning = block.get("binning")
    if isinstance(binning, dict) and binning.get("n_bins"):
        strategy = f" {binning['strategy']}" if binning.get("strategy") else ""
        parts.append(f"ECE over {binning['n_bins']}{strategy} bins")
    bootstrap = block.get("bootstrap")
    if isinstance(bootstrap, dict) and bootstrap.get("n_resamples"):
        parts.append(
            f"intervals from {_count(bootstrap['n_resamples'])} bootstrap resamples of "
            f"{bootstrap.get('unit', 'unrecorded unit')}s"
        )
    return REPORTED, "; ".join(parts) + "."


def _subgroups(inputs: CardFacts) -> tuple[str, str]:
    table = inputs.subgroups
    where = _code(inputs.subgroups_file)
    if table is None:
        return NOT_REPORTED, f"no {where} in this folder."
    groups = table.groupby("group_column", sort=False)["value"].nunique()
    described = ", ".join(f"{column} ({n} values)" for column, n in groups.items())
    return REPORTED, (
        f"{where}: {_count(len(table))} rows, AUC per output by {described or 'no group'}; "
        "no confidence intervals."
    )


def _operating_point(inputs: CardFacts) -> tuple[str, str]:
    config = inputs.config
    method = config.get("threshold_method")
    thresholds = config.get("thresholds") or []
    chosen = [t for t in thresholds if not _missing(t)]
    if method is None or not chosen:
        missing = "no threshold method" if method is None else "no threshold"
        return NOT_REPORTED, f"config.json records {missing}."
    parts = [
        f"thresholds chosen per output on the validation split with the shipped weights by "
        f"{_code(method)} (config.json `threshold_method`); {len(chosen)} of {len(thresholds)} "
        "outputs have one"
    ]
    point = (inputs.metrics.get("outputs", {}).get(BINARY_OUTPUT) or {}).get(
        "at_validation_threshold"
    )
    if isinstance(point, dict):
        parts.append(
            f"binary output at {_four(point.get('threshold'))} on the {inputs.split} split: "
            f"sensitivity {_three(point.get('sensitivity'))}, specificity "
            f"{_three(point.get('specificity'))} (from {_code(inputs.metrics_file)})"
        )
    return REPORTED, "; ".join(parts) + "."


def _external_validation(inputs: CardFacts) -> tuple[str, str]:
    folder = inputs.folder
    metrics_name = Path(inputs.metrics_file).name
    found = sorted(
        p
        for p in folder.rglob(f"{EXTERNAL_PREFIX}*")
        if p.is_dir() and (p / metrics_name).is_file()
    )
    if not found:
        return NOT_REPORTED, f"no `{EXTERNAL_PREFIX}*` results folder in this model folder."
    listed = ", ".join(_code((p / metrics_name).relative_to(folder).as_posix()) for p in found)
    return REPORTED, f"results on other data: {listed}."


# ----------------------------------------------------------------------------------------------
# The rows
# ----------------------------------------------------------------------------------------------

_FROM_FILES: dict[str, Callable[[CardFacts], tuple[str, str]]] = {
    "data_source": _data_source,
    "missing_data": _missing_data,
    "reference_standard": _reference_standard,
    "expert_labels": _expert_labels,
    "patient_split": _patient_split,
    "sample_sizes": _sample_sizes,
    "discrimination": _discrimination,
    "calibration": _calibration,
    "subgroups": _subgroups,
    "operating_point": _operating_point,
    "external_validation": _external_validation,
}
_FROM_CARD: dict[str, Callable[[CardFacts, str], tuple[str, str]]] = {
    "intended_use": _intended_use,
    "limitations": _limitations,
}


def checklist_rows(inputs: CardFacts, card_text: str | None = None) -> list[ChecklistRow]:
    """(item, status, evidence) for every item of ITEMS, in order.

    `card_text` is the card's Markdown (the intended-use and limitations items point at its
    sections); by default the folder's README.md, when there is one.
    """
    if card_text is None:
        card_path = inputs.folder / CARD_FILE
        card_text = card_path.read_text() if card_path.is_file() else ""
    rows = []
    for item in ITEMS:
        if item.id in _FROM_CARD:
            status, evidence = _FROM_CARD[item.id](inputs, card_text)
        else:
            status, evidence = _FROM_FILES[item.id](inputs)
        rows.append(ChecklistRow(item, status, evidence))
    return rows
