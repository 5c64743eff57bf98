"""The model card (README.md of a model folder), rendered offline from the folder's own files.

Every number on the card is read from the files that ship beside it: results/<split>/metrics.json
(computed by the shipped weights; `publish.build_model_folder` checks that before it writes the
folder), config.json (thresholds, preprocessing, the resolved training config, the data section)
and, when present, results/<split>/subgroups.csv. Nothing is recomputed or re-rounded elsewhere:
the YAML `model-index` carries the values exactly as metrics.json holds them, the tables show them
to four (AUC) or three (rates) decimals. The reporting checklist near its end (TRIPOD+AI / CLAIM,
`publishing.checklist`) is filled from the same files.

Model folder layout (written by `publish.build_model_folder`):
    README.md                      this card
    model.safetensors, config.json the shipped weights; thresholds, preprocessing, training, data
    results/<split>/metrics.json   (+ subgroups.csv) for the reported split, and val when present
    figures/*.png                  ROC curves, confusion matrices, training curves, AUC bars, CAMs
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from chexvision_lib import __version__
from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.core.labels import ABNORMAL, FINDINGS, OUTPUTS
from chexvision_lib.data.provenance import NIH_KINDS
from chexvision_lib.evaluation.references import REFERENCES
from chexvision_lib.publishing.checklist import (
    INTENDED_USE_HEADING,
    LIMITATIONS_HEADING,
    checklist_rows,
)

RESULTS_DIR = "results"
FIGURES_DIR = "figures"
METRICS_FILE = "metrics.json"
SUBGROUPS_FILE = "subgroups.csv"
SUBGROUP_COLUMNS = ("group_column", "value", "output", "n_images", "n_positive", "auc")
# config.json sections the publisher adds beside what training wrote.
DATA_KEY = "data"
PUBLICATION_KEY = "publication"
PLACEHOLDER_REPO = "OWNER/NAME"
LICENSE = "mit"
PIPELINE_TAG = "image-classification"
LIBRARY_NAME = "chexvision"
TASK_NAME = "Multi-label chest X-ray finding classification"
MACRO_CONFIG = "macro_14_findings"

# Figure files, in the order the card shows them, with the caption a reader sees.
FIGURE_CAPTIONS: dict[str, str] = {
    "roc_curves.png": "ROC curve per output, with patient-bootstrap 95% bands",
    "roc_abnormal.png": "ROC curve of the binary (abnormal vs normal) output",
    "confusion_abnormal.png": "Confusion matrix of the binary output at its validation threshold",
    "auc_bars.png": "Per-finding AUC beside published figures (different splits)",
    "training_curves.png": "Training and validation curves (the shipped epoch is marked)",
}
GRADCAM_PREFIX = "gradcam"

# Config keys shown in their own sections (or local paths that mean nothing to a reader).
CONFIG_KEYS_SHOWN_ELSEWHERE = ("cache", "out", "data_source", "preprocessing")

WANG_2017_BIBTEX = """@inproceedings{wang2017chestxray8,
  title     = {{ChestX-ray8}: Hospital-scale Chest X-ray Database and Benchmarks on
               Weakly-Supervised Classification and Localization of Common Thorax Diseases},
  author    = {Wang, Xiaosong and Peng, Yifan and Lu, Le and Lu, Zhiyong and
               Bagheri, Mohammadhadi and Summers, Ronald M.},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition
               (CVPR)},
  pages     = {2097--2106},
  year      = {2017}
}"""


def package_bibtex() -> str:
    return (
        "@software{chexvision,\n"
        "  title   = {{CheXVision}: chest X-ray classifiers on NIH ChestX-ray14},\n"
        "  author  = {{CheXVision contributors}},\n"
        f"  version = {{{__version__}}},\n"
        "  note    = {Research and teaching use only; not for clinical use}\n"
        "}"
    )


# ----------------------------------------------------------------------------------------------
# Reading the folder
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardInputs:
    """Everything the card shows, as read from one model folder."""

    folder: Path
    config: dict[str, Any]
    metrics: dict[str, Any]  # the reported split
    val_metrics: dict[str, Any] | None  # validation, when it was evaluated and is not reported
    subgroups: pd.DataFrame | None
    figures: list[str]  # paths relative to the folder
    repo_id: str

    @property
    def split(self) -> str:
        return self.metrics["split"]

    @property
    def data(self) -> dict[str, Any]:
        return self.config.get(DATA_KEY, {})

    @property
    def publication(self) -> dict[str, Any]:
        return self.config.get(PUBLICATION_KEY, {})

    @property
    def training(self) -> dict[str, Any]:
        return self.config.get("training", {})

    @property
    def synthetic(self) -> bool:
        return bool(self.data.get("synthetic"))

    @property
    def verification(self) -> dict[str, Any] | None:
        """data.provenance.verify_nih_source's answer, as recorded when the folder was built."""
        return self.data.get("verification")

    @property
    def unverified(self) -> bool:
        """Real (not synthetic) data that was not verified as NIH's release with its official
        split: the card must not let it pass for NIH ChestX-ray14. An external binary dataset
        claims no such thing."""
        if self.synthetic:
            return False
        verification = self.verification
        if verification is None:  # a folder built before verification: only the old check
            return self.data.get("synthetic") is None
        # Only an NIH-layout source claims to be NIH's release; another dataset claims nothing.
        return not verification.get("verified") and self.data.get("kind") in NIH_KINDS

    def unverified_reasons(self) -> list[str]:
        reasons = (self.verification or {}).get("reasons") or []
        return list(reasons) or ["the data folder was not available to check it"]

    def split_description(self, split: str) -> str:
        return self.data.get("splits", {}).get(split, {}).get("description", f"{split} split")

    @property
    def metrics_file(self) -> str:
        """The reported split's metrics.json, relative to the folder."""
        return f"{RESULTS_DIR}/{self.split}/{METRICS_FILE}"

    @property
    def subgroups_file(self) -> str:
        """The reported split's subgroups.csv (present or not), relative to the folder."""
        return f"{RESULTS_DIR}/{self.split}/{SUBGROUPS_FILE}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: not a complete model folder") from None


def read_subgroups(path: Path) -> pd.DataFrame | None:
    """The subgroup table, or None when the file is absent; its columns are checked."""
    if not path.exists():
        return None
    table = pd.read_csv(path, dtype={"value": str, "group_column": str})
    missing = [c for c in SUBGROUP_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {missing}; expected {', '.join(SUBGROUP_COLUMNS)}"
        )
    return table


def read_card_inputs(model_dir: str | Path, repo_id: str | None = None) -> CardInputs:
    folder = Path(model_dir)
    config = _read_json(folder / "config.json")
    split = config.get(PUBLICATION_KEY, {}).get("reported_split")
    if split is None:
        raise ValueError(
            f"{folder}/config.json has no '{PUBLICATION_KEY}.reported_split': build the folder "
            "with `chexvision card RUN_DIR --out MODEL_DIR` (publish.build_model_folder)"
        )
    results = folder / RESULTS_DIR
    val_path = results / "val" / METRICS_FILE
    figures_dir = folder / FIGURES_DIR
    figures = sorted(p.relative_to(folder).as_posix() for p in figures_dir.glob("*.png"))
    order = list(FIGURE_CAPTIONS)
    figures.sort(key=lambda p: order.index(Path(p).name) if Path(p).name in order else len(order))
    return CardInputs(
        folder=folder,
        config=config,
        metrics=_read_json(results / split / METRICS_FILE),
        val_metrics=_read_json(val_path) if split != "val" and val_path.exists() else None,
        subgroups=read_subgroups(results / split / SUBGROUPS_FILE),
        figures=figures,
        repo_id=repo_id or config[PUBLICATION_KEY].get("repo_id") or PLACEHOLDER_REPO,
    )


# ----------------------------------------------------------------------------------------------
# Number formatting: one rule per kind of number, so a reader (and the tests) can match them
# ----------------------------------------------------------------------------------------------


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_auc(value: float | None) -> str:
    return "n/a" if _missing(value) else f"{value:.4f}"


def fmt_ci(interval: list[float | None] | None) -> str:
    if not interval or any(_missing(v) for v in interval):
        return "n/a"
    return f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def fmt_rate(value: float | None) -> str:
    return "n/a" if _missing(value) else f"{value:.3f}"


def fmt_threshold(value: float | None) -> str:
    return "n/a" if _missing(value) else f"{value:.4f}"


def fmt_count(value: int | None) -> str:
    return "n/a" if value is None else f"{int(value):,}"


def display_name(output: str) -> str:
    """'Pleural_Thickening' -> 'Pleural Thickening' (the figures' spelling too)."""
    return output.replace("_", " ")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# YAML metadata
# ----------------------------------------------------------------------------------------------


def eval_results(inputs: CardInputs) -> list[EvalResult]:
    """model-index entries: ROC AUC per output and macro, binary F1 at the validation threshold,
    each naming the dataset and the exact split."""
    data, metrics = inputs.data, inputs.metrics
    common = {
        "task_type": PIPELINE_TAG,
        "task_name": TASK_NAME,
        "dataset_type": data.get("dataset_type", "unknown"),
        "dataset_name": data.get("dataset_name", "unknown data source"),
        "dataset_split": inputs.split_description(inputs.split),
        "dataset_revision": data.get("dataset_revision"),
    }
    # Each AUC carries its 95% CI; how it was bootstrapped is stated once, in the card's body.
    results = []
    for name in FINDINGS:
        entry = metrics["outputs"].get(name)
        if entry is None or _missing(entry.get("auc")):
            continue
        results.append(
            EvalResult(
                **common,
                metric_type="roc_auc",
                metric_name=f"ROC AUC {display_name(name)}",
                metric_config=name,
                metric_value=entry["auc"],
                metric_args={"ci95": entry["auc_ci95"]},
            )
        )
    if not _missing(metrics.get("macro_auc")):
        results.append(
            EvalResult(
                **common,
                metric_type="roc_auc",
                metric_name="Macro ROC AUC (14 findings)",
                metric_config=MACRO_CONFIG,
                metric_value=metrics["macro_auc"],
                metric_args={"ci95": metrics.get("macro_auc_ci95")},
            )
        )
    abnormal = metrics["outputs"].get(ABNORMAL)
    if abnormal is not None and not _missing(abnormal.get("auc")):
        results.append(
            EvalResult(
                **common,
                metric_type="roc_auc",
                metric_name="ROC AUC Abnormal (binary)",
                metric_config=ABNORMAL,
                metric_value=abnormal["auc"],
                metric_args={"ci95": abnormal["auc_ci95"]},
            )
        )
        point = abnormal.get("at_validation_threshold")
        if point is not None and not _missing(point.get("f1")):
            results.append(
                EvalResult(
                    **common,
                    metric_type="f1",
                    metric_name="F1 Abnormal at the validation-chosen threshold",
                    metric_config=ABNORMAL,
                    metric_value=point["f1"],
                    metric_args={"threshold": point["threshold"], "chosen_on": "validation"},
                )
            )
    return results


def card_metadata(inputs: CardInputs) -> ModelCardData:
    tags = ["chest-x-ray", "medical-imaging", "chestx-ray14", "multi-label-classification"]
    tags += ["research-only", "not-for-clinical-use"]
    if inputs.synthetic:
        tags.append("synthetic-data")
    if inputs.unverified:
        tags.append("unverified-data-source")
    datasets = [inputs.data["hub_repo_id"]] if inputs.data.get("hub_repo_id") else None
    return ModelCardData(
        model_name=f"chexvision-{inputs.config['arch'].replace('/', '-')}",  # timm/<name>
        license=LICENSE,
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        tags=tags,
        datasets=datasets,
        metrics=["roc_auc", "f1"],
        eval_results=eval_results(inputs),
    )


# ----------------------------------------------------------------------------------------------
# Body sections
# ----------------------------------------------------------------------------------------------


def _architecture_words(inputs: CardInputs) -> str:
    config, training = inputs.config, inputs.training
    start = "trained from scratch"
    timm_version = config.get("timm_version")
    if training.get("pretrained") == "imagenet":
        start = (
            f"initialised from timm's ImageNet weights (`{config['arch']}`, timm {timm_version})"
            if timm_version
            else "initialised from torchvision's ImageNet weights"
        )
    elif training.get("pretrained"):
        start = "initialised from a local pretrained weights file"
    elif training.get("init_from"):
        start = "fine-tuned from an earlier CheXVision model"
    built = f" (built by timm {timm_version})" if timm_version else ""
    return f"`{config['arch']}` network{built}, {start},"


def section_title_and_warning(inputs: CardInputs) -> str:
    lines = [
        f"# CheXVision `{inputs.config['arch']}` — chest X-ray classifier (research use only)",
        "",
        "> [!CAUTION]",
        f"> **Not for clinical use.** {DISCLAIMER} This model has not been clinically validated "
        "and must not be used to diagnose, screen, triage or manage patients, nor as a second "
        "reader.",
    ]
    if inputs.synthetic:
        lines += [
            "",
            "> [!WARNING]",
            "> **Trained and tested on synthetic images.** The data behind this model is the "
            "built-in synthetic ChestX-ray14-layout set (`chexvision_lib.data.synthetic`), not "
            "real "
            "radiographs. Its numbers test the software pipeline; they say nothing about "
            "performance on real chest X-rays.",
        ]
    if inputs.unverified:
        lines += [
            "",
            "> [!WARNING]",
            "> **Unverified data source.** The files this model was trained and tested on were "
            "not verified as NIH's ChestX-ray14 release and its official split (see *Training "
            "data and split*); its numbers are not results on ChestX-ray14's official test list.",
        ]
    return "\n".join(lines)


def section_summary(inputs: CardInputs) -> str:
    config, metrics = inputs.config, inputs.metrics
    spec = config["preprocessing"]
    channels = "grey" if spec["in_chans"] == 1 else "RGB"
    outputs = spec["outputs"]
    what = (
        f"{len(outputs)} independent sigmoid probabilities: the 14 NIH ChestX-ray14 findings and "
        "`Abnormal` (any finding)"
        if config["head"] == "dual"
        else "one sigmoid probability, `Abnormal` (any of the 14 findings)"
    )
    split_words = inputs.split_description(inputs.split)
    headline = [
        f"On the **{inputs.split} split — {split_words}** "
        f"({fmt_count(metrics['n_images'])} images, {fmt_count(metrics['n_patients'])} patients):"
    ]
    if not _missing(metrics.get("macro_auc")):
        headline.append(
            f"- macro ROC AUC over {_macro_findings_words(metrics)} "
            f"**{fmt_auc(metrics['macro_auc'])}** (95% CI {fmt_ci(metrics.get('macro_auc_ci95'))})"
        )
    abnormal = metrics["outputs"].get(ABNORMAL)
    if abnormal is not None:
        headline.append(
            f"- binary (abnormal vs normal) ROC AUC **{fmt_auc(abnormal['auc'])}** "
            f"(95% CI {fmt_ci(abnormal['auc_ci95'])})"
        )
    return "\n".join(
        [
            "## Model summary",
            "",
            f"A {_architecture_words(inputs)} that reads one {channels} "
            f"{spec['image_size']}×{spec['image_size']} frontal chest radiograph and returns "
            f"{what}. Decision thresholds were chosen per output on the validation split (none "
            "where validation had no positive or no negative case).",
            "",
            *headline,
            "",
            "Every result on this card (tables, ROC curves, confusion matrix, AUC bars) was "
            "computed by the weights in this repository (`model.safetensors`, SHA-256 "
            f"`{inputs.publication.get('weights_sha256', 'n/a')}`); the epoch and the thresholds "
            "were chosen on validation, never on the test split. Only the training curves show "
            "other epochs, with the shipped one marked.",
        ]
    )


def section_contents(inputs: CardInputs) -> str:
    described = {
        "README.md": "this model card",
        "model.safetensors": "the weights (safetensors: no pickled code)",
        "config.json": "architecture, thresholds, preprocessing, resolved training config, data",
    }
    rows = []
    for path in sorted(p for p in inputs.folder.rglob("*") if p.is_file()):
        name = path.relative_to(inputs.folder).as_posix()
        what = described.get(name, "")
        if name.endswith(METRICS_FILE):
            what = f"metrics of the {path.parent.name} split"
        elif name.endswith(SUBGROUPS_FILE):
            what = f"subgroup AUCs on the {path.parent.name} split"
        elif name.startswith(FIGURES_DIR + "/"):
            what = _figure_caption(path.name)
        rows.append([f"`{name}`", what])
    if not any(row[0] == "`README.md`" for row in rows):
        rows.insert(0, ["`README.md`", described["README.md"]])
    return "## Files\n\n" + markdown_table(["File", "Contents"], rows)


def section_intended_use() -> str:
    return "\n".join(
        [
            INTENDED_USE_HEADING,
            "",
            "- **Research:** reproducing and comparing chest X-ray classifiers on the official "
            "ChestX-ray14 split; studying label noise, shortcut learning, calibration and "
            "saliency maps (Grad-CAM).",
            "- **Teaching:** how to evaluate such a model honestly — patient-wise splits, "
            "patient-bootstrap confidence intervals, thresholds chosen on validation, subgroup "
            "results.",
            "",
            "**Out of scope:** any clinical or patient-facing use (diagnosis, screening, triage, "
            "worklist prioritisation, a second opinion); lateral views, children, non-chest "
            "images; images from hospitals or devices unlike the training data without an "
            "external validation of your own.",
        ]
    )


THRESHOLD_METHODS = {"youden": "maximum Youden's J", "f1": "maximum F1"}


def threshold_method_words(config: dict[str, Any]) -> str:
    method = config.get("threshold_method")
    return THRESHOLD_METHODS.get(str(method), f"method {method}")


def section_limitations(inputs: CardInputs) -> str:
    size = inputs.config["preprocessing"]["image_size"]
    method = threshold_method_words(inputs.config)
    items = [
        "- **Labels were text-mined from radiology reports, not read from the images.** NIH "
        "derived the 14 labels with natural-language processing and estimates the mining at "
        "about 90% accuracy; independent visual reviews of the images (e.g. Oakden-Rayner, "
        "2020) found several classes much noisier than that. The test labels carry the same "
        "noise, so the AUCs below measure agreement with report-derived labels, not with the "
        "truth.",
        "- **One hospital.** ChestX-ray14 comes from a single institution (NIH Clinical Center, "
        "USA). Other hospitals, scanners, acquisition protocols and patient populations are "
        "unseen; expect lower and differently calibrated performance under such dataset shift "
        "(Zech et al., 2018 showed CNNs exploiting hospital-specific signals).",
        "- **PA vs AP view confounding.** AP films are mostly bedside films of sicker patients, "
        "and several findings (effusion, oedema, consolidation) are more frequent on them. A model "
        "can learn the view, or the tubes and lines of ill patients, instead of the disease; "
        "compare results by view before trusting a finding's AUC.",
        f"- **Operating points do not transfer.** Thresholds were chosen on validation "
        f"({method}); sensitivity, PPV and NPV depend on prevalence and will differ "
        "elsewhere.",
        f"- **Resolution.** Images were downsampled to {size}×{size} pixels; small findings "
        "(nodules) lose detail.",
        "- **No comparison with radiologists** was made, and AUC says nothing about clinical "
        "benefit.",
    ]
    if inputs.synthetic:
        items.insert(
            0,
            "- **Synthetic data.** Training and test images were generated by "
            "`chexvision_lib.data.synthetic`; they imitate the NIH file layout and label "
            "frequencies, "
            "not real anatomy or disease. None of these numbers describes real radiographs.",
        )
    elif inputs.unverified:
        items.insert(
            0,
            "- **Unverified data source.** It could not be established that the data is NIH's "
            "ChestX-ray14 release with its official split: "
            + "; ".join(inputs.unverified_reasons())
            + ".",
        )
    return f"{LIMITATIONS_HEADING}\n\n" + "\n".join(items)


def _macro_findings_words(metrics: dict) -> str:
    """'the 14 findings', or the ones the data labels (a macro over CheXpert's 7 is not NIH's)."""
    scored = [
        name
        for name, entry in metrics.get("outputs", {}).items()
        if name != ABNORMAL and not _missing(entry.get("auc"))
    ]
    if not scored or len(scored) == 14:
        return "the 14 findings"
    return f"the {len(scored)} findings this data labels ({', '.join(scored)})"


def _split_files_table(data: dict[str, Any]) -> str:
    files = data.get("split_files", {})
    if not files:
        return "Split files: not recorded by this data source."
    rows = [[f"`{name}`", f"`{digest}`"] for name, digest in files.items()]
    return markdown_table(["File", "SHA-256"], rows)


def _verification_lines(inputs: CardInputs) -> list[str]:
    verification = inputs.verification
    if verification is None:
        return []
    if verification.get("verified"):
        release = verification.get("data_entry_release")
        lines = [
            "- Provenance: **verified** — the SHA-256 of `train_val_list.txt` and "
            "`test_list.txt` (below) equal those of NIH's official split lists, recorded when "
            "the data was indexed" + (f"; the Data_Entry CSV is {release}." if release else ".")
        ]
        lines += [f"- Note: {note}." for note in verification.get("notes") or []]
        return lines
    if inputs.synthetic:
        return ["- Provenance: the built-in synthetic set, not NIH's release."]
    if inputs.data.get("kind") == "binary":
        return ["- Provenance: an external dataset, identified by the hashes below (if any)."]
    if inputs.data.get("kind") not in NIH_KINDS:
        return [
            f"- Provenance: read from {inputs.data.get('dataset_name')}'s published files by "
            f"the `{inputs.data.get('kind')}` reader, identified by the hashes below; its "
            "labels are mapped onto the NIH findings it shares (the others are unknown there)."
        ]
    return [
        "- Provenance: **unverified data source** — " + "; ".join(inputs.unverified_reasons()) + "."
    ]


def _revision_words(data: dict[str, Any]) -> str:
    if data.get("dataset_revision"):
        return f"dataset revision `{data['dataset_revision']}`"
    if data.get("hub_repo_id"):
        return "the Hub dataset revision was not recorded"
    return "local files, identified by the hashes below"


def section_training_data(inputs: CardInputs) -> str:
    data = inputs.data
    counts = data.get("counts", {})
    split_rows = [
        [
            split,
            inputs.split_description(split),
            fmt_count(counts.get(split)) if split in counts else "n/a",
        ]
        for split in ("train", "val", "test")
    ]
    lines = [
        "## Training data and split",
        "",
        f"- Data: **{data.get('dataset_name', 'unknown')}**, read by the `{data.get('kind')}` "
        f"loader; {_revision_words(data)}.",
        *_verification_lines(inputs),
        "- Splits are patient-disjoint: no patient's images appear in more than one split.",
    ]
    if data.get("val_fraction") is not None:
        lines.append(
            f"- Validation: {data['val_fraction']:.0%} of the patients outside the test split, "
            f"drawn with seed {data.get('seed')}; it chose the epoch and the thresholds."
        )
    if data.get("views"):
        lines.append(f"- Views kept: {', '.join(data['views'])}.")
    skipped = {k: v for k, v in (data.get("skipped") or {}).items() if v}
    if skipped:
        lines.append(f"- Images skipped while indexing: {skipped}.")
    lines += [
        "",
        markdown_table(["Split", "Definition", "Images"], split_rows),
        "",
        "Files that define the data and the split:",
        "",
        _split_files_table(data),
    ]
    return "\n".join(lines)


def section_preprocessing(inputs: CardInputs) -> str:
    spec, data = inputs.config["preprocessing"], inputs.data
    training = inputs.training
    clahe = data.get("cache_settings", {}).get("clahe")
    rows = [
        ["Input size", f"{spec['image_size']}×{spec['image_size']} px (resized, aspect ignored)"],
        ["Channels", f"{spec['in_chans']} ({'grey' if spec['in_chans'] == 1 else 'RGB'})"],
        ["Pixel scaling", "uint8 / 255 → [0, 1], then (x − mean) / std"],
        ["Mean", ", ".join(f"{v:g}" for v in spec["mean"])],
        ["Std", ", ".join(f"{v:g}" for v in spec["std"])],
        ["CLAHE", "unknown" if clahe is None else ("yes, at cache time" if clahe else "no")],
        ["Cache size", f"{data.get('cache_settings', {}).get('size', 'n/a')} px"],
        ["Augmentation (training only)", "yes" if training.get("augment") else "no"],
        ["Horizontal flips", "yes" if training.get("hflip") else "no"],
    ]
    order = ", ".join(f"{i}: `{name}`" for i, name in enumerate(spec["outputs"]))
    return "\n".join(
        [
            "## Preprocessing",
            "",
            markdown_table(["Step", "Setting"], rows),
            "",
            f"Output order (logit columns): {order}.",
            "",
            "`chexvision predict` applies exactly this pipeline; it is stored in config.json "
            "(`preprocessing`).",
        ]
    )


def _config_value(value: object) -> str:
    return f"`{json.dumps(value)}`"


def section_training(inputs: CardInputs) -> str:
    training, config = inputs.training, inputs.config
    rows = [
        [f"`{key}`", _config_value(value)]
        for key, value in training.items()
        if key not in CONFIG_KEYS_SHOWN_ELSEWHERE
    ]
    epochs_run = inputs.publication.get("epochs_run")
    monitor = "validation macro AUC over the findings the data labels (binary AUC where none)"
    averaged = (
        " — the weights' exponential moving average (EMA), which validated better than the raw "
        "weights that epoch"
        if config.get("shipped_weights") == "ema"
        else ""
    )
    return "\n".join(
        [
            "## Training",
            "",
            f"- Shipped weights: epoch **{config.get('best_epoch', 'n/a')}**"
            + (f" (of {epochs_run} trained)" if epochs_run else "")
            + f", the best by {monitor}{averaged}.",
            "- Thresholds: chosen per output on validation with the shipped weights "
            f"({threshold_method_words(config)}).",
            "",
            "<details><summary>Resolved training configuration</summary>",
            "",
            markdown_table(["Parameter", "Value"], rows),
            "",
            "</details>",
        ]
    )


def _auc_rows(metrics: dict[str, Any], thresholds: dict[str, float | None]) -> list[list[str]]:
    rows = []
    for name in OUTPUTS:
        entry = metrics["outputs"].get(name)
        if entry is None:
            continue
        threshold = thresholds.get(name)
        rows.append(
            [
                display_name(name),
                fmt_auc(entry["auc"]),
                fmt_ci(entry["auc_ci95"]),
                fmt_count(entry["n"]),
                fmt_count(entry["positives"]),
                fmt_threshold(threshold),
            ]
        )
    if not _missing(metrics.get("macro_auc")):
        rows.append(
            [
                "**Macro (14 findings)**",
                fmt_auc(metrics["macro_auc"]),
                fmt_ci(metrics.get("macro_auc_ci95")),
                fmt_count(metrics["n_images"]),
                "",
                "",
            ]
        )
    return rows


OPERATING_POINT_ROWS = (
    ("Threshold", "threshold", fmt_threshold),
    ("Sensitivity", "sensitivity", fmt_rate),
    ("Specificity", "specificity", fmt_rate),
    ("PPV", "ppv", fmt_rate),
    ("NPV", "npv", fmt_rate),
    ("F1", "f1", fmt_rate),
    ("Accuracy", "accuracy", fmt_rate),
    ("TP", "tp", fmt_count),
    ("FP", "fp", fmt_count),
    ("TN", "tn", fmt_count),
    ("FN", "fn", fmt_count),
)


def _operating_points(entry: dict[str, Any]) -> str:
    points = [("At the validation threshold", entry.get("at_validation_threshold"))]
    points.append(("At 0.5", entry.get("at_0.5")))
    points = [(label, point) for label, point in points if point is not None]
    rows = [
        [label, *(formatter(point.get(key)) for _, point in points)]
        for label, key, formatter in OPERATING_POINT_ROWS
    ]
    return markdown_table(["Binary output", *(label for label, _ in points)], rows)


def section_results(inputs: CardInputs) -> str:
    metrics = inputs.metrics
    bootstrap = metrics.get("bootstrap", {})
    split_words = inputs.split_description(inputs.split)
    lines = [
        f"## Results on the {inputs.split} split ({split_words})",
        "",
        f"{fmt_count(metrics['n_images'])} images from {fmt_count(metrics['n_patients'])} "
        f"patients; from `{RESULTS_DIR}/{inputs.split}/{METRICS_FILE}`. 95% confidence "
        f"intervals: {bootstrap.get('n_resamples', 'n/a')} bootstrap resamples of "
        f"{bootstrap.get('unit', 'n/a')}s (seed {bootstrap.get('seed', 'n/a')}), so that "
        "images of one patient move together.",
    ]
    provenance = inputs.publication.get("metrics_provenance", {}).get(inputs.split)
    if provenance:
        lines.append(f"\nChecked when this folder was built: {provenance}.")
    if inputs.split == "val":
        lines.append(
            "\n**Note:** this is the validation split, which chose the epoch and the thresholds; "
            "its figures are optimistic."
        )
    lines += [
        "",
        "### ROC AUC per output",
        "",
        markdown_table(
            ["Output", "AUC", "95% CI", "Images", "Positives", "Validation threshold"],
            _auc_rows(metrics, metrics.get("thresholds", {})),
        ),
    ]
    abnormal = metrics["outputs"].get(ABNORMAL)
    if abnormal is not None:
        lines += [
            "",
            "### Binary output (abnormal vs normal) at two operating points",
            "",
            _operating_points(abnormal),
        ]
    return "\n".join(lines)


def section_validation(inputs: CardInputs) -> str:
    val = inputs.val_metrics
    if val is None:
        return ""
    abnormal = val["outputs"].get(ABNORMAL, {})
    rows = [
        [
            "Macro AUC (14 findings)",
            fmt_auc(val.get("macro_auc")),
            fmt_ci(val.get("macro_auc_ci95")),
        ],
        ["Binary AUC", fmt_auc(abnormal.get("auc")), fmt_ci(abnormal.get("auc_ci95"))],
    ]
    return "\n".join(
        [
            f"### Validation split ({inputs.split_description('val')})",
            "",
            f"{fmt_count(val['n_images'])} images, {fmt_count(val['n_patients'])} patients, from "
            f"`{RESULTS_DIR}/val/{METRICS_FILE}`. This split chose the epoch and the thresholds, "
            "so these figures are optimistic; they are shown to reveal over-fitting to it.",
            "",
            markdown_table(["Metric (validation)", "Value", "95% CI"], rows),
        ]
    )


def _subgroup_row(row: Any, with_output: bool) -> list[str]:
    cells = [str(row.group_column), str(row.value)]
    if with_output:
        cells.append(display_name(str(row.output).removeprefix("label_")))
    return [*cells, fmt_count(int(row.n_images)), fmt_count(int(row.n_positive)), fmt_auc(row.auc)]


def section_subgroups(inputs: CardInputs) -> str:
    header = "### Subgroups"
    table = inputs.subgroups
    if table is None:
        return (
            f"{header}\n\nNot computed for this model (no `{RESULTS_DIR}/{inputs.split}/"
            f"{SUBGROUPS_FILE}`). Results by sex, age and view are needed before any claim "
            "that the model works equally across patients."
        )
    outputs = table["output"].astype(str).str.removeprefix("label_")
    binary = table[outputs == ABNORMAL]
    lines = [
        header,
        "",
        f"From `{RESULTS_DIR}/{inputs.split}/{SUBGROUPS_FILE}`. AUC is n/a where a subgroup "
        "lacks positives or negatives; small subgroups give unstable AUCs (no CIs here).",
    ]
    if not binary.empty:
        rows = [_subgroup_row(row, False) for row in binary.itertuples(index=False)]
        lines += [
            "",
            markdown_table(
                ["Subgroup", "Value", "Images", "Abnormal images", "AUC (binary output)"], rows
            ),
        ]
    rows = [_subgroup_row(row, True) for row in table.itertuples(index=False)]
    lines += [
        "",
        "<details><summary>Every output by subgroup</summary>",
        "",
        markdown_table(["Grouped by", "Value", "Output", "Images", "Positives", "AUC"], rows),
        "",
        "</details>",
    ]
    return "\n".join(lines)


def section_comparison(inputs: CardInputs) -> str:
    macro = inputs.metrics.get("macro_auc")
    ours_split = f"{inputs.split} split: {inputs.split_description(inputs.split)}"
    if inputs.synthetic:
        ours_split += " — synthetic images, not comparable with any row below"
    elif inputs.unverified:
        ours_split += " — unverified data source, not comparable with any row below"
    elif inputs.data.get("kind") not in ("nih", "hub_parquet"):
        ours_split += (
            f" — another dataset (macro over {_macro_findings_words(inputs.metrics)}), not "
            "comparable with any row below"
        )
    rows = [[f"**This model** (`{inputs.config['arch']}`)", fmt_auc(macro), ours_split]]
    rows += [[ref["name"], fmt_auc(ref["macro_auc"]), ref["split"]] for ref in REFERENCES]
    return "\n".join(
        [
            "### Comparison with published figures",
            "",
            "Macro ROC AUC over the 14 findings. **The splits differ, so this is not a "
            "like-for-like comparison:** a split that leaks patients inflates results, and random "
            "patient splits have typically scored higher than the official test list; only rows "
            "measured on the same split can be compared.",
            "",
            markdown_table(["Model", "Macro AUC", "Measured on"], rows),
        ]
    )


def _figure_caption(name: str) -> str:
    if name in FIGURE_CAPTIONS:
        return FIGURE_CAPTIONS[name]
    if name.startswith(GRADCAM_PREFIX):
        return "Grad-CAM overlays (where the model looked; not a localisation guarantee)"
    return name


def section_figures(inputs: CardInputs) -> str:
    if not inputs.figures:
        return "### Figures\n\nNo figures were included in this folder."
    blocks = ["### Figures"]
    for path in inputs.figures:
        name = Path(path).name
        caption = _figure_caption(name)
        blocks.append(f"**{caption}**\n\n![{caption}]({path})")
    return "\n\n".join(blocks)


def section_how_to_use(inputs: CardInputs) -> str:
    repo = inputs.repo_id
    return "\n".join(
        [
            "## How to use",
            "",
            "With the `chexvision` package installed (it defines the architecture; only "
            "safetensors weights are loaded, never pickles). Pin a commit hash with `revision` so "
            "the weights cannot change under you:",
            "",
            "```python",
            "from chexvision_lib import load_model, predict_images",
            "",
            f'model = load_model("{repo}", revision="COMMIT_HASH")',
            'probabilities = predict_images(model, ["chest.png"])  # one row per image',
            "```",
            "",
            "From the command line:",
            "",
            "```bash",
            f"chexvision predict {repo} chest.png --revision COMMIT_HASH",
            "```",
            "",
            "Each row holds the 15 probabilities and `abnormal` at the stored validation "
            f"threshold. {DISCLAIMER}",
        ]
    )


CHECKLIST_HEADING = "## Reporting checklist (TRIPOD+AI / CLAIM)"


def _table_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section_reporting_checklist(inputs: CardInputs, card_text: str) -> str:
    """The TRIPOD+AI / CLAIM items, each filled from this folder's files (publishing.checklist);
    `card_text` is the rest of the card, whose intended-use and limitations sections two items
    point at."""
    rows = [
        [
            _table_cell(row.item.title),
            row.item.tripod_ai or "—",
            row.item.claim or "—",
            row.status,
            _table_cell(row.evidence),
        ]
        for row in checklist_rows(inputs, card_text)
    ]
    return "\n".join(
        [
            CHECKLIST_HEADING,
            "",
            "Items of TRIPOD+AI (Collins et al., *BMJ* 2024;385:e078378) and CLAIM 2024 (Tejani et "
            "al., *Radiology: Artificial Intelligence* 2024;6:e240300) that apply to a shared "
            "model. Each is filled from this folder's own files: *not reported* means they hold "
            "no evidence of it; — means that checklist has no item of its own for it.",
            "",
            markdown_table(["Item", "TRIPOD+AI", "CLAIM 2024", "Status", "Evidence"], rows),
        ]
    )


def section_citation() -> str:
    return "\n".join(
        [
            "## Citation",
            "",
            "The dataset (please cite it, as the NIH Clinical Center asks):",
            "",
            "```bibtex",
            WANG_2017_BIBTEX,
            "```",
            "",
            "This software:",
            "",
            "```bibtex",
            package_bibtex(),
            "```",
            "",
            "Comparison figures: Rajpurkar et al., *CheXNet*, arXiv:1711.05225 (2017).",
        ]
    )


def card_body(inputs: CardInputs) -> str:
    sections = [
        section_title_and_warning(inputs),
        section_summary(inputs),
        section_intended_use(),
        section_limitations(inputs),
        section_training_data(inputs),
        section_preprocessing(inputs),
        section_training(inputs),
        section_results(inputs),
        section_validation(inputs),
        section_subgroups(inputs),
        section_comparison(inputs),
        section_figures(inputs),
        section_how_to_use(inputs),
        section_contents(inputs),
    ]
    body = "\n\n".join(s for s in sections if s)
    checklist = section_reporting_checklist(inputs, body)
    return "\n\n".join([body, checklist, section_citation()]) + "\n"


def render_model_card(model_dir: str | Path, *, repo_id: str | None = None) -> str:
    """The model card (YAML metadata + Markdown) for a folder built by `build_model_folder`.

    Offline: nothing is fetched. `repo_id` fills the loading example (default: the one recorded
    when the folder was built, else OWNER/NAME).
    """
    inputs = read_card_inputs(model_dir, repo_id)
    metadata = card_metadata(inputs)
    # ModelCard parses its own text back: malformed metadata fails here, not on the Hub.
    card = ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{card_body(inputs)}")
    return str(card)
