"""`make demo`: the whole pipeline on the built-in synthetic set, end to end on a CPU.

synthetic NIH layout -> cache -> train seresnet_small -> evaluate on the official-style test list.
Re-running continues where it stopped: data and cache are reused, a finished run is re-evaluated,
an interrupted one resumes.
"""

from __future__ import annotations

import time
from pathlib import Path

from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.core.labels import ABNORMAL
from chexvision_lib.data.prepare import prepare
from chexvision_lib.data.synthetic import write_synthetic_nih
from chexvision_lib.evaluation.evaluate import evaluate_run, summary_line
from chexvision_lib.reporting import report
from chexvision_lib.training.config import TrainConfig
from chexvision_lib.training.loop import fit

# Sized so the full demo runs in about two minutes on a 2-core CPU.
DEMO_PATIENTS = 240
DEMO_CACHE_SIZE = 128


def demo_config(out: Path, quick: bool) -> TrainConfig:
    return TrainConfig(
        cache=str(out / "cache"),
        out=str(out / "run"),
        model="seresnet_small",
        epochs=2 if quick else 14,
        batch_size=32,
        lr=3e-3,
        weight_decay=1e-4,
        warmup_epochs=1.0,
        patience=14,
        seed=0,
    )


def run_demo(out: str | Path, quick: bool = False) -> dict:
    out = Path(out)
    started = time.perf_counter()
    data = out / "data"
    if not (data / "test_list.txt").exists():
        write_synthetic_nih(data, n_patients=DEMO_PATIENTS, image_size=256, seed=0)
    prepare(data, out / "cache", size=DEMO_CACHE_SIZE)
    config = demo_config(out, quick)
    run = Path(config.out)
    checkpoint = run / "checkpoints" / "last.pt"
    fit(config, resume=checkpoint.exists())
    metrics = evaluate_run(run, "test", n_resamples=500)
    # A newcomer's first run ends with pictures: ROC curves, calibration, a Grad-CAM grid.
    report.write_figures(run, "test")
    report.gradcam_grid(run, "test", output=ABNORMAL)
    minutes = (time.perf_counter() - started) / 60
    print()
    print(summary_line(metrics))
    print(
        f"outputs: {run}/model (weights, thresholds, temperatures), {run}/history.csv, "
        f"{run}/test/predictions.csv, {run}/test/metrics.json"
    )
    figures = sorted(p.name for p in (run / "test" / "figures").glob("*.png"))
    print(f"figures: {run}/test/figures/ ({', '.join(figures)})")
    print(f"demo took {minutes:.1f} min on the synthetic set (not real radiographs).")
    print(DISCLAIMER)
    return metrics
