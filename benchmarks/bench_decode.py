"""`prepare` costs: decoders for 1024 px PNG -> 256 px grey, per core, and the real prepare.

Part 1, one core (every library pinned to one thread): images/s of each decoder + resize, and the
largest pixel difference from `image_io.load_grey` (what the cache holds today), over the same
images. Part 2: `cache.prepare_cache` end to end (all cores) for two sizes of index, with the peak
memory of the main process and of the largest worker, to show memory does not grow with N.

    .venv/bin/python benchmarks/bench_decode.py [--n 200] [--prepare-n 200 800]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import common
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from chexvision_lib.data.image_io import load_grey


# --- decoders: path -> uint8 (size, size) --------------------------------------------------------
def load_grey_today(path: Path, size: int) -> np.ndarray:
    return load_grey(path, size)  # 8-bit grey PNG: OpenCV decode + PIL resize; others: PIL


def pil_only(path: Path, size: int) -> np.ndarray:
    # What load_grey did before it decoded with OpenCV: PIL open, convert L, PIL resize.
    with Image.open(path) as image:
        grey = image.convert("L")
        return np.asarray(grey.resize((size, size), Image.Resampling.BILINEAR))


def pil_reduce(path: Path, size: int) -> np.ndarray:
    # Image.reduce: integer box downscale (4x4 means for 1024 -> 256), then exact-size resize.
    with Image.open(path) as image:
        grey = image.convert("L")
        factor = max(1, min(grey.size) // size)
        grey = grey.reduce(factor)
        if grey.size != (size, size):
            grey = grey.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(grey)


def pil_draft(path: Path, size: int) -> np.ndarray:
    # draft() lets the JPEG decoder skip DCT coefficients; for PNG it is a no-op (returns None).
    with Image.open(path) as image:
        image.draft("L", (size, size))
        return np.asarray(image.convert("L").resize((size, size), Image.Resampling.BILINEAR))


def cv2_area(path: Path, size: int) -> np.ndarray:
    grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    return cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)


def cv2_reduced(path: Path, size: int) -> np.ndarray:
    grey = cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_4)  # 1024 -> 256, decoded in full
    if grey.shape != (size, size):
        grey = cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)
    return grey


def torchvision_png(path: Path, size: int) -> np.ndarray:
    from torchvision.io import ImageReadMode, decode_png, read_file

    grey = decode_png(read_file(str(path)), ImageReadMode.GRAY)  # (1, H, W) uint8
    x = F.interpolate(
        grey[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return x.round_().clamp_(0, 255).to(torch.uint8)[0, 0].numpy()


DECODERS: dict[str, tuple[Callable[[Path, int], np.ndarray], str]] = {
    "load_grey (today)": (load_grey_today, "OpenCV imdecode + PIL resize BILINEAR (antialiased)"),
    "PIL only": (pil_only, "PIL open + convert L + resize BILINEAR (antialiased)"),
    "PIL reduce(4)": (pil_reduce, "open + convert L + Image.reduce (box 4x4)"),
    "PIL draft": (pil_draft, "draft() is JPEG-only: a no-op on PNG"),
    "OpenCV INTER_AREA": (cv2_area, "imread GRAYSCALE + resize INTER_AREA"),
    "OpenCV REDUCED_GRAYSCALE_4": (cv2_reduced, "imread IMREAD_REDUCED_GRAYSCALE_4"),
    "torchvision decode_png": (torchvision_png, "read_file + decode_png GRAY + interpolate AA"),
}


def time_decoder(decode, paths: list[Path], size: int) -> tuple[float, list[np.ndarray]]:
    decode(paths[0], size)  # warm-up (imports, first-call set-up)
    started = time.perf_counter()
    out = [decode(path, size) for path in paths]
    return len(paths) / (time.perf_counter() - started), out


def raw_decode_identical(paths: list[Path]) -> bool:
    """Whether OpenCV's full-size decode equals PIL's pixel for pixel (before any resize)."""
    for path in paths:
        ours = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if not np.array_equal(ours, load_grey(path)):
            return False
    return True


# --- prepare end to end, one subprocess per N so peak memory is its own ----------------------
PREPARE_CHILD = """
import json, resource, sys, time
import pandas as pd
from chexvision_lib.data.cache import prepare_cache
table = pd.read_csv(sys.argv[1], dtype={"patient": str, "image_id": str})
started = time.perf_counter()
prepare_cache(table, sys.argv[2], size=int(sys.argv[3]), workers=int(sys.argv[4]), progress=False)
seconds = time.perf_counter() - started
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "main_mb": own, "worker_mb": worker}))
"""


def run_prepare(paths: list[Path], folder: Path, size: int, workers: int) -> dict[str, float]:
    folder.mkdir(parents=True, exist_ok=True)
    index = folder / "index.csv"
    common.index_table(paths).to_csv(index, index=False)
    result = subprocess.run(
        [sys.executable, "-c", PREPARE_CHILD, str(index), str(folder / "cache"), str(size)]
        + [str(workers)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_image_arguments(parser, n=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best is kept")
    parser.add_argument(
        "--prepare-n", type=int, nargs="*", default=[200, 800], help="index sizes for prepare"
    )
    parser.add_argument("--workers", type=int, default=common.CORES, help="prepare workers")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    print(common.describe_machine(torch.device("cpu")))
    print(f"OpenCV {cv2.__version__}, Pillow {Image.__version__}; decoders pinned to 1 thread")

    folder = common.scratch_folder("decode")
    paths = common.replicate(args.images, args.n, folder / "png")
    # Rounds of every decoder in turn, so each sees the same share of the machine's load.
    rates: dict[str, list[float]] = {name: [] for name in DECODERS}
    pixels: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, (decode, _what) in DECODERS.items():
            rate, out = time_decoder(decode, paths, args.size)
            rates[name].append(rate)
            pixels.setdefault(name, np.stack(out))
    reference = pixels["load_grey (today)"].astype(np.int16)
    rows = []
    for name, (_decode, what) in DECODERS.items():
        diff = np.abs(pixels[name].astype(np.int16) - reference)
        rows.append(
            {
                "decoder": name,
                "what": what,
                "img/s (1 core)": max(rates[name]),
                "all runs": " / ".join(f"{r:.0f}" for r in rates[name]),
                "max |diff| vs today": int(diff.max()),
                "mean |diff|": float(diff.mean()),
            }
        )
    print()
    print(f"{args.n} images ({len(common.real_images(args.images))} distinct), 1024 -> {args.size}")
    print(common.format_table(rows))
    identical = raw_decode_identical(common.real_images(args.images))
    print(f"OpenCV full-size decode == PIL decode, every real image: {identical}")

    rows = []
    for n in args.prepare_n:
        prepare_paths = common.replicate(args.images, n, folder / "png")
        result = run_prepare(prepare_paths, folder / f"prepare-{n}", args.size, args.workers)
        rows.append(
            {
                "N": n,
                "workers": args.workers,
                "seconds": result["seconds"],
                "img/s": n / result["seconds"],
                "img/s per core": n / result["seconds"] / args.workers,
                "peak RSS main (MB)": result["main_mb"],
                "peak RSS largest worker (MB)": result["worker_mb"],
            }
        )
        print(f"  prepare N={n}: {n / result['seconds']:.0f} img/s", flush=True)
    print()
    print("chexvision prepare (cache.prepare_cache), spawn pool, end to end incl. pool start-up:")
    print(common.format_table(rows))


if __name__ == "__main__":
    main()
