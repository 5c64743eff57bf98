"""Publishing: a run folder -> a model folder (the unit of sharing) -> the Hugging Face Hub.

    build_model_folder(RUN, OUT)   weights + config.json (+ data section) + metrics + figures +
                                   README.md model card; refuses metrics not made by these weights
    push_model_folder(OUT, repo)   one commit with exactly the folder's files (dry_run: list them)
    make_epoch_uploader(repo, n)   during training: model/, history.csv, last.pt to a branch

The original CheXVision published pickles, put each metric's best value over all epochs on its card
and kept its token in a file. Here the weights are safetensors, every number on the card comes from
the checkpoint that ships (checked, not assumed), and the token is read from the environment, the
huggingface_hub login store or a Kaggle secret — never taken as an argument, printed or written.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import pandas as pd

from chexvision_lib import __version__
from chexvision_lib.core.atomic_files import replace_folder, write_json_atomic
from chexvision_lib.core.hashing import file_sha256
from chexvision_lib.core.labels import ABNORMAL, FINDINGS, OUTPUTS
from chexvision_lib.core.predictions import label_column, prob_column, read_predictions
from chexvision_lib.data.provenance import NIH_KINDS, OFFICIAL_SPLIT_IMAGES, verify_nih_source
from chexvision_lib.evaluation.evaluate import subgroups_from_predictions
from chexvision_lib.evaluation.metrics import per_class_auc
from chexvision_lib.models.registry import WEIGHTS_FILE
from chexvision_lib.publishing.model_card import (
    DATA_KEY,
    FIGURES_DIR,
    GRADCAM_PREFIX,
    METRICS_FILE,
    PUBLICATION_KEY,
    RESULTS_DIR,
    SUBGROUPS_FILE,
    read_subgroups,
    render_model_card,
)

logger = logging.getLogger(__name__)

# Images re-scored to tie a metrics file to the weights when evaluate did not record their hash.
RESCORE_IMAGES = 32
# fp16 autocast on CUDA vs fp32 on the CPU moves probabilities by ~1e-3 at most; two different
# checkpoints disagree by far more on at least one of 32 x 15 probabilities.
RESCORE_TOLERANCE = 5e-3
# Recomputed AUCs must match metrics.json to float precision: they come from the same file.
AUC_TOLERANCE = 1e-9


class ProvenanceError(ValueError):
    """The metrics (or another file) were not produced by the weights that would ship."""


# ----------------------------------------------------------------------------------------------
# Reading a run
# ----------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {what}")
    return json.loads(path.read_text())


def _split_paths(run: Path, split: str) -> tuple[Path, Path]:
    folder = run / split
    return folder / METRICS_FILE, folder / "predictions.csv"


# ----------------------------------------------------------------------------------------------
# Provenance: every number must come from the shipped weights
# ----------------------------------------------------------------------------------------------


def check_thresholds(metrics: dict, model_config: dict, where: str) -> None:
    """The thresholds metrics.json applied must be the ones that ship in config.json."""
    thresholds = model_config.get("thresholds") or [None] * len(OUTPUTS)
    if len(thresholds) != len(OUTPUTS):
        raise ValueError(f"{where}: the model's config.json holds {len(thresholds)} thresholds")
    shipped = dict(zip(OUTPUTS, thresholds, strict=True))
    applied = metrics.get("thresholds", {})
    differing = [name for name in OUTPUTS if applied.get(name) != shipped.get(name)]
    if differing:
        raise ProvenanceError(
            f"{where}: thresholds differ from the shipped model's config.json for {differing}; "
            "the model was re-saved after evaluation — re-run `chexvision evaluate`"
        )


def check_same_data(metrics: dict, model_config: dict, where: str) -> None:
    """Where metrics.json records the evaluated data's split-file hashes, they must be those the
    model was trained with: the card describes one dataset and one split."""
    evaluated = metrics.get("data_source")
    trained = model_config.get("training", {}).get("data_source", {})
    if not isinstance(evaluated, dict) or "sha256" not in evaluated or "sha256" not in trained:
        return
    if evaluated["sha256"] != trained["sha256"]:
        raise ProvenanceError(
            f"{where}: metrics.json was computed on data whose split files differ from the "
            "training data's (an external evaluation?); a card reports the training dataset's "
            "own split"
        )
    index = model_config.get("training", {}).get("cache", {}).get("index_sha256")
    if index and evaluated.get("index_sha256") and evaluated["index_sha256"] != index:
        raise ProvenanceError(
            f"{where}: metrics.json was computed on a cache of the same files with other labels "
            "or splits than the training cache's (another seed, view filter or reader option); "
            "a card reports the training data's own split"
        )


def check_metrics_match_predictions(metrics: dict, predictions: pd.DataFrame, where: str) -> None:
    """metrics.json and predictions.csv must describe the same scoring (same file generation)."""
    if metrics.get("n_images") != len(predictions):
        raise ProvenanceError(
            f"{where}: metrics.json counts {metrics.get('n_images')} images, predictions.csv "
            f"holds {len(predictions)}; re-run `chexvision evaluate`"
        )
    probs = predictions[[prob_column(n) for n in OUTPUTS]].to_numpy(dtype=np.float64)
    labels = predictions[[label_column(n) for n in OUTPUTS]].to_numpy(dtype=np.float64)
    recomputed = per_class_auc(labels, probs)
    for i, name in enumerate(OUTPUTS):
        recorded = metrics.get("outputs", {}).get(name, {}).get("auc")
        if recorded is None or math.isnan(recomputed[i]):
            continue
        if abs(recorded - recomputed[i]) > AUC_TOLERANCE:
            raise ProvenanceError(
                f"{where}: the AUC of {name} in metrics.json ({recorded:.6f}) is not that of "
                f"predictions.csv ({recomputed[i]:.6f}); re-run `chexvision evaluate`"
            )


def rescore_sample(run: Path, split: str, predictions: pd.DataFrame) -> tuple[int, float]:
    """Re-score a spread of the split's images with the shipped weights; return (images scored,
    largest difference from predictions.csv). Raises ProvenanceError where the images are not
    reachable."""
    from chexvision_lib.data.batches import CachedSplit  # heavy imports, only on this path
    from chexvision_lib.models.loading import load_model
    from chexvision_lib.models.predict import predict_arrays

    run_config = _read_json(run / "config.json", "not a run folder")
    cache = run_config.get("cache", {}).get("path")
    try:
        data = CachedSplit(cache, split)
    except (FileNotFoundError, ValueError, TypeError) as error:
        raise ProvenanceError(
            f"{run}/{split}/{METRICS_FILE} does not record which weights made it "
            f"(model.weights_sha256) and the cache {cache!r} is not available to re-score a "
            f"sample ({error}). Re-run `chexvision evaluate {run} --split {split}` with a "
            "chexvision that records the weights' hash."
        ) from None
    positions = np.unique(np.linspace(0, len(data) - 1, min(RESCORE_IMAGES, len(data))).round())
    positions = positions.astype(np.int64)
    cached_ids = data.metadata()["image_id"].to_numpy()[positions]
    listed_ids = predictions["image_id"].to_numpy()[positions]
    if len(predictions) != len(data) or not np.array_equal(cached_ids, listed_ids):
        raise ProvenanceError(
            f"{run}/{split}/predictions.csv does not list the images of the run's cache {cache} "
            "(evaluated on another cache?), and metrics.json does not record the weights' hash; "
            "cannot tie the metrics to the shipped weights"
        )
    model = load_model(run / "model")
    fresh = predict_arrays(model, data.read(positions))
    recorded = predictions[[prob_column(n) for n in OUTPUTS]].to_numpy(np.float64)[positions]
    usable = ~np.isnan(fresh) & ~np.isnan(recorded)
    return len(positions), float(np.abs(fresh[usable] - recorded[usable]).max())


def verify_split_metrics(run: Path, split: str, model_config: dict, weights_sha256: str) -> str:
    """Refuse metrics the shipped weights did not compute; return how that was established."""
    metrics_path, predictions_path = _split_paths(run, split)
    where = f"{run}/{split}"
    metrics = _read_json(metrics_path, f"evaluate the run first: chexvision evaluate {run}")
    predictions = read_predictions(predictions_path)
    recorded_model = metrics.get("model", {})
    if recorded_model.get("arch") not in (None, model_config["arch"]):
        raise ProvenanceError(
            f"{where}: metrics.json was computed by a {recorded_model.get('arch')} model; the "
            f"shipped model is {model_config['arch']}"
        )
    check_thresholds(metrics, model_config, where)
    check_same_data(metrics, model_config, where)
    check_metrics_match_predictions(metrics, predictions, where)
    recorded_sha = recorded_model.get("weights_sha256")
    if recorded_sha is not None:
        if recorded_sha != weights_sha256:
            raise ProvenanceError(
                f"{where}: metrics.json was computed by weights with SHA-256 {recorded_sha}, but "
                f"{run}/model/{WEIGHTS_FILE} has {weights_sha256} (the model changed after "
                f"evaluation); re-run `chexvision evaluate {run} --split {split}`"
            )
        return "metrics.json records the SHA-256 of these weights"
    scored, difference = rescore_sample(run, split, predictions)
    if difference > RESCORE_TOLERANCE:
        raise ProvenanceError(
            f"{where}: predictions.csv was not made by the shipped weights (re-scoring "
            f"{scored} images differs by up to {difference:.4f}); re-run "
            f"`chexvision evaluate {run} --split {split}`"
        )
    return (
        f"{scored} of the split's images, re-scored with these weights, match predictions.csv "
        f"(largest probability difference {difference:.1e})"
    )


def _subgroup_key(group_column: object, value: object, output: object) -> tuple[str, str, str]:
    # Values are compared as text: the CSV round trip turns a missing group into NaN -> "nan".
    return str(group_column), str(value), str(output).removeprefix("label_")


def verify_subgroups(table: pd.DataFrame, predictions: pd.DataFrame, where: str) -> None:
    """Each row of subgroups.csv must be what evaluate computes from predictions.csv (the shipped
    weights' scores): same counts, same AUC."""
    recomputed = subgroups_from_predictions(predictions)
    expected = {
        _subgroup_key(row.group_column, row.value, row.output): row
        for row in recomputed.itertuples(index=False)
    }
    for row in table.itertuples(index=False):
        key = _subgroup_key(row.group_column, row.value, row.output)
        want = expected.get(key)
        if want is None:
            raise ProvenanceError(
                f"{where}/{SUBGROUPS_FILE}: subgroup {key} cannot be recomputed from "
                "predictions.csv; re-run `chexvision evaluate`"
            )
        same_counts = (int(want.n_images), int(want.n_positive)) == (
            int(row.n_images),
            int(row.n_positive),
        )
        both_nan = math.isnan(want.auc) and math.isnan(row.auc)
        if not same_counts or not (both_nan or abs(want.auc - row.auc) <= AUC_TOLERANCE):
            raise ProvenanceError(
                f"{where}/{SUBGROUPS_FILE}: row {key} does not match predictions.csv; re-run "
                "`chexvision evaluate`"
            )


# ----------------------------------------------------------------------------------------------
# The data section of config.json
# ----------------------------------------------------------------------------------------------


def _legacy_root(source: dict, training: dict, run: Path | None) -> Path | None:
    """Where a relative data root recorded by an older chexvision lies, if it can be told.

    Runs indexed before the source recorded absolute paths hold paths relative to the directory
    they were made from. When the run's own recorded `out` (relative too) names the run folder,
    that directory is the run folder minus those parts, and the data root lies below it."""
    root, out = source.get("root"), training.get("out")
    if not root or Path(str(root)).is_absolute():
        return Path(str(root)) if root else None
    if run is None or not out or Path(str(out)).is_absolute():
        return None
    resolved, parts = run.resolve(), Path(str(out)).parts
    if resolved.parts[-len(parts) :] != parts:
        return None
    return Path(*resolved.parts[: -len(parts)]) / str(root)


def _is_synthetic(
    source: dict, training: dict | None = None, run: Path | None = None
) -> bool | None:
    """What the index recorded; for older runs, the marker beside the data when the data folder
    can still be found (never relative to the current directory); None when it cannot be told."""
    if source.get("synthetic") is not None:
        return bool(source["synthetic"])
    from chexvision_lib.data.synthetic import MARKER_NAME

    root = _legacy_root(source, training or {}, run)
    if root is None or not root.is_dir():
        return None
    return (root / MARKER_NAME).exists()


UNVERIFIED_NAME = "Unverified data source (ChestX-ray14 file layout, not verified as NIH's release)"
UNVERIFIED_TYPE = "unverified-data-source"


def _dataset_identity(source: dict, synthetic: bool | None, verified: bool) -> tuple[str, str]:
    """(name, type) of the dataset as the card's model-index names it: NIH ChestX-ray14 only
    when the recorded split-list hashes are NIH's official ones."""
    kind = source.get("kind")
    if synthetic:
        return (
            "Synthetic ChestX-ray14-layout images (chexvision_lib.data.synthetic; not real "
            "radiographs)",
            "synthetic-chestx-ray14-layout",
        )
    if kind in NIH_KINDS and not verified:
        return UNVERIFIED_NAME, UNVERIFIED_TYPE
    if kind == "nih":
        return "NIH ChestX-ray14", "nih-chestx-ray14"
    if kind == "hub_parquet":
        return f"NIH ChestX-ray14 (Hub copy {source.get('hub_repo_id')})", source["hub_repo_id"]
    if kind == "binary":
        return f"External binary dataset '{Path(str(source.get('root'))).name}'", "external"
    if kind in PUBLIC_DATASET_NAMES:
        return PUBLIC_DATASET_NAMES[kind], kind
    return "Unknown data source", "unknown"


# The public datasets of data/sources/, as a card names them (read from their published files).
PUBLIC_DATASET_NAMES = {
    "chexpert": "CheXpert (Stanford)",
    "mimic": "MIMIC-CXR-JPG (PhysioNet)",
    "padchest": "PadChest (BIMCV)",
    "rsna": "RSNA Pneumonia Detection Challenge (NIH images)",
    "indiana": "Indiana University chest X-rays (Open-i)",
    "vindr": "VinDr-CXR",
}


def _official_test_words(source: dict) -> str:
    """'official test_list.txt', saying so when only part of the list was indexed."""
    indexed = (source.get("counts") or {}).get("test")
    listed = OFFICIAL_SPLIT_IMAGES["test_list"]
    if indexed is None or indexed == listed:
        return "official test_list.txt"
    return f"official test_list.txt, the {indexed:,} of its {listed:,} images indexed"


def split_descriptions(
    source: dict, synthetic: bool | None, verified: bool = False
) -> dict[str, str]:
    """How each split was defined, in words that cannot be mistaken for another split: the
    lists are called official only when their hashes are NIH's."""
    kind = source.get("kind")
    if kind in NIH_KINDS:

        def named(file: str) -> str:
            if synthetic:
                return f"{file} of the synthetic set"
            if verified:
                return f"official {file}"
            return f"{file} of an unverified data source"

        # `verified` implies not synthetic (verify_nih_source requires synthetic False).
        val_fraction, seed = source.get("val_fraction", 0), source.get("seed")
        return {
            "test": _official_test_words(source) if verified else named("test_list.txt"),
            "val": f"{val_fraction:.0%} of the patients in {'the ' if verified else ''}"
            f"{named('train_val_list.txt')}, seed {seed}",
            "train": f"{named('train_val_list.txt')} minus the validation patients",
        }
    if kind == "binary":
        fractions = source.get("fractions", {})
        return {
            split: f"random patient-grouped {fractions.get(split, 0):.0%} split, seed "
            f"{source.get('seed')}"
            for split in ("train", "val", "test")
        }
    if source.get("split_policy"):  # the public datasets' readers say how they split
        policy = source["split_policy"]
        return {split: f"{split} split: {policy}" for split in ("train", "val", "test")}
    return {split: f"{split} split of an unrecorded source" for split in ("train", "val", "test")}


def data_section(
    training: dict, metrics_by_split: dict[str, dict], run: Path | None = None
) -> dict[str, Any]:
    """Where the data came from, whether it is verified as NIH's release, how it was split (with
    file hashes) and what was evaluated. Only what the run recorded is read (and, for runs older
    than that record, the data folder when `run` leads to it): never the current directory."""
    source = training.get("data_source", {})
    synthetic = _is_synthetic(source, training, run)
    verification = verify_nih_source({**source, "synthetic": synthetic})
    verified = bool(verification["verified"])
    name, dataset_type = _dataset_identity(source, synthetic, verified)
    descriptions = split_descriptions(source, synthetic, verified)
    # File names, not local paths: the hashes identify the files; a home directory identifies no one
    # useful and says where the author keeps things.
    split_files = {
        Path(str(source.get(key, key))).name: digest
        for key, digest in (source.get("sha256") or {}).items()
    }
    splits = {split: {"description": descriptions[split]} for split in descriptions}
    for split, metrics in metrics_by_split.items():
        splits.setdefault(split, {}).update(
            n_images=metrics.get("n_images"), n_patients=metrics.get("n_patients")
        )
    return {
        "kind": source.get("kind"),
        "dataset_name": name,
        "dataset_type": dataset_type,
        "synthetic": synthetic,
        "verification": verification,
        "hub_repo_id": source.get("hub_repo_id"),
        "dataset_revision": source.get("hub_revision") or source.get("revision"),
        "split_files": split_files,
        "val_fraction": source.get("val_fraction"),
        "seed": source.get("seed"),
        "views": source.get("views"),
        "skipped": source.get("skipped"),
        "counts": source.get("counts", {}),
        "cache_settings": training.get("cache", {}).get("settings", {}),
        "splits": splits,
    }


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def write_figures(
    run: Path, split: str, metrics: dict, split_label: str, out: Path, exclude: Path
) -> list[Path]:
    """The card's figures as PNGs under `out`; those that do not apply (e.g. AUC bars of a binary
    head) are skipped. Grad-CAM grids found in the run are copied."""
    from chexvision_lib.reporting import plots  # matplotlib: only when figures are asked for

    out.mkdir(parents=True, exist_ok=True)
    predictions = read_predictions(run / split / "predictions.csv")
    written = []
    plottable = plots.plottable_outputs(predictions)
    if len(plottable) > 1:
        plots.roc_grid(predictions, metrics, out / "roc_curves.png", split_label=split_label)
        written.append(out / "roc_curves.png")
    if ABNORMAL in plottable:
        plots.roc_binary(predictions, metrics, out / "roc_abnormal.png", split_label=split_label)
        written.append(out / "roc_abnormal.png")
    entries = metrics.get("outputs", {})
    if plots.VALIDATION_POINT in entries.get(ABNORMAL, {}):
        plots.confusion_matrices(
            metrics, out / "confusion_abnormal.png", [ABNORMAL], split_label=split_label
        )
        written.append(out / "confusion_abnormal.png")
    if any(entries.get(f, {}).get("auc") is not None for f in FINDINGS):
        plots.auc_bars(metrics, out / "auc_bars.png", split_label=split_label)
        written.append(out / "auc_bars.png")
    if (run / "history.csv").exists():
        plots.training_curves(pd.read_csv(run / "history.csv"), out / "training_curves.png")
        written.append(out / "training_curves.png")
    for cam in find_gradcam_grids(run, exclude):
        target = out / f"{GRADCAM_PREFIX}_{'_'.join(cam.relative_to(run).with_suffix('').parts)}"
        target = target.with_suffix(".png")
        shutil.copyfile(cam, target)
        written.append(target)
    return written


def find_gradcam_grids(run: Path, exclude: Path) -> list[Path]:
    """PNGs in the run whose name mentions CAM (Grad-CAM grids written by the explain step)."""
    exclude = exclude.resolve()
    found = []
    for path in sorted(run.rglob("*.png")):
        resolved = path.resolve()
        if exclude in resolved.parents or (run / "model").resolve() in resolved.parents:
            continue
        if "cam" in path.stem.lower():
            found.append(path)
    return found


# ----------------------------------------------------------------------------------------------
# The model folder
# ----------------------------------------------------------------------------------------------


def _check_out_dir(out: Path, run: Path) -> None:
    if out.resolve() == run.resolve() or out.resolve() == (run / "model").resolve():
        raise ValueError(f"--out {out}: choose a new folder, not the run or its model/")
    if out.exists() and any(out.iterdir()):
        config = out / "config.json"
        ours = config.is_file() and PUBLICATION_KEY in json.loads(config.read_text())
        if not ours:
            raise FileExistsError(
                f"{out} exists and is not a model folder built by chexvision; choose another --out"
            )


def without_local_paths(value: Any) -> Any:
    """A JSON value with every absolute filesystem path cut to its file or folder name.

    Run configs and metrics record where the cache, data and run folder lived; a published folder
    keeps the names (the data hashes identify the files) but not the author's directory layout,
    which can include a user name.
    """
    if isinstance(value, dict):
        return {key: without_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_local_paths(item) for item in value]
    if isinstance(value, str) and (
        PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute()
    ):
        return PureWindowsPath(value).name  # splits on both "/" and "\\"
    return value


def _history_length(run: Path) -> int | None:
    path = run / "history.csv"
    return len(pd.read_csv(path)) if path.exists() else None


def _write_folder(
    staging: Path,
    run: Path,
    split: str,
    splits: list[str],
    model_config: dict,
    publication: dict,
    figures: bool,
    out: Path,
) -> None:
    """Fill `staging` with weights, metrics, config.json, figures and the card."""
    weights = run / "model" / WEIGHTS_FILE
    shutil.copyfile(weights, staging / WEIGHTS_FILE)
    if file_sha256(staging / WEIGHTS_FILE) != publication["weights_sha256"]:
        raise ProvenanceError(f"{weights} changed while it was copied (is training still running?)")
    metrics_by_split = {}
    for s in splits:
        (staging / RESULTS_DIR / s).mkdir(parents=True)
        metrics = without_local_paths(_read_json(_split_paths(run, s)[0], "evaluate the run"))
        write_json_atomic(staging / RESULTS_DIR / s / METRICS_FILE, metrics)
        metrics_by_split[s] = metrics
    if (run / split / SUBGROUPS_FILE).exists():
        shutil.copyfile(
            run / split / SUBGROUPS_FILE, staging / RESULTS_DIR / split / SUBGROUPS_FILE
        )
    data = data_section(model_config.get("training", {}), metrics_by_split, run)
    config = {**model_config, DATA_KEY: data, PUBLICATION_KEY: publication}
    write_json_atomic(staging / "config.json", without_local_paths(config))
    if figures:
        split_label = f"{split} split ({data['splits'][split]['description']})"
        write_figures(run, split, metrics_by_split[split], split_label, staging / FIGURES_DIR, out)
    (staging / "README.md").write_text(render_model_card(staging))


def build_model_folder(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str = "test",
    figures: bool = True,
    repo_id: str | None = None,
) -> Path:
    """Write the shareable model folder for a run's shipped model, reported on `split`.

    Copies RUN/model's weights and config.json (adding `data` and `publication` sections), the
    split's metrics.json (and validation's, and subgroups.csv, when present), figures, and the
    model card as README.md. Refuses (ProvenanceError) metrics the shipped weights did not
    compute. `repo_id` only fills the card's loading example. Returns `out_dir`.
    """
    run, out = Path(run_dir), Path(out_dir)
    weights = run / "model" / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: {run} is not a finished run folder")
    _check_out_dir(out, run)
    model_config = _read_json(run / "model" / "config.json", "the run has no model/config.json")
    weights_sha256 = file_sha256(weights)

    splits = [split] + (["val"] if split != "val" and (run / "val" / METRICS_FILE).exists() else [])
    provenance = {s: verify_split_metrics(run, s, model_config, weights_sha256) for s in splits}
    subgroups = read_subgroups(run / split / SUBGROUPS_FILE)
    if subgroups is not None:
        verify_subgroups(subgroups, read_predictions(_split_paths(run, split)[1]), f"{run}/{split}")

    publication = {
        "reported_split": split,
        "weights_sha256": weights_sha256,
        "metrics_provenance": provenance,
        "source_run": run.resolve().name,
        "epochs_run": _history_length(run),
        "repo_id": repo_id,
        "chexvision_version": __version__,
    }
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        _write_folder(staging, run, split, splits, model_config, publication, figures, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # never leave a half-built folder behind
        raise
    replace_folder(staging, out)
    return out
