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

import argparse
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import pandas as pd
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError

from chexvision_lib import __version__
from chexvision_lib.atomic_files import replace_folder, write_json_atomic
from chexvision_lib.evaluate import (
    label_column,
    prob_column,
    read_predictions,
    subgroups_from_predictions,
)
from chexvision_lib.labels import ABNORMAL, FINDINGS, OUTPUTS
from chexvision_lib.metrics import per_class_auc
from chexvision_lib.model_card import (
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
from chexvision_lib.splits import file_sha256

logger = logging.getLogger(__name__)

TOKEN_ENV = "HF_TOKEN"
KAGGLE_ENV = "KAGGLE_KERNEL_RUN_TYPE"  # set by Kaggle in every notebook session
KAGGLE_SECRET_NAME = "HF_TOKEN"
WEIGHTS_FILE = "model.safetensors"
# Images re-scored to tie a metrics file to the weights when evaluate did not record their hash.
RESCORE_IMAGES = 32
# fp16 autocast on CUDA vs fp32 on the CPU moves probabilities by ~1e-3 at most; two different
# checkpoints disagree by far more on at least one of 32 x 15 probabilities.
RESCORE_TOLERANCE = 5e-3
# Recomputed AUCs must match metrics.json to float precision: they come from the same file.
AUC_TOLERANCE = 1e-9
# Repository files a push leaves alone (the Hub creates .gitattributes with the repo).
KEEP_IN_REPO = (".gitattributes",)


class ProvenanceError(ValueError):
    """The metrics (or another file) were not produced by the weights that would ship."""


class MissingTokenError(RuntimeError):
    """No Hugging Face token in any of the places `resolve_token` looks."""


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
    from chexvision_lib.batches import CachedSplit  # heavy imports, only on this path
    from chexvision_lib.predict import predict_arrays
    from chexvision_lib.train import load_model

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


def _is_synthetic(source: dict) -> bool | None:
    """True/False when it can be told; None when the data folder is gone."""
    if "synthetic" in source:
        return bool(source["synthetic"])
    from chexvision_lib.synthetic import MARKER_NAME

    root = source.get("root")
    if not root or not Path(root).exists():
        return None
    return (Path(root) / MARKER_NAME).exists()


def _dataset_identity(source: dict, synthetic: bool | None) -> tuple[str, str]:
    """(name, type) of the dataset as the card's model-index names it."""
    kind = source.get("kind")
    if synthetic:
        return (
            "Synthetic ChestX-ray14-layout images (chexvision_lib.synthetic; not real radiographs)",
            "synthetic-chestx-ray14-layout",
        )
    if kind == "nih":
        return "NIH ChestX-ray14", "nih-chestx-ray14"
    if kind == "hub_parquet":
        return f"NIH ChestX-ray14 (Hub copy {source.get('hub_repo_id')})", source["hub_repo_id"]
    if kind == "binary":
        return f"External binary dataset '{Path(str(source.get('root'))).name}'", "external"
    return "Unknown data source", "unknown"


def split_descriptions(source: dict, synthetic: bool | None) -> dict[str, str]:
    """How each split was defined, in words that cannot be mistaken for another split."""
    kind = source.get("kind")
    if kind in ("nih", "hub_parquet"):

        def named(file: str) -> str:
            return f"{file} of the synthetic set" if synthetic else f"official {file}"

        val_fraction, seed = source.get("val_fraction", 0), source.get("seed")
        return {
            "test": named("test_list.txt"),
            "val": f"{val_fraction:.0%} of the patients in {'' if synthetic else 'the '}"
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
    return {split: f"{split} split of an unrecorded source" for split in ("train", "val", "test")}


def data_section(training: dict, metrics_by_split: dict[str, dict]) -> dict[str, Any]:
    """Where the data came from, how it was split (with file hashes) and what was evaluated."""
    source = training.get("data_source", {})
    synthetic = _is_synthetic(source)
    name, dataset_type = _dataset_identity(source, synthetic)
    descriptions = split_descriptions(source, synthetic)
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
    from chexvision_lib import plots  # matplotlib: only when figures are asked for

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
    data = data_section(model_config.get("training", {}), metrics_by_split)
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


# ----------------------------------------------------------------------------------------------
# Token
# ----------------------------------------------------------------------------------------------


def _kaggle_secret(name: str) -> str | None:
    """A Kaggle notebook secret; None off Kaggle or when the secret is not attached."""
    if not os.environ.get(KAGGLE_ENV):
        return None
    try:
        from kaggle_secrets import UserSecretsClient  # exists only inside Kaggle notebooks
    except ImportError:
        return None
    try:
        return UserSecretsClient().get_secret(name) or None
    except Exception:  # Kaggle raises its own error types for absent or unattached secrets
        return None


def _login_store_token() -> str | None:
    import huggingface_hub

    return huggingface_hub.get_token()


def resolve_token() -> str:
    """The Hugging Face token: $HF_TOKEN, else huggingface_hub's login, else the Kaggle secret
    HF_TOKEN (in a Kaggle notebook). There is deliberately no parameter: a token passed as an
    argument ends up in notebooks, shell history and logs."""
    token = (
        os.environ.get(TOKEN_ENV, "").strip()
        or _login_store_token()
        or _kaggle_secret(KAGGLE_SECRET_NAME)
    )
    if not token:
        raise MissingTokenError(
            "no Hugging Face token found. Provide one (a write token) in one of three ways:\n"
            f"  1. the environment variable {TOKEN_ENV} (e.g. export {TOKEN_ENV}=... in a shell "
            "that is not logged);\n"
            "  2. huggingface_hub's login store: run `hf auth login` (or "
            "`huggingface-cli login`) once on this machine;\n"
            f"  3. on Kaggle: Add-ons > Secrets, add a secret named {KAGGLE_SECRET_NAME} and "
            "attach it to this notebook.\n"
            "`chexvision push --dry-run` needs no token."
        )
    return token


# ----------------------------------------------------------------------------------------------
# Pushing a model folder
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadFile:
    path_in_repo: str
    local_path: Path
    size: int
    sha256: str


def upload_plan(model_dir: str | Path) -> list[UploadFile]:
    """Exactly the files a push uploads: every file of the folder, with size and SHA-256."""
    folder = Path(model_dir)
    return [
        UploadFile(
            path.relative_to(folder).as_posix(), path, path.stat().st_size, file_sha256(path)
        )
        for path in sorted(p for p in folder.rglob("*") if p.is_file())
    ]


def check_model_folder(model_dir: Path) -> dict:
    """A folder built by build_model_folder whose weights are still the ones its card describes."""
    config_path = model_dir / "config.json"
    if not config_path.is_file() or not (model_dir / "README.md").is_file():
        raise FileNotFoundError(
            f"{model_dir} is not a model folder (needs config.json and README.md); build one with "
            "`chexvision card RUN_DIR --out MODEL_DIR`"
        )
    config = json.loads(config_path.read_text())
    recorded = config.get(PUBLICATION_KEY, {}).get("weights_sha256")
    if recorded is None:
        raise ValueError(f"{config_path} has no {PUBLICATION_KEY}.weights_sha256: rebuild it")
    if file_sha256(model_dir / WEIGHTS_FILE) != recorded:
        raise ProvenanceError(
            f"{model_dir}/{WEIGHTS_FILE} is not the file the card was built for; rebuild the "
            "folder with `chexvision card`"
        )
    return config


def refuse_token_in_files(plan: list[UploadFile], token: str) -> None:
    """Last line of defence: never upload a file that contains the token (the message does not
    repeat it)."""
    needle = token.encode()
    for item in plan:
        if needle in item.local_path.read_bytes():
            raise ValueError(
                f"refusing to upload: {item.path_in_repo} contains your Hugging Face token; "
                "remove it from the file (and revoke the token if the file was shared)"
            )


def _check_branch_name(revision: str | None) -> None:
    if (
        revision is not None
        and len(revision) == 40
        and all(c in "0123456789abcdef" for c in revision)
    ):
        raise ValueError(
            f"--revision {revision}: pushing needs a branch name; a commit hash cannot be "
            "committed to"
        )


def format_plan(plan: list[UploadFile], repo_id: str, revision: str | None) -> str:
    total = sum(item.size for item in plan)
    lines = [
        f"dry run: one commit to {repo_id} (branch {revision or 'main'}) would upload "
        f"{len(plan)} files, {total:,} bytes; files in that branch not listed here would be "
        "deleted (except .gitattributes):",
    ]
    width = max(len(item.path_in_repo) for item in plan)
    for item in plan:
        lines.append(f"  {item.path_in_repo:<{width}}  {item.size:>12,}  sha256 {item.sha256}")
    return "\n".join(lines)


def _commit_operations(
    plan: list[UploadFile], existing: list[str]
) -> list[CommitOperationAdd | CommitOperationDelete]:
    """Add every planned file; delete repo files the folder no longer has, so the pushed revision
    is exactly the folder (a stale metrics file would contradict the new card)."""
    planned = {item.path_in_repo for item in plan}
    operations: list[CommitOperationAdd | CommitOperationDelete] = [
        CommitOperationAdd(path_in_repo=item.path_in_repo, path_or_fileobj=str(item.local_path))
        for item in plan
    ]
    operations += [
        CommitOperationDelete(path_in_repo=path)
        for path in sorted(existing)
        if path not in planned and path not in KEEP_IN_REPO
    ]
    return operations


def push_model_folder(
    model_dir: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    api: HfApi | None = None,
) -> str:
    """Upload a model folder to the Hub as one commit; return the commit URL.

    Creates the repository (and the branch `revision`) when absent. dry_run=True prints and
    returns the exact upload list (paths, sizes, SHA-256) without a token or the network.
    """
    folder = Path(model_dir)
    weights_sha256 = check_model_folder(folder)[PUBLICATION_KEY]["weights_sha256"]
    _check_branch_name(revision)
    plan = upload_plan(folder)
    if dry_run:
        listing = format_plan(plan, repo_id, revision)
        print(listing)
        return listing
    token = resolve_token()
    refuse_token_in_files(plan, token)
    api = api or HfApi()
    api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, token=token, repo_type="model", exist_ok=True)
    existing = api.list_repo_files(repo_id, revision=revision, token=token, repo_type="model")
    operations = _commit_operations(plan, existing)
    info = api.create_commit(
        repo_id,
        operations,
        commit_message=f"CheXVision model folder (weights sha256 {weights_sha256[:12]})",
        token=token,
        repo_type="model",
        revision=revision,
    )
    url = str(info.commit_url)
    print(f"pushed {len(plan)} files to {repo_id} ({revision or 'main'}): {url}")
    return url


# ----------------------------------------------------------------------------------------------
# Uploads during training
# ----------------------------------------------------------------------------------------------

EPOCH_UPLOAD_FILES = ("history.csv", "checkpoints/last.pt")


def epoch_upload_files(run: Path) -> list[tuple[str, Path]]:
    """(path in repo, local path): the model folder, history.csv and the resume checkpoint."""
    files = [(f"model/{p.name}", p) for p in sorted((run / "model").glob("*")) if p.is_file()]
    files += [(name, run / name) for name in EPOCH_UPLOAD_FILES]
    missing = [str(path) for _, path in files if not path.is_file()]
    if missing or not (run / "model").is_dir():
        raise FileNotFoundError(
            f"epoch upload: {missing or [str(run / 'model')]} not found; call the uploader after "
            "the epoch's checkpoint is saved"
        )
    return files


def make_epoch_uploader(
    repo_id: str,
    every_epochs: int,
    branch: str = "checkpoints",
    api: HfApi | None = None,
    *,
    private: bool = True,
) -> Callable[..., None]:
    """A callable `(run_dir, epoch, *, final=False) -> None` for the training loop.

    Every `every_epochs` completed epochs (epoch counts from 1), and whenever final=True, it
    commits RUN/model/*, RUN/history.csv and RUN/checkpoints/last.pt to `branch` of `repo_id`
    (created private by default: unreviewed checkpoints). The token is resolved now, so a missing
    one stops the run before training, not hours into it. A failed upload is logged and training
    goes on (the next upload carries everything); it never raises mid-run.
    """
    if every_epochs < 1:
        raise ValueError(f"every_epochs must be at least 1, got {every_epochs}")
    _check_branch_name(branch)
    token = resolve_token()
    hub = api or HfApi()
    prepared = False

    def upload(run_dir: str | Path, epoch: int, *, final: bool = False) -> None:
        nonlocal prepared
        if not final and epoch % every_epochs != 0:
            return
        files = epoch_upload_files(Path(run_dir))
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files
        ]
        try:
            if not prepared:
                hub.create_repo(repo_id, token=token, private=private, exist_ok=True)
                hub.create_branch(repo_id, branch=branch, token=token, exist_ok=True)
                prepared = True
            hub.create_commit(
                repo_id,
                operations,
                commit_message=f"{'final' if final else 'epoch'} {epoch}: model/, history.csv, "
                "checkpoints/last.pt",
                token=token,
                revision=branch,
            )
        except Exception as error:  # network, quota, permissions: training must not die of it
            logger.warning(
                "upload of epoch %d to %s (branch %s) failed: %s: %s; training continues and the "
                "next upload carries this epoch's files",
                epoch,
                repo_id,
                branch,
                type(error).__name__,
                error,
            )

    return upload


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def cmd_card(args: argparse.Namespace) -> None:
    folder = build_model_folder(
        args.run, args.out, split=args.split, figures=not args.no_figures, repo_id=args.repo_id
    )
    print(f"model card: {folder / 'README.md'}")


def cmd_push(args: argparse.Namespace) -> None:
    try:
        push_model_folder(
            args.model_dir,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            dry_run=args.dry_run,
        )
    except (MissingTokenError, HfHubHTTPError) as error:
        # A clean message rather than a traceback; neither error carries the token.
        print(f"chexvision push: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def add_publish_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `chexvision card` and `chexvision push` (called from cli.build_parser)."""
    p = subparsers.add_parser("card", help="build a model folder (weights, metrics, model card)")
    p.add_argument("run", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="MODEL_DIR")
    p.add_argument("--split", default="test", choices=["val", "test"], help="split to report")
    p.add_argument("--repo-id", help="owner/name for the card's loading example")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.set_defaults(func=cmd_card)

    p = subparsers.add_parser("push", help="upload a model folder to the Hugging Face Hub")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--repo-id", required=True, help="owner/name on the Hub")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="branch to commit to (created when absent)")
    p.add_argument(
        "--dry-run", action="store_true", help="list what would be uploaded; no token, no network"
    )
    p.set_defaults(func=cmd_push)


__all__ = [
    "build_model_folder",
    "push_model_folder",
    "make_epoch_uploader",
    "resolve_token",
    "upload_plan",
    "add_publish_commands",
    "ProvenanceError",
    "MissingTokenError",
]
