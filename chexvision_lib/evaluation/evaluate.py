"""Evaluation: score a split with the shipped model -> predictions.csv -> metrics.json.

Everything in metrics.json is computed from predictions.csv alone (`metrics_from_predictions`), so
any figure can be recomputed, compared or re-bootstrapped without the model or the images. The
thresholds are those chosen on validation and stored in the model's config.json — never tuned on
the split being reported.

With test-time augmentation (`tta`, models/tta.py) the split is scored twice: the plain files stay
where they were, as they would be without it (they are the model's results: the model card and
the report read them), and the TTA ones go to a folder of their own inside, <split>/tta-<name>/,
whose metrics.json records the view set and that the thresholds were chosen without TTA.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from chexvision_lib.core.atomic_files import write_json_atomic
from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.core.hashing import file_sha256
from chexvision_lib.core.labels import ABNORMAL, FINDINGS, OUTPUTS
from chexvision_lib.core.predictions import label_column, predictions_frame, prob_column
from chexvision_lib.data.batches import BatchLoader, CachedSplit
from chexvision_lib.data.cache import cache_fingerprint
from chexvision_lib.evaluation.calibration import apply_temperature, calibration_summary
from chexvision_lib.evaluation.metrics import (
    age_band,
    binary_metrics,
    bootstrap_auc,
    per_class_auc,
    subgroup_table,
)
from chexvision_lib.evaluation.operating_points import operating_points_summary
from chexvision_lib.models.loading import load_model
from chexvision_lib.models.predict import predict_loader
from chexvision_lib.models.registry import WEIGHTS_FILE, ChestClassifier
from chexvision_lib.models.tta import check_tta, tta_record
from chexvision_lib.runtime.devices import autocast_dtype, resolve_device


def _clean(value: object) -> object:
    """JSON-safe: NaN -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def metrics_from_predictions(
    frame: pd.DataFrame,
    thresholds: list[float | None],
    *,
    split: str,
    n_resamples: int = 2000,
    seed: int = 0,
    temperatures: list[float | None] | None = None,
    prevalence: float | None = None,
) -> dict:
    """AUCs with patient-bootstrap 95% CIs, and operating-point metrics at the stored thresholds
    and at 0.5, for each of the 15 outputs that has labels and probabilities; calibration (Brier,
    ECE, reliability) and sensitivity/specificity at fixed specificity/sensitivity, with CIs from
    the same patient resamples.

    `temperatures`: those the model applied to produce `frame`'s probabilities (config.json);
    calibration is then reported before (the probabilities undone to the raw model's) and after.
    `prevalence`: the operating points also give PPV and NPV at this prevalence (Bayes' rule).
    """
    probs = frame[[prob_column(n) for n in OUTPUTS]].to_numpy(dtype=np.float64)
    labels = frame[[label_column(n) for n in OUTPUTS]].to_numpy(dtype=np.float64)
    usable = [
        i
        for i in range(len(OUTPUTS))
        if not np.isnan(probs[:, i]).all() and (labels[:, i] >= 0).any()
    ]
    # Findings are bootstrapped together so the macro AUC's CI comes from the same resamples;
    # the abnormal output separately (it is not part of the macro average).
    lower, upper = np.full(len(OUTPUTS), np.nan), np.full(len(OUTPUTS), np.nan)
    macro_ci = None
    patients = frame["patient"].to_numpy()
    for group in ([i for i in usable if i < len(FINDINGS)], [i for i in usable if i == 14]):
        if not group:
            continue
        ci = bootstrap_auc(
            labels[:, group], probs[:, group], patients, n_resamples=n_resamples, seed=seed
        )
        lower[group], upper[group] = ci["lower"], ci["upper"]
        if group[0] < len(FINDINGS) and len(group) == len(FINDINGS):
            macro_ci = [float(ci["macro_lower"]), float(ci["macro_upper"])]
    aucs = per_class_auc(labels, probs)
    outputs: dict[str, dict] = {}
    for i in usable:
        name = OUTPUTS[i]
        known = labels[:, i] >= 0
        y, p = labels[known, i], probs[known, i]
        entry = {
            "auc": float(aucs[i]),
            "auc_ci95": [float(lower[i]), float(upper[i])],
            "n": int(known.sum()),
            "positives": int(y.sum()),
            "at_0.5": binary_metrics(y, p, 0.5),
        }
        if thresholds[i] is not None:
            entry["at_validation_threshold"] = binary_metrics(y, p, float(thresholds[i]))
        outputs[name] = entry
    finding_aucs = [outputs[f]["auc"] for f in FINDINGS if f in outputs]
    result = {
        "split": split,
        "n_images": len(frame),
        "n_patients": int(frame["patient"].nunique()),
        "macro_auc": float(np.nanmean(finding_aucs)) if finding_aucs else None,
        "binary_auc": outputs.get(ABNORMAL, {}).get("auc"),
        "bootstrap": {
            "unit": "patient",
            "n_resamples": n_resamples,
            "seed": seed,
            "confidence": 0.95,
        },
        "outputs": outputs,
        "thresholds": dict(zip(OUTPUTS, thresholds, strict=True)),
        "disclaimer": DISCLAIMER,
    }
    if macro_ci is not None:
        result["macro_auc_ci95"] = macro_ci
    if ABNORMAL in outputs:
        result["binary"] = outputs[ABNORMAL].get(
            "at_validation_threshold", outputs[ABNORMAL]["at_0.5"]
        )
    result.update(
        calibration_and_operating_points(
            labels, probs, patients, usable, temperatures, n_resamples, seed, prevalence
        )
    )
    return _clean(result)


def calibration_and_operating_points(
    labels: np.ndarray,
    probs: np.ndarray,
    patients: np.ndarray,
    usable: list[int],
    temperatures: list[float | None] | None,
    n_resamples: int,
    seed: int,
    prevalence: float | None = None,
) -> dict:
    """metrics.json's "calibration" and "operating_points" for the usable outputs."""
    names = [OUTPUTS[i] for i in usable]
    if not names:
        return {}
    y, p = labels[:, usable], probs[:, usable]
    options = {"names": names, "n_resamples": n_resamples, "seed": seed}
    scaled = None
    if temperatures is not None and any(temperatures[i] is not None for i in usable):
        scaled = [temperatures[i] for i in usable]
        # Undo the scaling the model applied: the "before" numbers are the raw model's.
        inverse = [None if t is None else 1.0 / t for t in scaled]
        p_raw = apply_temperature(p, inverse)
    else:
        p_raw = p
    return {
        "calibration": calibration_summary(y, p_raw, patients, temperatures=scaled, **options),
        "operating_points": operating_points_summary(
            y, p, patients, prevalence=prevalence, **options
        ),
    }


SUBGROUP_COLUMNS = ("sex", "age_band", "view")


def subgroups_from_predictions(frame: pd.DataFrame) -> pd.DataFrame:
    """AUC per subgroup (sex, age band, view position) per output, with counts.

    Long format: group_column, value, output, n_images, n_positive, auc. Outputs without labels
    (findings of a binary dataset) are left out; groups with one class get a NaN AUC.
    """
    frame = frame.assign(age_band=age_band(frame["age"].to_numpy(dtype=float)))
    usable = [
        n
        for n in OUTPUTS
        if (frame[label_column(n)] >= 0).any() and frame[prob_column(n)].notna().any()
    ]
    tables = []
    for column in SUBGROUP_COLUMNS:
        if frame[column].astype(object).fillna("").astype(str).str.len().eq(0).all():
            continue  # e.g. external datasets without sex/view
        table = subgroup_table(
            frame, column, [label_column(n) for n in usable], [prob_column(n) for n in usable]
        )
        table = table.rename(columns={column: "value"})
        table.insert(0, "group_column", column)
        table["output"] = table["output"].str.removeprefix("label_")
        tables.append(table)
    columns = ["group_column", "value", "output", "n_images", "n_positive", "auc"]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)


def run_cache(run: Path, config: dict) -> Path:
    """The cache a run trained on: its recorded path, else where it sits relative to the run (a
    run and its cache mounted together elsewhere, e.g. from a Kaggle kernel's output)."""
    recorded = Path(config["cache"]["path"])
    candidates = [recorded]
    if config["cache"].get("relative_to_run"):
        candidates.append(run / config["cache"]["relative_to_run"])
    for candidate in candidates:
        if (candidate / "cache.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"{run}: the cache it trained on is not at {' or '.join(map(str, candidates))}; prepare "
        "the same data again with the same settings and pass it as cache (--cache)"
    )


def same_data(config: dict, cache: str | Path) -> bool:
    """Whether `cache` holds the run's own data: the same source files (by SHA-256) decoded with
    the same settings into the same index (ids, patients, splits, labels: not another seed,
    view filter or reader option of the same files). Then its splits are the run's splits, not
    an external dataset. A source without file hashes (class folders) is never the same."""
    info = json.loads((Path(cache) / "cache.json").read_text())
    recorded = config.get("data_source", {}).get("sha256")
    index = config["cache"].get("index_sha256")  # runs trained before it was recorded lack it
    return (
        recorded is not None
        and info.get("source", {}).get("sha256") == recorded
        and info.get("settings") == config["cache"].get("settings")
        and (index is None or cache_fingerprint(cache) == index)
    )


def tta_folder(tta: str) -> str:
    """The folder, inside a split's, of its results with test-time augmentation `tta`."""
    return f"tta-{check_tta(tta)}"


def _trained_with_hflip(config: dict) -> bool | None:
    """Whether the run's training showed the model mirrored images (None: not recorded)."""
    if "hflip" not in config:
        return None
    return bool(config.get("augment", True)) and bool(config["hflip"])


def evaluate_run(
    run_dir: str | Path,
    split: str = "test",
    *,
    cache: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 64,
    n_resamples: int = 2000,
    show_progress: bool = True,
    prevalence: float | None = None,
    tta: str = "none",
) -> dict:
    """Score `split` of the run's cache (or another cache) with the run's shipped model.

    Writes RUN/<split>/predictions.csv, metrics.json and subgroups.csv; for a cache of other data
    (external validation) RUN/external_<cache folder name>_<split>/. A cache of the run's own data
    prepared again elsewhere (same file hashes and settings) counts as its own. Returns the
    metrics, with "folder" set.

    `tta` other than "none" also scores the split with that test-time augmentation and writes
    the same three files to <folder>/tta-<tta>/ (`tta_folder`), its metrics.json with a "tta"
    record; the plain files are exactly those a run without it writes. The returned (plain)
    metrics then hold the TTA ones, with their "folder", under "with_tta".
    """
    check_tta(tta)  # before the model and the cache are loaded
    run = Path(run_dir)
    config_path = run / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{run} is not a run folder (no config.json)")
    config = json.loads(config_path.read_text())
    torch_device = resolve_device(device)
    model = load_model(run, device=torch_device)
    own = cache is None or same_data(config, cache)
    if own:  # the run's own data, with its cross-validation fold if it had one
        folds = {k: config.get(k, 0) for k in ("folds", "fold", "seed")}
        data = CachedSplit(cache or run_cache(run, config), split, **folds)
    else:
        data = CachedSplit(cache, split)
    evaluated_cache = cache if cache is not None else run_cache(run, config)
    loader = BatchLoader(data, batch_size, torch_device, shuffle=False)
    model_config = json.loads((run / "model" / "config.json").read_text())
    evaluated = data.info.get("source", {})
    provenance = {
        # Which checkpoint produced these numbers: a model card may only quote metrics whose
        # weights hash matches the weights it ships.
        "model": {
            "arch": model.arch,
            "run": str(run.resolve()),  # absolute: a card may be built from anywhere
            "best_epoch": model_config.get("best_epoch"),
            "weights_sha256": file_sha256(run / "model" / WEIGHTS_FILE),
        },
        # The evaluated data's identity (not the training data's): a card checks they are the
        # same.
        "data_source": {
            **{key: evaluated.get(key) for key in ("kind", "synthetic", "sha256")},
            "index_sha256": cache_fingerprint(evaluated_cache),
        },
    }
    # Another dataset (external validation) must not overwrite the run's own results.
    out = run / (split if own else f"external_{Path(cache).name}_{split}")
    options = {"split": split, "n_resamples": n_resamples, "prevalence": prevalence}
    metrics = _score_split(model, loader, data, out, provenance, show_progress, **options)
    result = {**metrics, "folder": str(out)}
    if tta != "none":
        provenance["tta"] = tta_record(tta, _trained_with_hflip(config))
        tta_out = out / tta_folder(tta)
        with_tta = _score_split(
            model, loader, data, tta_out, provenance, show_progress, tta=tta, **options
        )
        result["with_tta"] = {**with_tta, "folder": str(tta_out)}
    return result


def _score_split(
    model: ChestClassifier,
    loader: BatchLoader,
    data: CachedSplit,
    out: Path,
    provenance: dict,
    show_progress: bool,
    *,
    split: str,
    n_resamples: int,
    prevalence: float | None,
    tta: str = "none",
) -> dict:
    """Score the loader's split (with test-time augmentation `tta`) and write predictions.csv,
    subgroups.csv and metrics.json (with `provenance`'s keys added) to `out`."""
    device = loader.device
    probs, labels = predict_loader(
        model,
        loader,
        model.preprocessing,
        autocast_dtype("auto", device),
        channels_last=device.type == "cuda",
        desc=f"evaluate {split}" + ("" if tta == "none" else f" (tta {tta})"),
        show_progress=show_progress,
        tta=tta,
    )
    frame = predictions_frame(data.metadata(), probs, labels)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "predictions.csv", index=False)
    subgroups_from_predictions(frame).to_csv(out / "subgroups.csv", index=False)
    metrics = metrics_from_predictions(
        frame,
        model.thresholds,
        split=split,
        n_resamples=n_resamples,
        temperatures=model.temperatures,
        prevalence=prevalence,
    )
    metrics.update(provenance)
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def _interval(ci: list | None) -> str:
    """ " [lo, hi]", or "" where the bootstrap could not give one (too few resamples kept)."""
    if not ci or any(bound is None for bound in ci):
        return ""
    return f" [{ci[0]:.4f}, {ci[1]:.4f}]"


def summary_line(metrics: dict) -> str:
    parts = [f"{metrics['split']}: {metrics['n_images']} images / {metrics['n_patients']} patients"]
    if metrics.get("macro_auc") is not None:
        ci = metrics.get("macro_auc_ci95")
        parts.append(f"macro AUC {metrics['macro_auc']:.4f}" + _interval(ci))
    if metrics.get("binary_auc") is not None:
        ci = metrics["outputs"][ABNORMAL]["auc_ci95"]
        parts.append(f"binary AUC {metrics['binary_auc']:.4f}" + _interval(ci))
    return ", ".join(parts)
