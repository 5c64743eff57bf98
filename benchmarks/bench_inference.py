"""End-to-end scoring of 1,344 radiographs (1024 px PNG -> probabilities): baseline vs ours.

Rows (resnet18 at 224 px, random weights: the timing does not depend on them):
  baseline      the plain torchvision recipe: DataLoader (num_workers = cores, batch 32), PIL
                open + convert RGB + Resize(256) + CenterCrop(224) + ToTensor + Normalize,
                torchvision resnet18 in fp32 under no_grad
  predict off   `predict.predict_images(amp="off")`: exact fp32, the library default
  predict bf16  `predict.predict_images(amp="bf16")`
The clock includes everything from the list of paths to the probabilities (decode, resize,
model); the model is built before the clock starts. Probabilities of each fast row are compared
with the fp32 row on the same images. Accuracy is checked on a trained model too: a
`chexvision demo --quick` run (trained here into /tmp if --run is not given; about a minute) scored
on its synthetic test PNGs with amp off and bf16: largest probability difference and AUC change.

    .venv/bin/python benchmarks/bench_inference.py [--n 1344] [--repeats 1] [--run RUN_FOLDER]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

import common
import numpy as np
import torch
import torchvision
from PIL import Image

from chexvision_lib.core.labels import FINDINGS, OUTPUTS
from chexvision_lib.core.predictions import prob_column
from chexvision_lib.data.batches import CachedSplit
from chexvision_lib.evaluation.metrics import per_class_auc
from chexvision_lib.models.loading import load_model
from chexvision_lib.models.predict import predict_images
from chexvision_lib.models.registry import build_model


class BaselineDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path]) -> None:
        from torchvision import transforms

        self.paths = paths
        self.transform = transforms.Compose(
            [
                transforms.Resize(256),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB"))


def run_baseline(
    paths: list[Path], workers: int, batch_size: int, device: torch.device
) -> tuple[float, np.ndarray]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=len(OUTPUTS)).eval().to(device)
    started = time.perf_counter()
    loader = torch.utils.data.DataLoader(
        BaselineDataset(paths),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    out = []
    with torch.no_grad():
        for x in loader:
            out.append(torch.sigmoid(model(x.to(device))).cpu().numpy())
    return time.perf_counter() - started, np.concatenate(out)


def run_predict(model, paths: list[Path], amp: str, workers: int, batch_size: int):
    started = time.perf_counter()
    frame = predict_images(model, paths, batch_size=batch_size, workers=workers, amp=amp)
    seconds = time.perf_counter() - started
    return seconds, frame[[prob_column(n) for n in OUTPUTS]].to_numpy()


def demo_run(run: Path | None) -> Path:
    """A trained run folder: --run, or a `chexvision demo --quick` run trained once into /tmp."""
    if run is not None:
        return run
    folder = common.scratch_folder("demo", keep=True)
    if not (folder / "run" / "test" / "metrics.json").exists():
        from chexvision_lib.studies.demo import run_demo

        print("training a quick demo model for the accuracy check (about a minute)...", flush=True)
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            run_demo(folder, quick=True)
    return folder / "run"


def accuracy_rows(run: Path, workers: int, batch_size: int) -> list[dict[str, object]]:
    """Score every image (file) of the run's cache with amp off and bf16; compare probabilities
    and AUCs. All splits, not only test: the question is whether the fast path ranks images as
    the exact one does, and more images make the AUC comparison less coarse."""
    model = load_model(run)
    cache = json.loads((run / "config.json").read_text())["cache"]["path"]
    splits = [CachedSplit(cache, split) for split in ("train", "val", "test")]
    paths = [Path(p) for split in splits for p in split.table["path"]]
    labels = np.concatenate([split.labels for split in splits])
    rows, reference = [], None
    for amp in ("off", "bf16"):
        _, probs = run_predict(model, paths, amp, workers, batch_size)
        aucs = per_class_auc(labels, probs)
        macro = float(np.nanmean(aucs[: len(FINDINGS)]))
        if reference is None:
            reference = probs, aucs, macro
        diff = np.abs(probs - reference[0])
        rows.append(
            {
                "model": f"{model.arch} (demo run, {model.image_size} px)",
                "amp": amp,
                "images": len(paths),
                "max |dp| vs fp32": float(np.nanmax(diff)),
                "mean |dp|": float(np.nanmean(diff)),
                "macro AUC (14)": macro,
                "abnormal AUC": float(aucs[-1]),
                "|d macro AUC|": abs(macro - reference[2]),
                "|d abnormal AUC|": abs(float(aucs[-1] - reference[1][-1])),
                "max |dAUC| of 15": float(np.nanmax(np.abs(aucs - reference[1]))),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_image_arguments(parser, n=1344)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=common.CORES, help="decode workers")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per row; best kept")
    parser.add_argument("--skip-baseline", action="store_true", help="skip the ~50 s baseline")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    parser.add_argument(
        "--amps",
        nargs="+",
        help="predict_images amp settings to time (default: off bf16 on a CPU, off fp16 on CUDA)",
    )
    parser.add_argument("--run", type=Path, help="trained run folder for the accuracy check")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args(argv)
    device = common.resolve_device(args.device)
    amps = args.amps or (["off", "fp16"] if device.type == "cuda" else ["off", "bf16"])
    print(common.describe_machine(device))

    folder = common.scratch_folder("inference", keep=True)
    paths = common.replicate(args.images, args.n, folder / "png")
    rows = []
    probabilities: dict[str, np.ndarray] = {}
    if not args.skip_baseline:
        runs = [
            run_baseline(paths, args.workers, args.batch_size, device) for _ in range(args.repeats)
        ]
        rows.append(_timing_row("baseline: torchvision recipe, fp32", runs, len(paths)))
        print(f"  baseline: {rows[-1]['seconds']:.1f} s", flush=True)
    torch.manual_seed(0)
    model = build_model("resnet18", image_size=224).to(device)
    for amp in amps:
        runs = [
            run_predict(model, paths, amp, args.workers, args.batch_size)
            for _ in range(args.repeats)
        ]
        probabilities[amp] = runs[0][1]
        row = _timing_row(f"predict_images(amp={amp!r})", runs, len(paths))
        if "off" in probabilities:
            row["max |dp| vs fp32"] = float(np.nanmax(np.abs(runs[0][1] - probabilities["off"])))
        rows.append(row)
        print(f"  predict amp={amp}: {row['seconds']:.1f} s", flush=True)
    print()
    print(f"{len(paths)} PNGs of 1024 px ({len(common.real_images(args.images))} distinct):")
    print(common.format_table(rows))
    best = min(row["seconds"] for row in rows if row["path"].startswith("predict"))
    print(f"fastest predict: {best:.1f} s (target < 15 s: {'met' if best < 15 else 'NOT met'})")

    if not args.skip_accuracy:
        run = demo_run(args.run)
        print()
        print(f"accuracy on a trained model ({run}): its PNG files scored by predict_images")
        print(common.format_table(accuracy_rows(run, args.workers, args.batch_size)))


def _timing_row(name: str, runs: list[tuple[float, np.ndarray]], n: int) -> dict[str, object]:
    seconds = min(s for s, _ in runs)
    return {
        "path": name,
        "seconds": seconds,
        "img/s": n / seconds,
        "all runs (s)": " / ".join(f"{s:.1f}" for s, _ in runs),
    }


if __name__ == "__main__":
    main()
