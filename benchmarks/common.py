"""What every benchmark script shares: the real images, a replicated set of them, an index table
for `prepare_cache`, the machine description, timing and a printed table.

Not part of the package and not imported by the tests. The scripts run from the repository root
(`.venv/bin/python benchmarks/<name>.py`), so this module is found beside them.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from chexvision_lib.core.labels import OUTPUTS

REPO = Path(__file__).resolve().parents[1]
# The 103 real 1024 px NIH PNGs; never copied into the repository (see benchmarks/README.md).
REAL_IMAGES = Path(os.environ.get("CHEXVISION_REALDATA", REPO.parent / "shared" / "realdata"))
REAL_IMAGES = REAL_IMAGES / "nih" / "images"
CORES = len(os.sched_getaffinity(0))


# --- data ---------------------------------------------------------------------------------------
def add_image_arguments(parser: argparse.ArgumentParser, n: int) -> None:
    parser.add_argument(
        "--images",
        type=Path,
        default=REAL_IMAGES,
        help="folder of PNG radiographs (default: %(default)s)",
    )
    parser.add_argument(
        "--n", type=int, default=n, help="images, replicating the folder's (default: %(default)s)"
    )


def real_images(folder: Path) -> list[Path]:
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise SystemExit(
            f"no PNG files in {folder}; pass --images FOLDER (the real NIH images live in "
            "../shared/realdata/nih/images)"
        )
    return paths


def replicate(folder: Path, n: int, out: Path) -> list[Path]:
    """`n` paths under `out`: symlinks to the folder's PNGs, cycled, each under a unique name.

    Symlinks, not copies: the real files stay where they are and the page cache holds each once,
    so the benchmarks measure decoding (CPU), not the disk; on Kaggle the first epoch also reads
    the disk.
    """
    sources = real_images(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        source = sources[i % len(sources)]
        link = out / f"{i:05d}_{source.name}"
        if not link.exists():
            link.symlink_to(source.resolve())
        paths.append(link)
    return paths


def index_table(paths: Sequence[Path], split: str | None = None, seed: int = 0) -> pd.DataFrame:
    """An index table (nih_index's columns) for `paths`: one patient per image, random labels.

    `split=None` puts 80/10/10 % of the images in train/val/test; otherwise all in `split`.
    """
    rng = np.random.default_rng(seed)
    n = len(paths)
    labels = (rng.random((n, len(OUTPUTS) - 1)) < 0.1).astype(int)
    if split is None:
        splits = np.array(["train"] * n, dtype=object)
        splits[int(0.8 * n) : int(0.9 * n)] = "val"
        splits[int(0.9 * n) :] = "test"
    else:
        splits = np.array([split] * n, dtype=object)
    table = pd.DataFrame(
        {
            "image_id": [p.name for p in paths],
            "path": [str(p) for p in paths],
            "patient": [f"{i:06d}" for i in range(n)],
            "age": 50.0,
            "sex": "M",
            "view": "PA",
        }
    )
    for column, name in enumerate(OUTPUTS[:-1]):
        table[name] = labels[:, column]
    table[OUTPUTS[-1]] = labels.max(axis=1)
    table["split"] = splits
    return table


def scratch_folder(name: str, keep: bool = False) -> Path:
    """A fresh folder under the system temp dir (/tmp), removed first unless `keep`."""
    folder = Path(tempfile.gettempdir()) / f"chexvision-bench-{name}"
    if folder.exists() and not keep:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- the PIL + torchvision DataLoader recipe the cache path is compared with ----------------------
class PILTrainingDataset(torch.utils.data.Dataset):
    """The usual recipe: PIL open, convert L, RandomResizedCrop + ToTensor + Normalize per image."""

    def __init__(self, paths: Sequence[Path], size: int) -> None:
        from torchvision import transforms

        self.paths = list(paths)
        self.transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(size, scale=(0.75, 1.0), ratio=(0.9, 1.1)),
                transforms.ToTensor(),
                transforms.Normalize([0.5], [0.25]),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(self.paths[i]) as image:
            x = self.transform(image.convert("L"))
        return x, torch.zeros(len(OUTPUTS))


def pil_loader(paths: Sequence[Path], size: int, batch_size: int, workers: int, device):
    return torch.utils.data.DataLoader(
        PILTrainingDataset(paths, size),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
    )


# --- machine, timing, output --------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({cpu_model()}, {CORES} cores)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def describe_machine(device: torch.device) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"device: {device_name(device)} | torch {torch.__version__} | "
        f"{CORES} cores available, torch threads {torch.get_num_threads()} | "
        f"load average at start {load} (other processes share these cores)"
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_seconds() -> float:
    """CPU seconds used so far by this process (all threads) and its children, live or ended.

    DataLoader workers and prepare's pool are child processes that are still alive while they are
    timed, so they are summed with psutil; without psutil only ended children count.
    """
    try:
        import psutil
    except ImportError:
        own = resource.getrusage(resource.RUSAGE_SELF)
        ended = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + ended.ru_utime + ended.ru_stime
    process = psutil.Process()
    times = process.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in process.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.Error:  # ended between listing and reading
            continue
        total += child_times.user + child_times.system
    return total


def best_of(repeats: int, run: Callable[[], float]) -> tuple[float, list[float]]:
    """Run a timing `repeats` times; return the best (largest) rate and all of them.

    Other sessions may load the same cores, so the best of a few runs is the closest to what the
    code itself costs; all runs are reported beside it.
    """
    rates = [run() for _ in range(repeats)]
    return max(rates), rates


def format_table(rows: list[dict[str, object]]) -> str:
    """A Markdown table (the README pastes these)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    return "\n".join([line, rule, *body])


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


class Stopwatch:
    """Wall time and CPU time of a block (`with Stopwatch() as watch: ...; watch.seconds`)."""

    def __enter__(self) -> Stopwatch:
        self.cpu_start, self.start = cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self.start
        self.cpu = cpu_seconds() - self.cpu_start
