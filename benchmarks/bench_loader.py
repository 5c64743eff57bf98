"""Training-batch throughput: our cache path vs the PIL-decode DataLoader, per core.

Cache path : BatchLoader over a prepared 256 px cache (memmap read in a reader thread, uint8 to the
             device) + `batches.augment` on the device + normalisation.
PIL path   : torchvision DataLoader with num_workers = cores over the 1024 px PNGs: PIL open,
             convert L, RandomResizedCrop(256) + ToTensor + Normalize, then to the device.
The cache path is timed two ways: the loader alone (the host's whole share of the work when a
GPU trains: augmentation then runs on the GPU), and loader + `batches.augment` on --device (on a
CPU-only machine that is CPU work too).
Both: batch 32, shuffled, one warm-up epoch (worker start-up, page cache) not timed, then the best
of --repeats timed epochs. The one-time `prepare` of the cache is timed too but is not part of the
per-epoch rate (bench_decode.py measures it on its own).

    .venv/bin/python benchmarks/bench_loader.py [--n 1344] [--device auto] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import common
import torch

from chexvision_lib.data.batches import Augment, BatchLoader, CachedSplit, augment
from chexvision_lib.data.cache import prepare_cache

MEAN, STD = 0.5, 0.25  # the scratch normalisation; the value does not change the cost


def time_cache_epoch(
    loader: BatchLoader, size: int, epoch: int, augmentation=augment
) -> tuple[float, float, int]:
    """(wall s, CPU s, images) of one epoch: read, copy to the device, and unless
    `augmentation` is None, augment + normalise on the device."""
    generator = torch.Generator().manual_seed(epoch)
    loader.set_epoch(epoch)
    images = 0
    with common.Stopwatch() as watch:
        for pixels, _labels, _ in loader:
            if augmentation is not None:
                augmentation(pixels, size, Augment(), generator).sub_(MEAN).div_(STD)
            images += len(pixels)
        common.synchronize(loader.device)
    return watch.seconds, watch.cpu, images


def time_pil_epoch(loader, device: torch.device) -> tuple[float, float, int]:
    images = 0
    with common.Stopwatch() as watch:
        for x, _labels in loader:
            x = x.to(device, non_blocking=True)
            images += len(x)
        common.synchronize(device)
    return watch.seconds, watch.cpu, images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_image_arguments(parser, n=1344)
    parser.add_argument("--size", type=int, default=256, help="cache and crop size (px)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--workers", type=int, default=common.CORES, help="DataLoader workers (default: cores)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs; the best is kept")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    device = common.resolve_device(args.device)
    print(common.describe_machine(device))

    folder = common.scratch_folder("loader")
    paths = common.replicate(args.images, args.n, folder / "png")
    started = time.perf_counter()
    cache = prepare_cache(
        common.index_table(paths, split="train"),
        folder / "cache",
        size=args.size,
        workers=args.workers,
        progress=False,
    )
    prepare_s = time.perf_counter() - started
    print(f"prepared {len(paths)} images at {args.size} px in {prepare_s:.1f} s (one-time)")

    rows = []
    data = CachedSplit(cache, "train")
    loader = BatchLoader(data, args.batch_size, device, shuffle=True, drop_last=True)
    where = device_label(device)
    for name, augmentation in (
        ("cache: BatchLoader only (host share)", None),
        (f"cache: BatchLoader + augment on {where}", augment),
    ):
        time_cache_epoch(loader, args.size, 0, augmentation)  # warm-up
        timings = [
            time_cache_epoch(loader, args.size, epoch, augmentation)
            for epoch in range(1, args.repeats + 1)
        ]
        rows.append(_row(name, timings, cores=common.CORES))
        print(f"  {name}: {rows[-1]['img/s']:,.0f} img/s", flush=True)

    pil = common.pil_loader(paths, args.size, args.batch_size, args.workers, device)
    time_pil_epoch(pil, device)  # warm-up: starts the persistent workers
    timings = [time_pil_epoch(pil, device) for _ in range(args.repeats)]
    rows.append(_row(f"PIL DataLoader, {args.workers} workers", timings, cores=common.CORES))
    print(f"  PIL: {rows[-1]['img/s']:,.0f} img/s", flush=True)
    del pil

    pil_row = rows[-1]
    for row in rows:
        row["x PIL per core"] = row["img/s per core"] / pil_row["img/s per core"]
        row["x PIL per CPU-s"] = row["img per CPU-s"] / pil_row["img per CPU-s"]
    print()
    print(common.format_table(rows))
    print()
    for row in rows[:-1]:
        ratio = row["x PIL per core"]
        verdict = "met" if ratio >= 20 else "NOT met"
        print(f"{row['path']}: {ratio:.1f}x the PIL path per core (target >= 20x: {verdict})")


def device_label(device: torch.device) -> str:
    return "GPU" if device.type == "cuda" else "CPU"


def _row(name: str, timings: list[tuple[float, float, int]], cores: int) -> dict[str, object]:
    rates = [images / seconds for seconds, _, images in timings]
    best = max(range(len(timings)), key=lambda i: rates[i])
    seconds, cpu, images = timings[best]
    return {
        "path": name,
        "images": images,
        "img/s": rates[best],
        "img/s per core": rates[best] / cores,
        "img per CPU-s": images / max(cpu, 1e-9),
        "all runs img/s": " / ".join(f"{r:,.0f}" for r in rates),
    }


if __name__ == "__main__":
    main()
