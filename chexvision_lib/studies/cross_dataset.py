"""The cross-dataset study: does a model trained on one hospital's images hold up on another's?

A config (JSON -> `CrossDatasetConfig`) lists datasets, each any `prepare` source (NIH, CheXpert,
MIMIC, PadChest, RSNA, Indiana, VinDr, class folders, ...), and one model recipe for all. Every
dataset is prepared at `size`; on each dataset with `train` (the default) one model is trained on
its train/val split; every model then scores every dataset's test split. A cell scores the
outputs both datasets share: Abnormal (each test set's own definition, made by its reader) and,
for the findings task, the NIH findings that the training AND the test data label
(data/label_space.provided_findings). A finding the training data never labelled was never
learnt, so it is left out, and matrix.md says so. The diagonal is in-distribution: the model's
own test split; every other cell is data the model never saw.

Optional `fine_tune` pairs {from, to, epochs, lr} (Tang et al. 2020's Indiana experiment): the
model trained on `from` fine-tuned on `to`'s train split and scored on `to`'s test split before
and after, with DeLong's paired test (study.fine_tune_and_compare, as external validation).

Study folder (`out`):
    cross_dataset.json          the resolved config, each dataset's cache, kind and source hashes,
                                each cell's predictions, each pair's results, the figures
    caches/<name>_<size>px/     one cache per dataset
    models/<name>/              a run folder per training dataset: val/, test/ (its own test
                                split: the diagonal), external_<cache>_test/ (the others')
    fine_tune/<from>_to_<to>/   before/, after/, fine_tuned/<from>/, summary.md, fine_tune.json
    matrix.csv                  long form: one row per (trained on, tested on, output)
    matrix.md                   one table per output: rows trained on, columns tested on
    matrix_<output>.png         the same as heatmaps (and matrix_macro.png)
    fine_tune.csv               one row per (pair, output): AUC before and after, DeLong p

Re-running continues: a finished training, scoring or fine-tuning is not repeated (study.run_fold,
study.evaluate_once); the tables and figures are recomputed from the files.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from chexvision_lib.core.atomic_files import write_json_atomic
from chexvision_lib.core.config import from_dict, load_json_config, to_dict
from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.core.labels import ABNORMAL, FINDINGS
from chexvision_lib.core.predictions import label_column, prob_column, read_predictions
from chexvision_lib.data.label_space import provided_findings
from chexvision_lib.data.prepare import prepare
from chexvision_lib.evaluation.compare import compare_predictions
from chexvision_lib.evaluation.metrics import bootstrap_auc, holm_correction
from chexvision_lib.models.registry import (
    check_image_size,
    check_model_name,
    find_pretrained_weights,
    min_image_size,
)
from chexvision_lib.reporting.cross_dataset_plots import MACRO, cross_dataset_heatmap, output_title
from chexvision_lib.studies.study import (
    Cell,
    auc_with_ci,
    cell_train_config,
    check_data_kind,
    check_recorded_config,
    check_train_settings,
    evaluate_once,
    external_markdown,
    fine_tune_and_compare,
    fold_is_finished,
    frame_markdown,
    p_value_text,
    run_fold,
)
from chexvision_lib.training.config import TrainConfig

MATRIX_COLUMNS = [
    "train_dataset",
    "test_dataset",
    "output",
    "auc",
    "ci_low",
    "ci_high",
    "n_images",
    "n_patients",
    "n_positive",
]
FINE_TUNE_KEYS = ("from", "to", "epochs", "lr")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a folder name on any system
# Cache source kinds -> the label space they use (the Hub parquet variant is NIH's).
LABEL_KINDS = {"hub_parquet": "nih", "hub": "nih"}
# Kinds whose datasets share images: a patient may be in one's training and the other's test split.
SHARED_IMAGES = {
    frozenset({"nih", "rsna"}): "RSNA Pneumonia's images are NIH ChestX-ray14 images (relabelled "
    "by radiologists; Shih et al. 2019)",
}


# --- the config ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetEntry:
    name: str  # names the dataset in tables, figures and folders
    data_root: str
    kind: str = "auto"  # one of data.prepare.KINDS (auto: detected from the files)
    options: dict[str, Any] = field(default_factory=dict)  # reader options, e.g. {"target": ...}
    train: bool = True  # false: an evaluation-only dataset (scored, and a fine-tuning target)
    metadata_root: str | None = None  # kind hub only: the folder of NIH's metadata files

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise ValueError(
                f"name: {self.name!r} must be letters, digits, '_', '-' or '.' (a folder name)"
            )
        check_data_kind(self.kind, self.options)


@dataclass(frozen=True)
class FineTunePair:
    source: str  # "from": the dataset whose model is fine-tuned
    target: str  # "to": the dataset it is fine-tuned on and scored on
    epochs: int = 5
    lr: float = 1e-3

    @property
    def name(self) -> str:
        return f"{self.source}_to_{self.target}"


def parse_fine_tune(entry: object, number: int) -> FineTunePair:
    """One `fine_tune` entry {from, to, epochs, lr}; errors name the entry."""
    where = f"fine_tune[{number}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object {{from, to, epochs, lr}}, got {entry!r}")
    unknown = sorted(set(entry) - set(FINE_TUNE_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; accepted: {list(FINE_TUNE_KEYS)}")
    for key in ("from", "to"):
        if not isinstance(entry.get(key), str):
            raise ValueError(f"{where}: {key!r} must name a dataset, got {entry.get(key)!r}")
    values = {"source": entry["from"], "target": entry["to"]}
    values.update({key: entry[key] for key in ("epochs", "lr") if key in entry})
    try:
        pair = from_dict(FineTunePair, values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None
    if pair.epochs < 1 or pair.lr <= 0:
        raise ValueError(f"{where}: epochs must be >= 1 and lr > 0, got {pair.epochs}, {pair.lr}")
    return pair


def _fine_tune_dict(pair: FineTunePair) -> dict[str, Any]:
    return {"from": pair.source, "to": pair.target, "epochs": pair.epochs, "lr": pair.lr}


@dataclass(frozen=True)
class CrossDatasetConfig:
    out: str  # the study folder
    datasets: tuple[dict[str, Any], ...]  # DatasetEntry fields each; stored with defaults filled
    architecture: str = "seresnet_small"
    initialisation: Literal["scratch", "imagenet"] = "scratch"
    size: int = 128  # every cache and model input, px
    task: Literal["findings", "binary"] = "findings"  # dual head | one abnormal logit
    seed: int = 0  # training seed (the same for every model)
    split_seed: int = 0  # prepare's seeded splits (val; test where a dataset has no official one)
    prepare_workers: int | None = None
    train: dict[str, Any] = field(default_factory=dict)  # other TrainConfig fields, shared
    fine_tune: tuple[dict[str, Any], ...] = ()  # {from, to, epochs, lr} pairs
    n_resamples: int = 1000  # patient-bootstrap resamples for the CIs
    description: str = ""

    def __post_init__(self) -> None:
        entries = [self._entry(values, number) for number, values in enumerate(self.datasets)]
        names = [entry.name for entry in entries]
        if not entries:
            raise ValueError("datasets: give at least one dataset {name, data_root, ...}")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"datasets: the names {repeated} are used more than once")
        if not any(entry.train for entry in entries):
            raise ValueError(
                "datasets: no dataset has train=true; the study needs at least one to train on"
            )
        check_model_name(self.architecture, "architecture")  # built-in names and timm/<name>
        smallest = max(32, min_image_size(self.architecture))
        if not isinstance(self.size, int) or self.size < smallest:
            raise ValueError(
                f"size: {self.architecture} needs at least {smallest} px, got {self.size}"
            )
        try:
            check_image_size(self.architecture, self.size)
        except ValueError as error:
            raise ValueError(f"size: {error}") from None
        if self.n_resamples < 1:
            raise ValueError(f"n_resamples must be at least 1, got {self.n_resamples}")
        check_train_settings(self.train)
        pairs = [parse_fine_tune(entry, number) for number, entry in enumerate(self.fine_tune)]
        self._check_pairs(pairs, entries)
        # The resolved config (defaults filled in) is what study folders record.
        object.__setattr__(self, "datasets", tuple(to_dict(entry) for entry in entries))
        # Absolute: cross_dataset.json and the metrics record paths that must mean the same
        # files whatever the working directory of a later step (a card, a report).
        object.__setattr__(self, "out", str(Path(self.out).absolute()))
        object.__setattr__(self, "fine_tune", tuple(_fine_tune_dict(pair) for pair in pairs))

    @staticmethod
    def _entry(values: object, number: int) -> DatasetEntry:
        if not isinstance(values, dict):
            raise ValueError(f"datasets[{number}]: expected an object, got {values!r}")
        try:
            return from_dict(DatasetEntry, values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"datasets[{number}] ({values.get('name', '?')}): {error}") from None

    @staticmethod
    def _check_pairs(pairs: list[FineTunePair], entries: list[DatasetEntry]) -> None:
        trainable = [entry.name for entry in entries if entry.train]
        names = [entry.name for entry in entries]
        for number, pair in enumerate(pairs):
            where = f"fine_tune[{number}]"
            if pair.source not in trainable:
                raise ValueError(
                    f"{where}: from {pair.source!r} is not a dataset with train=true; those are "
                    f"{trainable}"
                )
            if pair.target not in names:
                raise ValueError(f"{where}: to {pair.target!r} is not a dataset; those are {names}")
            if pair.source == pair.target:
                raise ValueError(f"{where}: from and to are both {pair.source!r}")
        seen = [pair.name for pair in pairs]
        if len(set(seen)) != len(seen):
            raise ValueError(f"fine_tune: a pair is listed twice ({seen})")

    @property
    def entries(self) -> tuple[DatasetEntry, ...]:
        return tuple(DatasetEntry(**values) for values in self.datasets)

    @property
    def pairs(self) -> tuple[FineTunePair, ...]:
        return tuple(parse_fine_tune(entry, n) for n, entry in enumerate(self.fine_tune))

    @property
    def cell(self) -> Cell:
        """The one model recipe, as a study cell (architecture, initialisation, size, task)."""
        return Cell(self.architecture, self.initialisation, self.size, self.task)


def load_cross_dataset_config(path: str | Path) -> CrossDatasetConfig:
    """Read a cross-dataset study JSON file; unknown keys and bad values name the file."""
    return load_json_config(CrossDatasetConfig, path)


# --- data and models ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PreparedDataset:
    entry: DatasetEntry
    cache: Path
    source: dict[str, Any]  # cache.json's "source": the files read, their hashes, the counts

    @property
    def kind(self) -> str:
        """The label space the cache's labels are in (auto resolved, hub -> nih)."""
        kind = str(self.source.get("kind", self.entry.kind))
        return LABEL_KINDS.get(kind, kind)

    @property
    def provided(self) -> list[str]:
        """The findings this copy labels: the reader's record (a layout may label fewer than its
        dataset's map: VinDr's Kaggle copy), else the label map's (NIH, binary sets)."""
        recorded = self.source.get("provided_findings")
        return list(recorded) if recorded is not None else provided_findings(self.kind)


def cache_folder(config: CrossDatasetConfig, name: str) -> Path:
    return Path(config.out) / "caches" / f"{name}_{config.size}px"


def training_plan(config: CrossDatasetConfig) -> dict[str, TrainConfig]:
    """The TrainConfig of each dataset with train=true: the recipe on that dataset's cache."""
    return {
        entry.name: cell_train_config(
            config.train,
            config.cell,
            cache_folder(config, entry.name),
            Path(config.out) / "models" / entry.name,
            seed=config.seed,
        )
        for entry in config.entries
        if entry.train
    }


def check_before_work(config: CrossDatasetConfig, plan: dict[str, TrainConfig]) -> None:
    """Finished trainings must match the settings asked for now, and ImageNet weights must be
    on disk (nothing is downloaded), before hours of preparing and training start."""
    for train_config in plan.values():
        if fold_is_finished(Path(train_config.out)):
            check_recorded_config(Path(train_config.out), train_config)
    if config.initialisation == "imagenet":
        find_pretrained_weights(config.architecture, "imagenet")


def prepare_datasets(config: CrossDatasetConfig, show_progress: bool) -> dict[str, PreparedDataset]:
    """Prepare (or finish, or find prepared) every dataset's cache at the study's size."""
    prepared = {}
    for entry in config.entries:
        if show_progress:
            print(f"preparing {entry.name} ({entry.data_root}, kind {entry.kind})")
        cache = prepare(
            entry.data_root,
            cache_folder(config, entry.name),
            size=config.size,
            kind=entry.kind,
            options=entry.options,
            metadata_root=entry.metadata_root,
            seed=config.split_seed,
            workers=config.prepare_workers,
            progress=show_progress,
        )
        source = json.loads((cache / "cache.json").read_text()).get("source", {})
        prepared[entry.name] = PreparedDataset(entry, cache, source)
    return prepared


# --- the matrix ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MatrixCell:
    train: str
    test: str
    folder: Path  # predictions.csv + metrics.json of the train model on the test split
    outputs: tuple[str, ...]  # scored: the shared findings, then Abnormal
    never_learnt: tuple[str, ...]  # findings the test data labels but the training data does not


def shared_outputs(trained: list[str], tested: list[str], task: str) -> tuple[list[str], list[str]]:
    """(outputs a cell scores, findings left out because the training data never labelled them),
    from the findings the training and the test data label. A binary-task model predicts
    Abnormal only."""
    if task == "binary":
        return [ABNORMAL], []
    shared = [finding for finding in FINDINGS if finding in trained and finding in tested]
    return [*shared, ABNORMAL], [finding for finding in tested if finding not in trained]


def score_matrix(
    config: CrossDatasetConfig,
    runs: dict[str, Path],
    prepared: dict[str, PreparedDataset],
    show_progress: bool,
) -> list[MatrixCell]:
    """Every trained model on every dataset's test split (done ones are not scored again)."""
    scoring = {
        "n_resamples": config.n_resamples,
        "device": config.train.get("device", "auto"),
        "show_progress": show_progress,
    }
    cells = []
    for train, run in runs.items():
        for test, data in prepared.items():
            # A model's own test split was scored when it was trained (run_fold): the diagonal.
            own = train == test
            folder = run / "test" if own else evaluate_once(run, "test", data.cache, **scoring)
            outputs, never_learnt = shared_outputs(
                prepared[train].provided, data.provided, config.task
            )
            cells.append(MatrixCell(train, test, folder, tuple(outputs), tuple(never_learnt)))
            if show_progress:
                print(f"scored: trained on {train}, tested on {test} ({folder})")
    return cells


def _row(cell: MatrixCell, output: str, auc: float, low: float, high: float, **counts) -> dict:
    return {
        "train_dataset": cell.train,
        "test_dataset": cell.test,
        "output": output,
        "auc": float(auc),
        "ci_low": float(low),
        "ci_high": float(high),
        **counts,
    }


def cell_rows(cell: MatrixCell, frame: pd.DataFrame, n_resamples: int) -> list[dict[str, Any]]:
    """matrix.csv's rows for one cell: each shared output's AUC with its patient-bootstrap CI and
    counts (images with a known label), and the macro over the shared findings."""
    patients = frame["patient"].to_numpy()
    findings = [output for output in cell.outputs if output != ABNORMAL]
    rows = []
    for group in ([findings] if findings else []) + [[ABNORMAL]]:
        labels = frame[[label_column(o) for o in group]].to_numpy(dtype=float)
        probs = frame[[prob_column(o) for o in group]].to_numpy(dtype=float)
        ci = bootstrap_auc(labels, probs, patients, n_resamples=n_resamples, seed=0)
        for k, output in enumerate(group):
            known = labels[:, k] >= 0
            counts = {
                "n_images": int(known.sum()),
                "n_patients": int(pd.unique(patients[known]).size),
                "n_positive": int((labels[known, k] == 1).sum()),
            }
            rows.append(_row(cell, output, ci["auc"][k], ci["lower"][k], ci["upper"][k], **counts))
        if group is findings:
            known = (labels >= 0).any(axis=1)
            counts = {
                "n_images": int(known.sum()),
                "n_patients": int(pd.unique(patients[known]).size),
                "n_positive": math.nan,  # positives of which finding: not one number
            }
            macro = (ci["macro_auc"], ci["macro_lower"], ci["macro_upper"])
            rows.append(_row(cell, MACRO, *macro, **counts))
    return rows


def matrix_table(cells: list[MatrixCell], n_resamples: int) -> pd.DataFrame:
    rows = []
    for cell in cells:
        frame = read_predictions(cell.folder / "predictions.csv")
        rows += cell_rows(cell, frame, n_resamples)
    return pd.DataFrame(rows, columns=MATRIX_COLUMNS)


def figure_outputs(matrix: pd.DataFrame) -> list[str]:
    """The outputs drawn: Abnormal, the macro, then each finding scored in some cell."""
    present = set(matrix["output"])
    return [o for o in (ABNORMAL, MACRO, *FINDINGS) if o in present]


# --- fine-tuning --------------------------------------------------------------------------------
def run_fine_tune(
    pair: FineTunePair,
    config: CrossDatasetConfig,
    runs: dict[str, Path],
    prepared: dict[str, PreparedDataset],
    show_progress: bool,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The `from` model fine-tuned on `to`: before/after on `to`'s test split. Returns the
    pair's record and its fine_tune.csv rows (one per output the pair's cell scores)."""
    folder = Path(config.out) / "fine_tune" / pair.name
    target = prepared[pair.target]
    result = fine_tune_and_compare(
        runs[pair.source],
        [runs[pair.source]],
        target.cache,
        folder,
        settings={**config.train, "epochs": pair.epochs, "lr": pair.lr},
        size=config.size,
        seed=config.seed,
        n_resamples=config.n_resamples,
        device=config.train.get("device", "auto"),
        show_progress=show_progress,
    )
    result = {
        "from": pair.source,
        "to": pair.target,
        "external_root": target.entry.data_root,
        **result,
        "disclaimer": DISCLAIMER,
    }
    write_json_atomic(folder / "fine_tune.json", result)
    (folder / "summary.md").write_text(external_markdown(result))
    outputs, _ = shared_outputs(prepared[pair.source].provided, target.provided, config.task)
    return result, fine_tune_rows(pair, folder, outputs)


def fine_tune_rows(pair: FineTunePair, folder: Path, outputs: list[str]) -> list[dict[str, Any]]:
    """Before vs after per output: AUCs with patient-bootstrap CIs (metrics.json), the paired
    difference with DeLong's CI and p, Holm-adjusted across the pair's findings."""
    frames = {k: read_predictions(folder / k / "predictions.csv") for k in ("before", "after")}
    metrics = {k: json.loads((folder / k / "metrics.json").read_text()) for k in frames}
    table = compare_predictions(frames["after"], frames["before"]).set_index("output")
    rows = []
    for output in (o for o in outputs if o in table.index):
        test = table.loc[output]
        before = metrics["before"]["outputs"][output]
        after = metrics["after"]["outputs"][output]
        rows.append(
            {
                "from": pair.source,
                "to": pair.target,
                "output": output,
                "auc_before": before["auc"],
                "before_ci_low": before["auc_ci95"][0],
                "before_ci_high": before["auc_ci95"][1],
                "auc_after": after["auc"],
                "after_ci_low": after["auc_ci95"][0],
                "after_ci_high": after["auc_ci95"][1],
                "diff": float(test["diff"]),
                "diff_ci_low": float(test["ci_low"]),
                "diff_ci_high": float(test["ci_high"]),
                "p_value": float(test["p_value"]),
                "n_images": int(test["n"]),
                "n_positive": int(test["positives"]),
            }
        )
    findings = [i for i, row in enumerate(rows) if row["output"] != ABNORMAL]
    adjusted = holm_correction(np.array([rows[i]["p_value"] for i in findings], dtype=float))
    for row in rows:  # Abnormal is one test: nothing to adjust
        row["p_holm"] = row["p_value"]
    for i, p in zip(findings, adjusted, strict=True):
        rows[i]["p_holm"] = float(p)
    return rows


# --- the report ---------------------------------------------------------------------------------
def _grid_markdown(
    matrix: pd.DataFrame, output: str, trained: list[str], tested: list[str]
) -> list[str]:
    """One output's table: rows trained on, columns tested on; the diagonal in bold."""
    rows = matrix[matrix["output"] == output].set_index(["train_dataset", "test_dataset"])
    lines = []
    for train in trained:
        cells = [train]
        for test in tested:
            if (train, test) not in rows.index:
                cells.append("–")
                continue
            row = rows.loc[(train, test)]
            if math.isnan(row["auc"]):  # shared, but the test split has one class of it
                text = "n/a (one class)"
            else:
                text = auc_with_ci(row["auc"], row["ci_low"], row["ci_high"])
            cells.append(f"**{text}**" if train == test else text)
        lines.append(cells)
    header = ["trained on \\ tested on", *tested]
    frame = pd.DataFrame(lines, columns=header)
    return [f"## {output_title(output)}: AUC [95% CI]", "", frame_markdown(frame), ""]


def datasets_markdown(prepared: dict[str, PreparedDataset], matrix: pd.DataFrame) -> str:
    """Each dataset: kind, whether a model trained on it, its test split's size."""
    abnormal = matrix[matrix["output"] == ABNORMAL].drop_duplicates("test_dataset")
    tests = abnormal.set_index("test_dataset")
    rows = []
    for name, data in prepared.items():
        test = tests.loc[name] if name in tests.index else None
        rows.append(
            {
                "dataset": name,
                "kind": data.kind,
                "trained on": "yes" if data.entry.train else "no (evaluation only)",
                "test images": "–" if test is None else int(test["n_images"]),
                "test patients": "–" if test is None else int(test["n_patients"]),
                "Abnormal positives": "–" if test is None else int(test["n_positive"]),
                "findings labelled": len(data.provided),
            }
        )
    return frame_markdown(pd.DataFrame(rows))


def never_learnt_notes(prepared: dict[str, PreparedDataset], cells: list[MatrixCell]) -> list[str]:
    """Which findings each off-diagonal cell leaves out: the test data labels them, the training
    data never did, so the model never learnt them."""
    notes = []
    for cell in cells:
        if not cell.never_learnt or cell.train == cell.test:
            continue
        if not prepared[cell.train].provided:
            left_out = f"every finding {cell.test} labels ({cell.train} labels none)"
        else:
            left_out = (
                f"{', '.join(cell.never_learnt)} ({cell.test} labels them, {cell.train} does not)"
            )
        where = f"Trained on {cell.train}, tested on {cell.test}"
        notes.append(f"- {where}: left out {left_out}: never learnt.")
    return notes


def caveats(prepared: dict[str, PreparedDataset]) -> list[str]:
    """Datasets in the study that share images (by kind: images are not matched)."""
    notes = []
    names = list(prepared)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            kinds = frozenset({prepared[a].kind, prepared[b].kind})
            if kinds in SHARED_IMAGES:
                reason = SHARED_IMAGES[kinds]
            elif len(kinds) == 1 and prepared[a].kind != "binary":
                reason = f"both are {prepared[a].kind} data"
            else:
                continue
            notes.append(
                f"- Patient overlap: {a} and {b} may hold the same patients ({reason}): the cells "
                f"between them are not an independent external test."
            )
    return notes


def matrix_markdown(
    config: CrossDatasetConfig,
    prepared: dict[str, PreparedDataset],
    cells: list[MatrixCell],
    matrix: pd.DataFrame,
    fine_tunes: pd.DataFrame,
) -> str:
    trained = list(dict.fromkeys(cell.train for cell in cells))
    tested = list(prepared)
    lines = [
        f"# Cross-dataset study: {config.description or Path(config.out).name}",
        "",
        f"One recipe for every model: {config.architecture}, {config.initialisation}, "
        f"{config.size} px, {config.task} task, seed {config.seed}; one model per training "
        "dataset, trained on its train split (validation: its val split), scored on every "
        "dataset's test split.",
        "",
        datasets_markdown(prepared, matrix),
        "",
    ]
    for output in figure_outputs(matrix):
        lines += _grid_markdown(matrix, output, trained, tested)
    lines += [
        "- **Bold**: in-distribution (the model's own dataset's test split); every other cell "
        "is a dataset the model never saw.",
        f"- 95% CIs: patient bootstrap, {config.n_resamples} resamples. –: the output is not "
        "shared by the two datasets; n/a: the test split holds one class of it.",
        "- Abnormal is each test dataset's own label (its reader's definition), so a column "
        "compares models on one definition.",
        "- The macro AUC averages the findings a cell shares, which differ between cells.",
    ]
    lines += never_learnt_notes(prepared, cells)
    lines += caveats(prepared)
    if not fine_tunes.empty:
        lines += ["", *fine_tune_markdown(fine_tunes)]
    return "\n".join([*lines, "", DISCLAIMER]) + "\n"


def fine_tune_markdown(rows: pd.DataFrame) -> list[str]:
    shown = pd.DataFrame(
        {
            "fine-tuned": [f"{a} -> {b}" for a, b in zip(rows["from"], rows["to"], strict=True)],
            "output": rows["output"],
            "before": [
                auc_with_ci(*values)
                for values in zip(
                    rows["auc_before"], rows["before_ci_low"], rows["before_ci_high"], strict=True
                )
            ],
            "after": [
                auc_with_ci(*values)
                for values in zip(
                    rows["auc_after"], rows["after_ci_low"], rows["after_ci_high"], strict=True
                )
            ],
            "difference [95% CI]": [
                f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                for d, lo, hi in zip(
                    rows["diff"], rows["diff_ci_low"], rows["diff_ci_high"], strict=True
                )
            ],
            "p DeLong (Holm)": [
                f"{p_value_text(p)} ({p_value_text(h)})"
                for p, h in zip(rows["p_value"], rows["p_holm"], strict=True)
            ],
        }
    )
    return [
        "## Fine-tuning: before and after, on the target's test split",
        "",
        frame_markdown(shown),
        "",
        "- Before: the model as trained, at its own validation thresholds; after: fine-tuned on "
        "the target's train split (thresholds from its val split). Same test images, so DeLong's "
        "paired test applies; Holm adjusts across a pair's findings.",
    ]


# --- the study ----------------------------------------------------------------------------------
def run_cross_dataset(
    config: CrossDatasetConfig | str | Path, show_progress: bool = True
) -> pd.DataFrame:
    """Prepare every dataset, train one model per training dataset, score every model on every
    test split, fine-tune the pairs asked for; write the matrix, its tables and figures.

    Returns the matrix (matrix.csv: one row per trained on x tested on x output).
    """
    if not isinstance(config, CrossDatasetConfig):
        config = load_cross_dataset_config(config)
    started = time.perf_counter()
    plan = training_plan(config)
    check_before_work(config, plan)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "cross_dataset.json", {"config": to_dict(config)})
    prepared = prepare_datasets(config, show_progress)
    runs = {}
    for number, (name, train_config) in enumerate(plan.items(), start=1):
        runs[name], done = run_fold(
            train_config,
            n_resamples=config.n_resamples,
            device=config.train.get("device", "auto"),
            show_progress=show_progress,
        )
        if show_progress:
            minutes = (time.perf_counter() - started) / 60
            print(f"[model {number}/{len(plan)}] trained on {name}: {done} ({minutes:.1f} min)")
    cells = score_matrix(config, runs, prepared, show_progress)
    matrix = matrix_table(cells, config.n_resamples)
    matrix.to_csv(out / "matrix.csv", index=False)
    pairs, fine_rows = [], []
    for pair in config.pairs:
        record, rows = run_fine_tune(pair, config, runs, prepared, show_progress)
        pairs.append(record)
        fine_rows += rows
    fine_tunes = pd.DataFrame(fine_rows)
    if fine_rows:
        fine_tunes.to_csv(out / "fine_tune.csv", index=False)
    figures = {}
    for output in figure_outputs(matrix):
        figures[output] = str(out / f"matrix_{output}.png")
        cross_dataset_heatmap(
            matrix,
            output,
            trained=list(runs),
            tested=list(prepared),
            n_resamples=config.n_resamples,
            path=figures[output],
        )
    markdown = matrix_markdown(config, prepared, cells, matrix, fine_tunes)
    (out / "matrix.md").write_text(markdown)
    record = study_record(config, prepared, runs, cells, pairs, figures)
    write_json_atomic(out / "cross_dataset.json", record)
    if show_progress:
        print()
        print(markdown)
        print(f"cross-dataset study took {(time.perf_counter() - started) / 60:.1f} min; in {out}")
    return matrix


def study_record(
    config: CrossDatasetConfig,
    prepared: dict[str, PreparedDataset],
    runs: dict[str, Path],
    cells: list[MatrixCell],
    pairs: list[dict[str, Any]],
    figures: dict[str, str],
) -> dict[str, Any]:
    """cross_dataset.json: what was asked, what each dataset was, where every result lies."""
    out = Path(config.out)
    return {
        "config": to_dict(config),
        "datasets": {
            name: {
                "kind": data.kind,
                "data_root": data.entry.data_root,
                "cache": str(data.cache),
                "source_sha256": data.source.get("sha256"),
                "synthetic": data.source.get("synthetic"),
                "provided_findings": data.provided,
                "model": str(runs[name]) if name in runs else None,
            }
            for name, data in prepared.items()
        },
        "cells": [
            {
                "train_dataset": cell.train,
                "test_dataset": cell.test,
                "predictions": str(cell.folder / "predictions.csv"),
                "metrics": str(cell.folder / "metrics.json"),
                "outputs": list(cell.outputs),
                "never_learnt": list(cell.never_learnt),
            }
            for cell in cells
        ],
        "fine_tune": [
            {
                key: pair[key]
                for key in ("from", "to", "fine_tune", "before", "after", "delong_after_vs_before")
            }
            | {"folder": str(out / "fine_tune" / f"{pair['from']}_to_{pair['to']}")}
            for pair in pairs
        ],
        "files": {
            "matrix_csv": str(out / "matrix.csv"),
            "matrix_md": str(out / "matrix.md"),
            "fine_tune_csv": str(out / "fine_tune.csv") if pairs else None,
            "figures": figures,
        },
        "caveats": [note.removeprefix("- ") for note in caveats(prepared)],
        "disclaimer": DISCLAIMER,
    }
