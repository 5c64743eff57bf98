"""The evaluation report of a run: figures, a CAM grid and localisation scores.

Reads only what earlier steps wrote (RUN/history.csv, RUN/<split>/predictions.csv and
metrics.json, the model folder, the cache) and writes PNGs and CSVs under RUN/<split>/, so it can
be re-run alone and every figure can be regenerated from files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from chexvision_lib.core.labels import ABNORMAL, FINDINGS, OUTPUTS
from chexvision_lib.core.predictions import prob_column, read_predictions
from chexvision_lib.data.batches import CachedSplit
from chexvision_lib.data.prepare import source_reader
from chexvision_lib.data.provenance import verify_nih_source
from chexvision_lib.evaluation.calibration import apply_temperature
from chexvision_lib.explain.cam_methods import DEFAULT_CAM_METHOD, display_name
from chexvision_lib.explain.gradcam import (
    grad_cam,
    localisation_scores,
    normalised_inputs,
    overlay,
    read_bbox_list,
)
from chexvision_lib.models.loading import load_model
from chexvision_lib.reporting import plots
from chexvision_lib.reporting.calibration_plots import reliability_diagram
from chexvision_lib.runtime.devices import resolve_device

BBOX_NAMES = ("BBox_List_2017.csv", "BBox_List_2017.csv.gz")


def split_label(metrics: dict, run_config: dict) -> str:
    """How figures name the split: "official" only when the recorded hashes are NIH's release."""
    source = run_config.get("data_source", {})
    if source.get("synthetic"):
        return f"synthetic NIH-layout data, {metrics['split']} split"
    if verify_nih_source(source)["verified"] and metrics["split"] == "test":
        return "official test split (test_list.txt)"
    return f"{metrics['split']} split"


def _load(run: Path, split: str) -> tuple[pd.DataFrame, dict, dict]:
    folder = run / split
    if not (folder / "metrics.json").exists():
        raise FileNotFoundError(
            f"{folder}/metrics.json not found: run `chexvision evaluate "
            f"{run} --split {split}` first"
        )
    return (
        read_predictions(folder / "predictions.csv"),
        json.loads((folder / "metrics.json").read_text()),
        json.loads((run / "config.json").read_text()),
    )


def write_figures(run_dir: str | Path, split: str = "test") -> dict[str, Figure]:
    """ROC curves, confusion matrices, reliability diagrams (before/after temperature scaling),
    training curves and AUC bars as RUN/<split>/figures/*.png.

    Returns the figures by file stem, for inline display in notebooks.
    """
    run = Path(run_dir)
    predictions, metrics, config = _load(run, split)
    label = split_label(metrics, config)
    out = run / split / "figures"
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Figure] = {}
    has_findings = metrics.get("macro_auc") is not None
    if has_findings:
        figures["roc_findings"] = plots.roc_grid(
            predictions, metrics, out / "roc_findings.png", split_label=label
        )
        figures["auc_bars"] = plots.auc_bars(metrics, out / "auc_bars.png", split_label=label)
        figures["confusion_findings"] = plots.confusion_matrices(
            metrics,
            out / "confusion_findings.png",
            # outputs whose validation split had no positives have no stored threshold
            outputs=[
                f for f in FINDINGS if "at_validation_threshold" in metrics["outputs"].get(f, {})
            ],
            split_label=label,
        )
    figures["roc_abnormal"] = plots.roc_binary(
        predictions, metrics, out / "roc_abnormal.png", split_label=label
    )
    figures["confusion_abnormal"] = plots.confusion_matrices(
        metrics, out / "confusion_abnormal.png", outputs=[ABNORMAL], split_label=label
    )
    temperatures = json.loads((run / "model" / "config.json").read_text()).get("temperatures")
    figures["reliability"] = reliability_diagram(
        unscaled(predictions, temperatures),
        out / "reliability.png",
        temperatures=temperatures,
        split_label=label,
    )
    if (run / "history.csv").exists():
        figures["training_curves"] = plots.training_curves(
            pd.read_csv(run / "history.csv"), out / "training_curves.png"
        )
    return figures


def unscaled(predictions: pd.DataFrame, temperatures: list[float | None] | None) -> pd.DataFrame:
    """predictions.csv's probabilities as the raw model gave them, before the temperatures it
    applies (so a reliability diagram can show before and after)."""
    if not temperatures:
        return predictions
    columns = [prob_column(name) for name in OUTPUTS]
    inverse = [None if t is None else 1.0 / t for t in temperatures]
    raw = predictions.copy()
    raw[columns] = apply_temperature(predictions[columns].to_numpy(dtype=float), inverse)
    return raw


def _cache_for(run: Path, cache: str | Path | None) -> str:
    return str(cache or json.loads((run / "config.json").read_text())["cache"]["path"])


def gradcam_grid(
    run_dir: str | Path,
    split: str = "test",
    output: str = ABNORMAL,
    per_group: int = 2,
    cache: str | Path | None = None,
    *,
    cam_method: str = DEFAULT_CAM_METHOD,
    device: str = "auto",
) -> Figure:
    """CAM overlays (Grad-CAM by default; any `cam_methods` name) of true/false positives and
    negatives for one output (Tang et al. Fig. 4), saved as
    RUN/<split>/figures/<cam_method>_<output>.png (gradcam_<output>.png for Grad-CAM).
    `device`: where the model runs ("auto": the GPU when there is one)."""
    run = Path(run_dir)
    predictions, metrics, config = _load(run, split)
    threshold = metrics["thresholds"].get(output)
    threshold = 0.5 if threshold is None else threshold
    cases = plots.select_cases(predictions, output, threshold, per_group=per_group)
    if cases.empty:
        raise ValueError(f"{output}: no labelled cases in the {split} predictions")
    data = CachedSplit(_cache_for(run, cache), split)
    positions = data.table.reset_index().set_index("image_id").loc[cases["image_id"], "index"]
    pixels = data.read(positions.to_numpy())
    model = load_model(run, device=resolve_device(device))
    x = normalised_inputs(pixels, model.preprocessing, next(model.parameters()).device)
    cams = grad_cam(model, x, OUTPUTS.index(output), method=cam_method)
    size = model.preprocessing["image_size"]
    greys = [np.asarray(Image.fromarray(p).resize((size, size))) for p in pixels]
    overlays = [overlay(g, m) for g, m in zip(greys, cams.maps, strict=True)]
    titles = [
        f"{case} · {plots.display_name(output)} p={p:.2f}"
        for case, p in zip(cases["case"], cases[f"prob_{output}"], strict=True)
    ]
    path = run / split / "figures" / f"{cams.method}_{output}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return plots.cam_grid(
        greys,
        overlays,
        titles,
        path,
        title=f"{display_name(cam_method)} overlays",
        caption=f"{split_label(metrics, config)}; threshold {threshold:.3f} chosen on validation",
    )


def find_bbox_list(run_dir: str | Path) -> Path | None:
    """The BBox_List_2017.csv next to the run's data, if the data source has one."""
    root = (
        json.loads((Path(run_dir) / "config.json").read_text()).get("data_source", {}).get("root")
    )
    if not root or not Path(root).is_dir():
        return None
    for name in BBOX_NAMES:
        found = sorted(Path(root).rglob(name))
        if found:
            return found[0]
    return None


# Datasets whose readers keep radiologists' boxes (data/sources/<kind>.read_boxes).
BOXED_SOURCES = ("rsna", "vindr")


def run_boxes(run_dir: str | Path, bbox_csv: str | Path | None = None) -> tuple[pd.DataFrame, str]:
    """The boxes to score a run's CAMs against, and where they came from: `bbox_csv` when given
    (NIH's format), else the annotation files of an RSNA or VinDr source (checked against their
    recorded hashes), else the BBox_List_2017.csv below an NIH root."""
    if bbox_csv is not None:
        return read_bbox_list(bbox_csv), str(bbox_csv)
    source = json.loads((Path(run_dir) / "config.json").read_text()).get("data_source", {})
    kind = source.get("kind")
    if kind in BOXED_SOURCES:
        return source_reader(kind).read_boxes(source), f"the {kind} annotation files"
    found = find_bbox_list(run_dir)
    if found is None:
        raise FileNotFoundError(
            f"no boxes found for {run_dir}: its data ({kind}) has no BBox_List_2017.csv and is "
            f"not one of {', '.join(BOXED_SOURCES)}; pass bbox_csv"
        )
    return read_bbox_list(found), str(found)


def has_boxes(run_dir: str | Path) -> bool:
    """Whether `run_boxes` finds boxes for the run without being given a file."""
    source = json.loads((Path(run_dir) / "config.json").read_text()).get("data_source", {})
    return source.get("kind") in BOXED_SOURCES or find_bbox_list(run_dir) is not None


def original_sizes(boxed: pd.DataFrame) -> list[tuple[int, int]]:
    """(width, height) of each image's file, the space its boxes are drawn in: the index's own
    width/height columns where the reader recorded them (DICOM sources), else read from the file
    header (PIL reads the header only)."""
    if {"width", "height"} <= set(boxed.columns) and boxed[["width", "height"]].notna().all().all():
        return list(zip(boxed["width"].astype(int), boxed["height"].astype(int), strict=True))
    sizes = []
    for path in boxed["path"]:
        with Image.open(path) as image:
            sizes.append(image.size)
    return sizes


def localisation_file(cam_method: str = DEFAULT_CAM_METHOD) -> str:
    """localisation.csv for Grad-CAM, localisation_<cam_method>.csv for the other methods."""
    display_name(cam_method)  # ValueError for an unknown name
    return (
        "localisation.csv" if cam_method == DEFAULT_CAM_METHOD else f"localisation_{cam_method}.csv"
    )


def localisation_report(
    run_dir: str | Path,
    split: str = "test",
    bbox_csv: str | Path | None = None,
    cache: str | Path | None = None,
    seed: int = 0,
    *,
    cam_method: str = DEFAULT_CAM_METHOD,
    device: str = "auto",
    progress: bool = False,
) -> pd.DataFrame:
    """Pointing game and IoBB/IoU of a CAM (Grad-CAM by default) against the radiologist boxes of
    `split`'s images, with the random-map control; written to RUN/<split>/`localisation_file`.

    The method column holds `gradcam.method_label(cam_method)` ("grad_cam" for Grad-CAM) and
    "random"; `attrs["boxes_outside_image"]` counts boxes reaching outside their image (each
    run warns about them). `device`: where the model runs ("auto": the GPU when there is one);
    `progress`: a tqdm bar over the boxed images' pairs. The boxes: see `run_boxes` (NIH's list,
    or RSNA's and VinDr's annotation files).
    """
    run = Path(run_dir)
    boxes, boxes_from = run_boxes(run, bbox_csv)
    data = CachedSplit(_cache_for(run, cache), split)
    boxed = data.table[data.table["image_id"].isin(set(boxes["image_id"]))]
    if boxed.empty:
        raise ValueError(f"none of the {split} images has a box in {boxes_from}")
    pixels = data.read(boxed.index.to_numpy())
    # Boxes are in the pixel space of the original files (1024 px for NIH).
    sizes = original_sizes(boxed)
    model = load_model(run, device=resolve_device(device))
    findings = [f for f in FINDINGS if f in set(boxes["finding"])]
    table = localisation_scores(
        model,
        pixels,
        boxed["image_id"].tolist(),
        findings,
        boxes,
        sizes,
        seed=seed,
        cam_method=cam_method,
        progress=progress,
    )
    (run / split).mkdir(parents=True, exist_ok=True)  # a split not evaluated yet
    table.to_csv(run / split / localisation_file(cam_method), index=False)
    return table
