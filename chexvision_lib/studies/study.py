"""Studies: the Tang et al. (2020) experiment grid as one command, and external validation.

A study config (JSON -> `StudyConfig`) names a grid of cells, architecture x initialisation x
resolution x task, and trains every cell as k patient-grouped cross-validation folds over the
cache's train + val images. Every fold's model scores the same, untouched test split; the cell's
test result is the fold-averaged ensemble (mean of the k models' probabilities per image), scored
at thresholds chosen on the out-of-fold validation predictions — each image of train + val is
predicted once, by the one model that did not train on it — never on the test split.

Study folder (`out`):
    study.json                  the resolved StudyConfig
    data/                       the built-in synthetic set, when the config asks for it
    caches/<size>px/            caches prepared from the data root, one per resolution
    <arch>-<init>-<size>px-<task>/
        fold<i>/                a run folder (train.py) with val/ and test/ predictions + metrics
        ensemble/               predictions.csv (test, fold-averaged), oof_val_predictions.csv,
                                metrics.json (AUCs with patient-bootstrap CIs, OOF thresholds)
    summary.csv, summary.md     one row per cell, DeLong p-values vs the reference cell

Re-running a study continues it: a fold whose test metrics exist is not trained again, an
interrupted fold resumes from its last checkpoint, and the ensembles and summary are recomputed
from the files (cheap and deterministic).

`external_validation` scores a trained run (or a study cell's fold ensemble) on another dataset
before and after fine-tuning on that dataset's training split, on the same external test images.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexvision_lib.core.atomic_files import write_json_atomic
from chexvision_lib.core.config import load_json_config, to_dict
from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.core.hashing import file_sha256
from chexvision_lib.core.labels import ABNORMAL, FINDINGS, OUTPUTS
from chexvision_lib.core.predictions import label_column, prob_column, read_predictions
from chexvision_lib.data.cache import cache_fingerprint, open_cache
from chexvision_lib.data.prepare import KINDS, check_options, prepare
from chexvision_lib.data.synthetic import MARKER_NAME, write_synthetic_nih
from chexvision_lib.evaluation.compare import compare_predictions
from chexvision_lib.evaluation.evaluate import (
    evaluate_run,
    metrics_from_predictions,
    same_data,
    tta_folder,
)
from chexvision_lib.evaluation.metrics import choose_thresholds_for, holm_correction
from chexvision_lib.models.registry import (
    WEIGHTS_FILE,
    check_image_size,
    check_model_name,
    find_pretrained_weights,
    min_image_size,
)
from chexvision_lib.models.tta import check_tta
from chexvision_lib.publishing.model_card import markdown_table
from chexvision_lib.training.config import TrainConfig
from chexvision_lib.training.loop import fit
from chexvision_lib.training.recipes import config_with_recipe

INITIALISATIONS = ("scratch", "imagenet")
TASKS = ("findings", "binary")
# TrainConfig fields that the study sets per cell and fold; a `train` dict may not set them.
STUDY_CONTROLLED = (
    "cache",
    "out",
    "model",
    "head",
    "pretrained",
    "init_from",
    "image_size",
    "folds",
    "fold",
    "seed",
)
SETTINGS_THAT_DO_NOT_CHANGE_RESULTS = (
    "device",
    "threads",
    "log",
    "hub_checkpoint_repo",
    "hub_checkpoint_every",
)
PROB_COLUMNS = [prob_column(name) for name in OUTPUTS]
LABEL_COLUMNS = [label_column(name) for name in OUTPUTS]
# Operating-point metrics: metrics.binary_metrics key -> column title in the markdown tables.
OPERATING_POINT_TITLES = {
    "sensitivity": "sens",
    "specificity": "spec",
    "ppv": "PPV",
    "npv": "NPV",
    "f1": "F1",
    "accuracy": "acc",
}


# --- the config ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyConfig:
    out: str  # the study folder
    # The data, exactly one of: a prepared cache (every size must be <= its size), a data root
    # the study prepares at each size (any `prepare` source), or the built-in synthetic set of
    # this many patients (written under out/data; what CI runs).
    cache: str | None = None
    data_root: str | None = None
    synthetic_patients: int = 0
    kind: str = "auto"  # data_root's kind: one of data.prepare.KINDS (auto: detected)
    # The reader's options for data_root, e.g. {"target": "lung-opacity"} for rsna (see prepare).
    options: dict[str, Any] = field(default_factory=dict)
    metadata_root: str | None = None  # hub parquet sources only
    split_seed: int = 0  # prepare's seeded splits (val; the test split of binary datasets)
    prepare_workers: int | None = None
    # The grid: every combination is one cell.
    architectures: tuple[str, ...] = ("seresnet_small",)
    initialisations: tuple[str, ...] = ("scratch",)  # scratch | imagenet
    sizes: tuple[int, ...] = (128,)
    tasks: tuple[str, ...] = ("findings",)  # findings (dual head) | binary (one abnormal logit)
    folds: int = 5  # patient-grouped k-fold cross-validation over train + val
    seed: int = 0  # fold assignment and training seed (the same for every cell, so the folds are)
    train: dict[str, Any] = field(default_factory=dict)  # other TrainConfig fields, shared
    n_resamples: int = 1000  # patient-bootstrap resamples for the CIs
    reference: str | None = None  # the cell the others are DeLong-tested against (default: first)
    # Test-time augmentations (models/tta.py, e.g. "hflip") each cell is also scored with: the
    # same fold models, one more summary row per augmentation ("<cell>+tta-hflip").
    tta: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        sources = [self.cache is not None, self.data_root is not None, self.synthetic_patients > 0]
        if sum(sources) != 1:
            raise ValueError(
                "give exactly one data source: cache (a prepared cache), data_root (a dataset "
                "to prepare at each size) or synthetic_patients (> 0: the built-in synthetic set)"
            )
        check_data_kind(self.kind, self.options, data_root=self.data_root is not None)
        if not self.architectures or len(set(self.architectures)) != len(self.architectures):
            raise ValueError(
                f"architectures: give one or more distinct names, got {self.architectures}"
            )
        for arch in self.architectures:
            check_model_name(arch, "architectures")  # built-in names and timm/<name>
        _check_choices("initialisations", self.initialisations, INITIALISATIONS)
        _check_choices("tasks", self.tasks, TASKS)
        if not self.sizes or len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"sizes: give one or more distinct sizes, got {list(self.sizes)}")
        for arch in self.architectures:
            for size in self.sizes:
                smallest = max(32, min_image_size(arch))
                if not isinstance(size, int) or size < smallest:
                    raise ValueError(f"sizes: {arch} needs at least {smallest} px, got {size!r}")
                try:
                    check_image_size(arch, size)
                except ValueError as error:
                    raise ValueError(f"sizes: {error}") from None
        if self.folds < 2:
            raise ValueError(
                f"folds must be at least 2 (k-fold cross-validation), got {self.folds}"
            )
        if self.n_resamples < 1:
            raise ValueError(f"n_resamples must be at least 1, got {self.n_resamples}")
        check_train_settings(self.train)
        if len(set(self.tta)) != len(self.tta) or "none" in self.tta:
            raise ValueError(f"tta: give distinct augmentations other than none, got {self.tta}")
        for tta in self.tta:
            check_tta(tta)
        names = [cell.name for cell in grid(self)]
        if self.reference is not None and self.reference not in names:
            raise ValueError(f"reference: {self.reference!r} is not a cell; the cells are {names}")


def _check_choices(name: str, values: tuple[str, ...], accepted: tuple[str, ...]) -> None:
    if not values or len(set(values)) != len(values):
        raise ValueError(f"{name}: give one or more distinct values, got {list(values)}")
    unknown = [value for value in values if value not in accepted]
    if unknown:
        raise ValueError(f"{name}: {unknown} not accepted; choose from {list(accepted)}")


def check_data_kind(kind: str, options: dict[str, Any], *, data_root: bool = True) -> None:
    """`kind` is one prepare reads; `options` are reader options that kind takes. With kind auto
    the options are checked once prepare has detected the kind (before any image is decoded)."""
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(options, dict):
        raise TypeError(f"options: expected an object of reader options, got {options!r}")
    if options and not data_root:
        raise ValueError("options: reader options apply to a data_root the study prepares only")
    if options and kind != "auto":
        try:
            check_options(kind, options)
        except ValueError as error:
            raise ValueError(f"options: {error}") from None


def check_train_settings(train: dict[str, Any]) -> None:
    """The shared `train` dict: TrainConfig fields only, none of those the study sets itself."""
    if not isinstance(train, dict):
        raise TypeError(f"train: expected an object of TrainConfig fields, got {train!r}")
    controlled = sorted(set(train) & set(STUDY_CONTROLLED))
    if controlled:
        raise ValueError(
            f"train: {controlled} are set by the study per cell and fold (architectures, "
            "initialisations, sizes, tasks, folds, seed, the data source); remove them"
        )
    try:  # type-checks the values (and the recipe's name), rejecting unknown fields by name
        config_with_recipe({"cache": "-", "out": "-", **train})
    except (TypeError, ValueError) as error:
        raise ValueError(f"train: {error}") from None


def load_study_config(path: str | Path) -> StudyConfig:
    """Read a study JSON file; unknown keys and bad values are errors naming the file."""
    return load_json_config(StudyConfig, path)


# --- the grid -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    arch: str
    init: str
    size: int
    task: str

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.init}-{self.size}px-{self.task}"

    @property
    def head(self) -> str:
        return "dual" if self.task == "findings" else "binary"


def grid(config: StudyConfig) -> list[Cell]:
    """Every cell, in the order architecture x initialisation x resolution x task."""
    return [
        Cell(arch, init, size, task)
        for arch in config.architectures
        for init in config.initialisations
        for size in config.sizes
        for task in config.tasks
    ]


def reference_cell(config: StudyConfig) -> str:
    return config.reference or grid(config)[0].name


# --- data ---------------------------------------------------------------------------------------
def synthetic_root(config: StudyConfig, show_progress: bool) -> Path:
    """Write the built-in synthetic set under out/data once (again only if its arguments change)."""
    root = Path(config.out) / "data"
    image_size = max(64, *config.sizes)
    wanted = {"n_patients": config.synthetic_patients, "image_size": image_size}
    marker = root / MARKER_NAME
    if marker.exists():
        arguments = json.loads(marker.read_text())["arguments"]
        if all(arguments.get(k) == v for k, v in wanted.items()) and (
            arguments.get("seed") == config.split_seed
        ):
            return root
    if show_progress:
        print(f"writing the synthetic set ({config.synthetic_patients} patients) to {root}")
    write_synthetic_nih(root, seed=config.split_seed, **wanted)
    return root


def cache_paths(config: StudyConfig) -> dict[int, Path]:
    """The cache each size trains on: the given cache, or one per size under out/caches."""
    if config.cache is not None:
        return {size: Path(config.cache) for size in config.sizes}
    return {size: Path(config.out) / "caches" / f"{size}px" for size in config.sizes}


def prepare_caches(config: StudyConfig, show_progress: bool) -> dict[int, Path]:
    """Check the given cache is large enough, or prepare (or finish preparing) one per size."""
    caches = cache_paths(config)
    if config.cache is not None:
        _, _, info = open_cache(config.cache)
        cache_size = int(info["shape"][1])
        too_large = [size for size in config.sizes if size > cache_size]
        if too_large:
            raise ValueError(
                f"sizes {too_large} exceed the {cache_size} px of cache {config.cache}; prepare a "
                "larger cache or give data_root so the study prepares one per size"
            )
        return caches
    root = synthetic_root(config, show_progress) if config.synthetic_patients else config.data_root
    for size, folder in caches.items():
        prepare(
            root,
            folder,
            size=size,
            kind="nih" if config.synthetic_patients else config.kind,
            options=config.options,
            metadata_root=config.metadata_root,
            seed=config.split_seed,
            workers=config.prepare_workers,
            progress=show_progress,
        )
    return caches


# --- one fold -----------------------------------------------------------------------------------
def cell_train_config(
    train: dict[str, Any],
    cell: Cell,
    cache: Path,
    out: Path,
    *,
    seed: int,
    folds: int = 0,
    fold: int = 0,
) -> TrainConfig:
    """The TrainConfig of one model of `cell` on `cache`: the shared `train` settings (on top of
    their recipe, when they name one) with what the cell fixes."""
    values = {
        **train,
        "cache": str(cache),
        "out": str(out),
        "model": cell.arch,
        "head": cell.head,
        "pretrained": "imagenet" if cell.init == "imagenet" else None,
        "image_size": cell.size,
        "folds": folds,
        "fold": fold,
        "seed": seed,
    }
    return config_with_recipe(values)


def fold_config(config: StudyConfig, cell: Cell, fold: int, cache: Path) -> TrainConfig:
    out = Path(config.out) / cell.name / f"fold{fold}"
    return cell_train_config(
        config.train, cell, cache, out, seed=config.seed, folds=config.folds, fold=fold
    )


def fold_is_finished(run: Path) -> bool:
    """Test metrics are written last, after the validation predictions the thresholds need."""
    return (run / "test" / "metrics.json").exists() and (run / "val" / "predictions.csv").exists()


def check_recorded_config(run: Path, config: TrainConfig) -> None:
    """A finished fold counts only if it was trained with the settings asked for now (where it
    ran, on how many threads, and checkpoint uploads do not change what was learned)."""
    recorded = json.loads((run / "config.json").read_text())
    if isinstance(recorded.get("cache"), dict):  # config.json records the cache with its details
        recorded["cache"] = recorded["cache"]["path"]
    changed = sorted(
        name
        # through JSON, as config.json was written: a tuple reads back as a list
        for name, value in json.loads(json.dumps(to_dict(config))).items()
        if name in recorded
        and name not in SETTINGS_THAT_DO_NOT_CHANGE_RESULTS
        and recorded[name] != value
    )
    if changed:
        raise ValueError(
            f"{run} was trained with other settings ({changed}); delete that folder to retrain "
            "it, or give the study another out folder"
        )


def run_fold(
    config: TrainConfig, *, n_resamples: int, device: str, show_progress: bool
) -> tuple[Path, str]:
    """Train (or resume) one fold, then score its validation fold and the test split.

    Returns the run folder and what was done: "done before", "resumed" or "trained".
    """
    run = Path(config.out)
    if fold_is_finished(run):
        check_recorded_config(run, config)
        return run, "done before"
    resume = (run / "checkpoints" / "last.pt").exists()
    fit(config, resume=resume, show_progress=show_progress)
    for split in ("val", "test"):  # test last: its metrics.json marks the fold as finished
        evaluate_run(
            run, split, device=device, n_resamples=n_resamples, show_progress=show_progress
        )
    return run, "resumed" if resume else "trained"


# --- the ensemble -------------------------------------------------------------------------------
def fold_average(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Mean of the members' probabilities per image; all members must score the same images."""
    first = frames[0]
    for number, frame in enumerate(frames[1:], start=1):
        if not frame["image_id"].reset_index(drop=True).equals(first["image_id"]):
            raise ValueError(f"member {number} scored other images than member 0; cannot average")
        if not np.array_equal(frame[LABEL_COLUMNS].to_numpy(), first[LABEL_COLUMNS].to_numpy()):
            raise ValueError(f"member {number} has other labels than member 0; cannot average")
    averaged = first.copy()
    # A binary head's findings are NaN in every member, and stay NaN (not scored).
    averaged[PROB_COLUMNS] = np.mean([f[PROB_COLUMNS].to_numpy(dtype=float) for f in frames], 0)
    return averaged


def out_of_fold_predictions(runs: list[Path], subfolder: str = "") -> pd.DataFrame:
    """Each fold's model on its own validation fold, concatenated: every train + val image once.
    `subfolder`: read the predictions made with a test-time augmentation (e.g. "tta-hflip")."""
    frames = [
        read_predictions(run / "val" / subfolder / "predictions.csv").assign(fold=number)
        for number, run in enumerate(runs)
    ]
    oof = pd.concat(frames, ignore_index=True)
    repeated = oof["image_id"][oof["image_id"].duplicated()]
    if not repeated.empty:
        raise ValueError(f"image {repeated.iloc[0]!r} is in two validation folds; folds overlap")
    return oof


def thresholds_from(frame: pd.DataFrame, method: str) -> list[float | None]:
    """Per-output thresholds chosen on a predictions frame (None where an output is unusable)."""
    return choose_thresholds_for(
        frame[PROB_COLUMNS].to_numpy(dtype=float),
        frame[LABEL_COLUMNS].to_numpy(dtype=float),
        method,
    )


def primary_auc(metrics: dict, task: str) -> tuple[str, float, list[float] | None]:
    """The cell's headline AUC: macro over the 14 findings for a findings task (when the data
    has finding labels), else the abnormal output's. Returns (name, AUC, 95% CI)."""
    if task == "findings" and metrics.get("macro_auc") is not None:
        return "macro AUC (14 findings)", metrics["macro_auc"], metrics.get("macro_auc_ci95")
    abnormal = metrics["outputs"][ABNORMAL]
    return "Abnormal AUC", abnormal["auc"], abnormal["auc_ci95"]


def build_ensemble(
    cell: Cell,
    runs: list[Path],
    folder: Path,
    *,
    threshold_method: str,
    n_resamples: int,
    subfolder: str = "",
) -> dict:
    """ensemble/: fold-averaged test predictions scored at out-of-fold validation thresholds.
    With `subfolder` (a test-time augmentation's, "tta-hflip"), both the test predictions and
    the out-of-fold ones that choose the thresholds are those made with that augmentation."""
    folder.mkdir(parents=True, exist_ok=True)
    oof = out_of_fold_predictions(runs, subfolder)
    thresholds = thresholds_from(oof, threshold_method)
    tests = [read_predictions(run / "test" / subfolder / "predictions.csv") for run in runs]
    ensemble = fold_average(tests)
    oof.to_csv(folder / "oof_val_predictions.csv", index=False)
    ensemble.to_csv(folder / "predictions.csv", index=False)
    metrics = metrics_from_predictions(ensemble, thresholds, split="test", n_resamples=n_resamples)
    fold_metrics = [
        json.loads((run / "test" / subfolder / "metrics.json").read_text()) for run in runs
    ]
    metrics["ensemble"] = {
        "cell": cell.name,
        "members": [str(run) for run in runs],
        "combination": "mean of the fold models' probabilities per image",
        "fold_aucs": [primary_auc(m, cell.task)[1] for m in fold_metrics],
        "fold_auc_name": primary_auc(fold_metrics[0], cell.task)[0],
    }
    metrics["threshold_source"] = (
        f"out-of-fold validation predictions ({len(oof)} images, {threshold_method})"
    )
    write_json_atomic(folder / "metrics.json", metrics)
    return metrics


# --- the summary --------------------------------------------------------------------------------
def training_seconds(runs: list[Path]) -> float:
    """Seconds spent in training epochs (history.csv; excludes evaluation), summed over folds."""
    return float(sum(pd.read_csv(run / "history.csv")["seconds"].sum() for run in runs))


def summary_row(
    cell: Cell, metrics: dict, train_seconds: float, tta: str = "none"
) -> dict[str, Any]:
    name, auc, ci = primary_auc(metrics, cell.task)
    fold_aucs = np.array(metrics["ensemble"]["fold_aucs"], dtype=float)
    abnormal = metrics["outputs"][ABNORMAL]
    operating = abnormal.get("at_validation_threshold", {})
    return {
        "cell": cell.name if tta == "none" else f"{cell.name}+{tta_folder(tta)}",
        "task": cell.task,
        "tta": tta,
        "arch": cell.arch,
        "init": cell.init,
        "size": cell.size,
        "folds": len(fold_aucs),
        "auc_metric": name,
        "fold_auc_mean": float(np.mean(fold_aucs)),
        "fold_auc_sd": float(np.std(fold_aucs, ddof=1)) if len(fold_aucs) > 1 else math.nan,
        "ensemble_auc": auc,
        "ensemble_auc_ci_low": ci[0] if ci else math.nan,
        "ensemble_auc_ci_high": ci[1] if ci else math.nan,
        "abnormal_auc": abnormal["auc"],
        "abnormal_auc_ci_low": abnormal["auc_ci95"][0],
        "abnormal_auc_ci_high": abnormal["auc_ci95"][1],
        "threshold": operating.get("threshold", math.nan),
        **{key: operating.get(key, math.nan) for key in OPERATING_POINT_TITLES},
        "n_test_images": metrics["n_images"],
        "train_seconds": train_seconds,
    }


def delong_against_reference(
    ensembles: dict[str, pd.DataFrame], reference: str
) -> dict[str, dict[str, float]]:
    """DeLong test of each cell's ensemble vs the reference's, on the abnormal output (and how
    many findings differ at Holm-adjusted p < 0.05 across the 14, when both score findings)."""
    results: dict[str, dict[str, float]] = {}
    for name, frame in ensembles.items():
        if name == reference:
            continue
        table = compare_predictions(frame, ensembles[reference]).set_index("output")
        findings = table.index.intersection(FINDINGS)
        results[name] = {
            "auc_diff": float(table.loc[ABNORMAL, "diff"]),
            "p_delong": float(table.loc[ABNORMAL, "p_value"]),
            "findings_p_holm_below_005": (
                int((table.loc[findings, "p_holm"] < 0.05).sum()) if len(findings) else math.nan
            ),
        }
    return results


def add_delong_columns(
    summary: pd.DataFrame, tests: dict[str, dict[str, float]], reference: str
) -> pd.DataFrame:
    """p-values vs the reference, Holm-adjusted across the cells compared with it."""

    def column(key: str) -> list[float]:
        return [tests.get(cell, {}).get(key, math.nan) for cell in summary["cell"]]

    p_delong = np.array(column("p_delong"), dtype=float)
    return summary.assign(
        reference=summary["cell"] == reference,
        auc_diff_vs_reference=column("auc_diff"),
        p_delong=p_delong,
        p_holm=holm_correction(p_delong),  # NaN (the reference) is not counted as a test
        findings_p_holm_below_005=column("findings_p_holm_below_005"),
    )


def number_text(value: float, digits: int = 3) -> str:
    """A number for a Markdown table; '–' where it is missing (None / NaN)."""
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (f"{value:.{digits}f}")
    )


def p_value_text(value: float) -> str:
    """A p-value to 3 decimals, '<0.001' below that, '–' where there is none."""
    if math.isnan(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def auc_with_ci(auc: float, low: float | None, high: float | None) -> str:
    """'0.912 [0.880, 0.940]'."""
    low = math.nan if low is None else low
    high = math.nan if high is None else high
    return f"{number_text(auc)} [{number_text(low)}, {number_text(high)}]"


def _auc_column(summary: pd.DataFrame, prefix: str) -> list[str]:
    columns = (summary[prefix], summary[f"{prefix}_ci_low"], summary[f"{prefix}_ci_high"])
    return [auc_with_ci(*values) for values in zip(*columns, strict=True)]


def frame_markdown(frame: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (the model card's table writer)."""
    rows = [[str(value) for value in row] for row in frame.itertuples(index=False)]
    return markdown_table([str(column) for column in frame.columns], rows)


def summary_markdown(summary: pd.DataFrame, config: StudyConfig, threshold_method: str) -> str:
    """The table a person reads: one row per cell, numbers rounded, p-values vs the reference."""
    reference = reference_cell(config)
    shown = pd.DataFrame(
        {
            "cell": summary["cell"],
            "task": summary["task"],
            "AUC": summary["auc_metric"],
            f"fold AUC (mean ± sd, k={config.folds})": [
                f"{number_text(m)} ± {number_text(s)}"
                for m, s in zip(summary["fold_auc_mean"], summary["fold_auc_sd"], strict=True)
            ],
            "ensemble AUC [95% CI]": _auc_column(summary, "ensemble_auc"),
        }
    )
    if (summary["auc_metric"] != "Abnormal AUC").any():
        shown["Abnormal AUC [95% CI]"] = _auc_column(summary, "abnormal_auc")
    # Training time summed over the folds (history.csv; evaluation and TTA scoring excluded).
    shown["train min"] = (summary["train_seconds"] / 60).map(lambda m: f"{m:.1f}")
    shown["threshold"] = summary["threshold"].map(number_text)
    for column, title in OPERATING_POINT_TITLES.items():
        shown[title] = summary[column].map(number_text)
    if (summary["task"] == "findings").any():
        shown["findings p<0.05 (Holm)"] = [
            "–" if math.isnan(n) else f"{int(n)}/{len(FINDINGS)}"
            for n in summary["findings_p_holm_below_005"]
        ]
    shown["p DeLong (Holm)"] = [
        "reference" if is_reference else f"{p_value_text(p)} ({p_value_text(h)})"
        for is_reference, p, h in zip(
            summary["reference"], summary["p_delong"], summary["p_holm"], strict=True
        )
    ]
    notes = [
        f"# Study: {config.description or Path(config.out).name}",
        "",
        frame_markdown(shown),
        "",
        f"- Each cell: {config.folds}-fold cross-validation grouped by patient over train + val; "
        "every fold's model scores the same held-out test split. Fold AUC: mean ± sd of the "
        "folds' test AUCs. Ensemble: the mean of the folds' probabilities per test image.",
        f"- 95% CIs: patient bootstrap, {config.n_resamples} resamples.",
        "- Operating point (Abnormal output): threshold chosen on the out-of-fold validation "
        f"predictions ({threshold_method}); the test split never chooses it.",
        f"- p: DeLong test of each ensemble's Abnormal AUC vs the reference cell `{reference}` "
        "on the same test images, Holm-adjusted across the cells compared.",
    ]
    if config.tta:
        notes.append(
            "- `+tta-<name>` rows: the same fold models scored with test-time augmentation "
            "(logits averaged over the views); their thresholds are chosen on the out-of-fold "
            "validation predictions made with the same augmentation."
        )
    if "findings p<0.05 (Holm)" in shown.columns:
        notes.append(
            "- Findings p<0.05: how many of the 14 findings' AUCs differ from the reference's "
            "(DeLong, Holm-adjusted across the 14)."
        )
    notes += ["", DISCLAIMER]
    return "\n".join(notes) + "\n"


# --- the study ----------------------------------------------------------------------------------
def score_with_tta(runs: list[Path], tta: str, *, n_resamples: int, device: str) -> None:
    """Each fold's validation and test splits scored with test-time augmentation `tta` (into
    <split>/tta-<tta>/), unless done before; "none" needs nothing (run_fold scored them)."""
    if tta == "none":
        return
    for run in runs:
        for split in ("val", "test"):
            if not (run / split / tta_folder(tta) / "metrics.json").exists():
                evaluate_run(
                    run, split, device=device, n_resamples=n_resamples, show_progress=False, tta=tta
                )


def study_plan(config: StudyConfig) -> list[tuple[Cell, list[TrainConfig]]]:
    """Every cell with the TrainConfig of each of its folds."""
    caches = cache_paths(config)
    return [
        (cell, [fold_config(config, cell, fold, caches[cell.size]) for fold in range(config.folds)])
        for cell in grid(config)
    ]


def check_finished_folds(plan: list[tuple[Cell, list[TrainConfig]]]) -> None:
    """Before any work: folds already finished must match the settings asked for now."""
    for _, fold_configs in plan:
        for train_config in fold_configs:
            if fold_is_finished(Path(train_config.out)):
                check_recorded_config(Path(train_config.out), train_config)


def check_pretrained_weights(config: StudyConfig) -> None:
    """ImageNet cells need local weight files (nothing is downloaded): find them all before
    hours of other cells are trained, rather than fail when the first such cell starts."""
    if "imagenet" in config.initialisations:
        for arch in config.architectures:
            find_pretrained_weights(arch, "imagenet")


def run_study(config: StudyConfig | str | Path, show_progress: bool = True) -> pd.DataFrame:
    """Train (or continue) every cell of the study, build the ensembles, write the summary.

    Returns the summary table (one row per cell); writes out/summary.csv and out/summary.md.
    """
    if not isinstance(config, StudyConfig):
        config = load_study_config(config)
    started = time.perf_counter()
    plan = study_plan(config)
    check_finished_folds(plan)
    check_pretrained_weights(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "study.json", to_dict(config))
    prepare_caches(config, show_progress)
    threshold_method = config.train.get("threshold_method", "youden")
    device = config.train.get("device", "auto")
    rows, ensembles = [], {}
    for number, (cell, fold_configs) in enumerate(plan, start=1):
        runs = []
        for fold, train_config in enumerate(fold_configs):
            run, done = run_fold(
                train_config,
                n_resamples=config.n_resamples,
                device=device,
                show_progress=show_progress,
            )
            runs.append(run)
            if show_progress:
                print(
                    f"[cell {number}/{len(plan)}] {cell.name} fold {fold + 1}/{config.folds}: "
                    f"{done} ({(time.perf_counter() - started) / 60:.1f} min)"
                )
        for tta in ("none", *config.tta):
            score_with_tta(runs, tta, n_resamples=config.n_resamples, device=device)
            subfolder = "" if tta == "none" else tta_folder(tta)
            folder = out / cell.name / ("ensemble" if tta == "none" else f"ensemble-{subfolder}")
            metrics = build_ensemble(
                cell,
                runs,
                folder,
                threshold_method=threshold_method,
                n_resamples=config.n_resamples,
                subfolder=subfolder,
            )
            rows.append(summary_row(cell, metrics, training_seconds(runs), tta))
            ensembles[rows[-1]["cell"]] = read_predictions(folder / "predictions.csv")
    reference = reference_cell(config)
    tests = delong_against_reference(ensembles, reference)
    summary = add_delong_columns(pd.DataFrame(rows), tests, reference)
    summary.to_csv(out / "summary.csv", index=False)
    markdown = summary_markdown(summary, config, threshold_method)
    (out / "summary.md").write_text(markdown)
    if show_progress:
        print()
        print(markdown)
        print(f"study took {(time.perf_counter() - started) / 60:.1f} min; summary in {out}")
    return summary


# --- external validation ------------------------------------------------------------------------
def member_runs(run_or_cell: str | Path) -> list[Path]:
    """A run folder, or a study cell's fold run folders (its fold ensemble)."""
    path = Path(run_or_cell)
    if (path / "config.json").exists() and (path / "model").is_dir():
        return [path]
    folds = sorted(
        (p for p in path.glob("fold*") if (p / "model").is_dir()),
        key=lambda p: int(p.name.removeprefix("fold")),
    )
    if not folds:
        raise FileNotFoundError(
            f"{path} is neither a run folder (config.json + model/) nor a study cell (fold*/)"
        )
    return folds


def source_thresholds(run_or_cell: Path, members: list[Path]) -> list[float | None]:
    """The operating points the model ships with: a run's validation thresholds, or a cell's
    out-of-fold thresholds. External validation applies them unchanged."""
    if len(members) == 1:
        model_config = json.loads((members[0] / "model" / "config.json").read_text())
        thresholds = model_config.get("thresholds")
        if thresholds is not None:
            return thresholds
    ensemble = run_or_cell / "ensemble" / "metrics.json"
    if not ensemble.exists():
        raise FileNotFoundError(f"{ensemble} not found: run the study that made {run_or_cell}")
    recorded = json.loads(ensemble.read_text())["thresholds"]
    return [recorded.get(name) for name in OUTPUTS]


def fine_tune_config(
    member: Path, cache: Path, out: Path, settings: dict[str, Any], size: int, seed: int
) -> TrainConfig:
    """Fine-tune `member` on the external cache: same architecture and head (the weights load
    only into the same head), the member's weights as the start."""
    source = json.loads((member / "config.json").read_text())
    values = {
        **settings,
        "cache": str(cache),
        "out": str(out / "fine_tuned" / member.name),
        "model": source["model"],
        "head": source["head"],
        "pretrained": None,  # the member's weights are the start, whatever a recipe says
        "init_from": str(member),
        "image_size": size,
        "seed": seed,
    }
    return config_with_recipe(values)


def score_frame(
    frame: pd.DataFrame,
    thresholds: list[float | None],
    folder: Path,
    threshold_source: str,
    n_resamples: int,
) -> dict[str, Any]:
    """Write folder/predictions.csv + metrics.json; return the Abnormal output's summary."""
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "predictions.csv", index=False)
    metrics = metrics_from_predictions(frame, thresholds, split="test", n_resamples=n_resamples)
    metrics["threshold_source"] = threshold_source
    write_json_atomic(folder / "metrics.json", metrics)
    abnormal = metrics["outputs"][ABNORMAL]
    return {
        "auc": abnormal["auc"],
        "auc_ci95": abnormal["auc_ci95"],
        "threshold_source": threshold_source,
        "operating_point": abnormal.get("at_validation_threshold"),
    }


def evaluation_folder(run: Path, cache: Path, split: str) -> Path:
    """Where evaluate_run writes `run`'s scores on `split` of `cache`: RUN/<split>/ for the run's
    own data, RUN/external_<cache folder name>_<split>/ for another dataset's."""
    config = json.loads((run / "config.json").read_text())
    return run / (split if same_data(config, cache) else f"external_{cache.name}_{split}")


def evaluate_once(
    run: Path,
    split: str,
    cache: Path,
    *,
    n_resamples: int,
    device: str,
    show_progress: bool,
) -> Path:
    """Score `split` of `cache` with `run`'s model unless that is done: scores count as done when
    they were made by the same weights (SHA-256), on the same data and with as many resamples.
    Returns the folder holding predictions.csv and metrics.json."""
    folder = evaluation_folder(run, cache, split)
    metrics_path = folder / "metrics.json"
    if metrics_path.exists() and (folder / "predictions.csv").exists():
        recorded = json.loads(metrics_path.read_text())
        source = json.loads((cache / "cache.json").read_text()).get("source", {})
        if (
            recorded.get("model", {}).get("weights_sha256")
            == file_sha256(run / "model" / WEIGHTS_FILE)
            and recorded.get("data_source", {}).get("sha256") == source.get("sha256")
            # Same files, same index: not another reader option or seed of the same files, nor
            # another class-folder set (which records no file hashes at all).
            and recorded.get("data_source", {}).get("index_sha256") == cache_fingerprint(cache)
            and recorded.get("bootstrap", {}).get("n_resamples") == n_resamples
        ):
            return folder
    metrics = evaluate_run(
        run,
        split,
        cache=cache,
        device=device,
        n_resamples=n_resamples,
        show_progress=show_progress,
    )
    return Path(metrics["folder"])


def fine_tune_and_compare(
    run_or_cell: Path,
    members: list[Path],
    cache: Path,
    out: Path,
    *,
    settings: dict[str, Any],
    size: int,
    seed: int,
    n_resamples: int,
    device: str,
    show_progress: bool,
) -> dict[str, Any]:
    """BEFORE: `members` (a run, or a cell's folds as their ensemble) as trained, on the test split
    of `cache`, at their own thresholds. AFTER: each member fine-tuned on the cache's train split
    (out/fine_tuned/<member>/), at thresholds chosen on its validation split, on the same test
    images; DeLong's paired test of the Abnormal AUCs. Writes out/before/ and out/after/
    (predictions.csv, metrics.json); a finished scoring or fine-tuning is reused."""
    scoring = {"device": device, "n_resamples": n_resamples, "show_progress": show_progress}
    # BEFORE: each member as trained, on the other data's test split (RUN/external_<cache>_test/).
    before_folders = [evaluate_once(m, "test", cache, **scoring) for m in members]
    before = fold_average([read_predictions(f / "predictions.csv") for f in before_folders])
    tuned = [
        run_fold(fine_tune_config(m, cache, out, settings, size, seed), **scoring)[0]
        for m in members
    ]
    after = fold_average([read_predictions(r / "test" / "predictions.csv") for r in tuned])
    after_val = fold_average([read_predictions(r / "val" / "predictions.csv") for r in tuned])
    result: dict[str, Any] = {
        "source": str(run_or_cell),
        "members": [str(m) for m in members],
        "cache": str(cache),
        "fine_tune": {**settings, "image_size": size, "seed": seed},
        "n_images": len(after),
        "n_patients": int(after["patient"].nunique()),
        "before": score_frame(
            before,
            source_thresholds(run_or_cell, members),
            out / "before",
            "the source model's own validation thresholds",
            n_resamples,
        ),
        "after": score_frame(
            after,
            thresholds_from(after_val, settings.get("threshold_method", "youden")),
            out / "after",
            "the external validation split",
            n_resamples,
        ),
    }
    comparison = compare_predictions(after, before).set_index("output").loc[ABNORMAL]
    result["delong_after_vs_before"] = {
        key: float(comparison[key]) for key in ("diff", "ci_low", "ci_high", "z", "p_value")
    }
    return result


def external_validation(
    run_or_cell: str | Path,
    external_root: str | Path,
    out: str | Path,
    *,
    size: int | None = None,
    fine_tune_epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 32,
    train: dict[str, Any] | None = None,
    kind: str = "auto",
    options: dict[str, Any] | None = None,
    seed: int = 0,
    n_resamples: int = 1000,
    device: str = "auto",
    show_progress: bool = True,
) -> dict:
    """Score a trained model on another dataset, fine-tune it there, score it again.

    The external dataset (any `prepare` source: `kind` and the reader's `options`; class folders
    or a path,label CSV are binary) is prepared into out/<name>_<size>px. BEFORE: the model as
    trained, at its own thresholds. Fine-tuning starts from the model's weights (same
    architecture and head) and trains on the external train split; AFTER: the fine-tuned model at
    thresholds chosen on the external validation split. Both score the same external test images,
    so DeLong's paired test applies. A study cell is handled as its fold ensemble (each fold
    model fine-tuned, averaged). Re-running reuses a finished scoring and fine-tuning. Writes
    out/before/, out/after/ (predictions.csv, metrics.json), out/fine_tuned/<member>/,
    out/external_validation.json and out/summary.md; returns the summary dict.
    """
    run_or_cell, out = Path(run_or_cell), Path(out)
    members = member_runs(run_or_cell)
    size = size or int(json.loads((members[0] / "config.json").read_text())["image_size"])
    settings = {**(train or {}), "epochs": fine_tune_epochs, "lr": lr, "batch_size": batch_size}
    check_train_settings(settings)
    check_data_kind(kind, dict(options or {}))
    name = Path(external_root).stem or "external"
    cache = prepare(
        external_root,
        out / f"{name}_{size}px",
        size=size,
        kind=kind,
        options=options,
        seed=seed,
        progress=show_progress,
    )
    compared = fine_tune_and_compare(
        run_or_cell,
        members,
        cache,
        out,
        settings=settings,
        size=size,
        seed=seed,
        n_resamples=n_resamples,
        device=device,
        show_progress=show_progress,
    )
    result: dict[str, Any] = {
        "source": compared.pop("source"),
        "members": compared.pop("members"),
        "external_root": str(external_root),
        **compared,
        "disclaimer": DISCLAIMER,
    }
    write_json_atomic(out / "external_validation.json", result)
    markdown = external_markdown(result)
    (out / "summary.md").write_text(markdown)
    if show_progress:
        print(markdown)
    return result


def external_markdown(result: dict) -> str:
    rows = []
    for label in ("before", "after"):
        entry = result[label]
        point = entry["operating_point"] or {}
        low, high = entry["auc_ci95"]
        rows.append(
            {
                "model": f"{label} fine-tuning",
                "Abnormal AUC [95% CI]": auc_with_ci(entry["auc"], low, high),
                "threshold": number_text(point.get("threshold", math.nan)),
                **{
                    title: number_text(point.get(key, math.nan))
                    for key, title in OPERATING_POINT_TITLES.items()
                },
            }
        )
    delong = result["delong_after_vs_before"]
    lines = [
        f"# External validation of {result['source']} on {result['external_root']}",
        "",
        frame_markdown(pd.DataFrame(rows)),
        "",
        f"- Same {result['n_images']} external test images ({result['n_patients']} patients) "
        f"before and after fine-tuning for {result['fine_tune']['epochs']} epochs on the external "
        "train split.",
        f"- AUC difference (after - before) {delong['diff']:+.3f} "
        f"[{delong['ci_low']:+.3f}, {delong['ci_high']:+.3f}], "
        f"DeLong p = {p_value_text(delong['p_value'])}.",
        "- Thresholds: before, the model's own (chosen on its source validation data); after, "
        "chosen on the external validation split.",
        "",
        DISCLAIMER,
    ]
    return "\n".join(lines) + "\n"
