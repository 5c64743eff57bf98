"""Batches from the uint8 cache, straight to the training device, augmented there.

The usual recipe (PIL decode + torchvision transforms in DataLoader workers, every epoch) is CPU
bound. Here the pixels were decoded once (`cache.py`); a batch is one fancy-index read of the memmap
(or a gather from the whole array held in device memory), a pinned-memory, non-blocking copy, and
batched tensor ops on the device. A background thread reads batch i+1 while the device computes on
batch i.

All randomness (shuffling, augmentation) is drawn from generators seeded by (seed, epoch), on the
CPU, so a run resumed at an epoch boundary sees exactly the batches an uninterrupted run would, on
any device.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from chexvision_lib.core.labels import OUTPUTS
from chexvision_lib.core.predictions import METADATA_COLUMNS
from chexvision_lib.data.cache import open_cache
from chexvision_lib.data.splits import cross_validation_splits


@dataclass(frozen=True)
class Augment:
    """Batched, on-device augmentation. Flip is off by default: it moves the heart to the wrong
    side, which is not a plausible radiograph (and Cardiomegaly/Hernia depend on the side)."""

    scale: tuple[float, float] = (0.75, 1.0)  # random-resized-crop area fraction
    ratio: tuple[float, float] = (0.9, 1.1)  # crop aspect ratio
    degrees: float = 7.0  # rotation, uniform in [-degrees, degrees]
    brightness: float = 0.1  # additive, in units of the [0, 1] intensity range
    contrast: float = 0.1  # multiplicative around the image mean, 1 +- contrast
    hflip: bool = False


class CachedSplit:
    """The images and 15 labels of one split of a prepared cache (rows that decoded)."""

    def __init__(
        self, cache_dir: str | Path, split: str, *, folds: int = 0, fold: int = 0, seed: int = 0
    ) -> None:
        table, images, info = open_cache(cache_dir)
        if "ok" in table.columns:
            table = table[table["ok"].astype(bool)]
        if folds:
            table = table.assign(split=cross_validation_splits(table, folds, fold, seed))
        table = table[table["split"] == split]
        if table.empty:
            raise ValueError(f"{cache_dir}: the cache has no images in split {split!r}")
        self.cache_dir = Path(cache_dir)
        self.split = split
        self.rows = table.index.to_numpy()
        self.table = table.reset_index(drop=True)
        self.images = images
        self.info = info
        self.labels = self.table.loc[:, list(OUTPUTS)].to_numpy(dtype=np.float32)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, positions: np.ndarray) -> np.ndarray:
        """uint8 (B, S, S) pixels of split positions, read in disk order for the memmap's sake."""
        out = np.empty((len(positions), self.size, self.size), dtype=np.uint8)
        return self.read_into(positions, out)

    def read_into(self, positions: np.ndarray, out: np.ndarray) -> np.ndarray:
        """`read`, into `out` (B, S, S) uint8: rows in disk order go there without a temporary."""
        rows = self.rows[positions]
        order = np.argsort(rows, kind="stable")
        if np.array_equal(order, np.arange(len(rows))):
            # mode="clip" (the rows are in range): numpy buffers `out` in full under "raise".
            np.take(self.images, rows, axis=0, out=out, mode="clip")
        else:
            out[order] = self.images[rows[order]]
        return out

    def metadata(self) -> pd.DataFrame:
        return self.table.loc[:, list(METADATA_COLUMNS)]


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to `device` without making the host wait for the device.

    A plain `.to("cuda")` from pageable memory synchronises the stream, so the CPU stops queueing
    work until the GPU has drained it; from pinned memory the copy is asynchronous.
    """
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


# Rows copied per step when the split is put in device memory: the only host memory that copy
# needs beyond the cache's own (file-backed, shared) pages.
RESIDENT_CHUNK_BYTES = 64 * 2**20


def copy_to_device(
    data: CachedSplit, device: torch.device, *, staged: bool | None = None
) -> torch.Tensor:
    """The split's images as one uint8 (N, S, S) tensor on `device`, row i = split position i.

    Filled RESIDENT_CHUNK_BYTES of rows at a time, so the host never holds a second copy of the
    split: on the CPU each chunk is read straight into the result; elsewhere (`staged`, the
    default off the CPU) through one reused staging buffer, pinned for CUDA so that each copy
    is a DMA with no further host bounce.
    """
    n, size = len(data), data.size
    resident = torch.empty((n, size, size), dtype=torch.uint8, device=device)
    rows_per_chunk = max(1, RESIDENT_CHUNK_BYTES // (size * size))
    staging = None
    if staged is None:
        staged = device.type != "cpu"
    if staged:
        shape = (min(n, rows_per_chunk), size, size)
        staging = torch.empty(shape, dtype=torch.uint8, pin_memory=device.type == "cuda")
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        target = resident[start:stop] if staging is None else staging[: stop - start]
        data.read_into(np.arange(start, stop), target.numpy())
        if staging is not None:  # a synchronous copy: the staging buffer is refilled next
            resident[start:stop].copy_(target)
    return resident


class BatchLoader:
    """Iterate (uint8 images (B, 1, S, S), float labels (B, 15), split positions (B,)) on `device`.

    With `world_size` > 1 each rank gets an interleaved 1/world_size of the (padded) order, like
    DistributedSampler; positions let evaluation drop the padding duplicates after gathering.
    """

    def __init__(
        self,
        data: CachedSplit,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        on_device: bool = False,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 2,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.data, self.batch_size, self.device = data, batch_size, device
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size, self.prefetch = rank, world_size, prefetch
        self.epoch = 0
        self.labels = torch.from_numpy(data.labels)
        # Holding the whole split on the device removes disk and host copies entirely
        # (112,120 images at 256 px are 7.3 GB: fine on a 16 GB T4 with a small model).
        self.resident = copy_to_device(data, device) if on_device else None
        self.resident_labels = self.labels.to(device) if on_device else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> np.ndarray:
        """This rank's positions for the epoch, before batching.

        Training (drop_last) keeps the first multiple of world_size x batch_size of the shuffled
        order, so N ranks take exactly the optimiser steps and images of one process with an
        N-times larger batch. Evaluation pads by repeating the first positions (like
        DistributedSampler) so every rank has the same number of batches; the duplicates are
        dropped after gathering.
        """
        n = len(self.data)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=generator).numpy()
        else:
            order = np.arange(n)
        if self.drop_last:
            step = self.world_size * self.batch_size
            return order[: n // step * step][self.rank :: self.world_size]
        per_rank = math.ceil(n / self.world_size)
        padded = np.concatenate([order, order[: per_rank * self.world_size - n]])
        return padded[self.rank :: self.world_size]

    def __len__(self) -> int:
        n = len(self.data)
        if self.drop_last:
            return n // (self.world_size * self.batch_size)
        return math.ceil(math.ceil(n / self.world_size) / self.batch_size)

    def _batches(self) -> Iterator[np.ndarray]:
        order = self._order()
        for start in range(0, len(order), self.batch_size):
            positions = order[start : start + self.batch_size]
            if self.drop_last and len(positions) < self.batch_size:
                return
            yield positions

    def _host_batch(self, positions: np.ndarray) -> tuple[torch.Tensor, ...]:
        pixels = torch.from_numpy(self.data.read(positions)).unsqueeze(1)
        labels = self.labels[positions]
        index = torch.from_numpy(positions)
        if self.device.type == "cuda":
            pixels, labels = pixels.pin_memory(), labels.pin_memory()
        return pixels, labels, index

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self.resident is not None:
            for positions in self._batches():
                index = torch.from_numpy(positions)
                device_index = to_device(index, self.device)
                yield (
                    self.resident[device_index].unsqueeze(1),
                    self.resident_labels[device_index],
                    index,
                )
            return
        # A reader thread keeps `prefetch` host batches ready; numpy memmap reads release the GIL.
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def read_ahead() -> None:
            try:
                for positions in self._batches():
                    if stop.is_set():
                        return
                    ready.put(self._host_batch(positions))
            except BaseException as error:  # surface reader errors in the consuming thread
                ready.put(error)
            ready.put(None)

        reader = threading.Thread(target=read_ahead, daemon=True)
        reader.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                pixels, labels, index = item
                yield (
                    pixels.to(self.device, non_blocking=True),
                    labels.to(self.device, non_blocking=True),
                    index,
                )
        finally:
            stop.set()
            while reader.is_alive():  # drain so the reader can finish its put()
                try:
                    ready.get_nowait()
                except queue.Empty:
                    reader.join(timeout=0.01)


def normalise(
    pixels: torch.Tensor, mean: float, std: float, size: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """uint8 (B, 1, S, S) -> normalised float (B, 1, size, size); resizes when S != size."""
    x = pixels.to(dtype).div_(255.0)
    if x.shape[-1] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return x.sub_(mean).div_(std)


def augment(
    pixels: torch.Tensor, size: int, settings: Augment, generator: torch.Generator
) -> torch.Tensor:
    """Random resized crop + rotation (one affine warp), flip, brightness/contrast, on the device.

    Input uint8 (B, 1, S, S); output float in [0, 1] of (B, 1, size, size). Parameters are drawn on
    the CPU from `generator` so results do not depend on the device.
    """
    batch, device = pixels.shape[0], pixels.device
    u = torch.rand(batch, 6, generator=generator)
    area = settings.scale[0] + (settings.scale[1] - settings.scale[0]) * u[:, 0]
    low, high = math.log(settings.ratio[0]), math.log(settings.ratio[1])
    ratio = torch.exp(low + (high - low) * u[:, 1])
    half_w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop half-size in [-1, 1] units
    half_h = torch.sqrt(area / ratio).clamp(max=1.0)
    centre_x = (1 - half_w) * (2 * u[:, 2] - 1)
    centre_y = (1 - half_h) * (2 * u[:, 3] - 1)
    angle = torch.deg2rad(settings.degrees * (2 * u[:, 4] - 1))
    flip = torch.where((u[:, 5] < 0.5) & settings.hflip, torch.tensor(-1.0), torch.tensor(1.0))
    cos, sin = torch.cos(angle), torch.sin(angle)
    jitter = torch.rand(batch, 2, generator=generator)
    contrast = 1 + settings.contrast * (2 * jitter[:, 0] - 1)
    brightness = settings.brightness * (2 * jitter[:, 1] - 1)
    # Every per-image number goes to the device in one asynchronous copy: no host sync per step.
    coefficients = to_device(
        torch.stack(
            [
                half_w * cos * flip,
                -half_h * sin,
                centre_x,
                half_w * sin * flip,
                half_h * cos,
                centre_y,
                contrast,
                brightness,
            ],
            dim=1,
        ),
        device,
    )
    # The sampling grid by broadcasting: F.affine_grid's batched matmul is ~half the cost on a CPU.
    a = [coefficients[:, k].view(batch, 1, 1) for k in range(6)]
    base = (torch.arange(size, device=device, dtype=torch.float32) * 2 + 1) / size - 1
    xs, ys = base.view(1, 1, size), base.view(1, size, 1)
    grid = torch.stack([a[0] * xs + (a[1] * ys + a[2]), a[3] * xs + (a[4] * ys + a[5])], dim=-1)
    x = F.grid_sample(
        pixels.float().div_(255.0), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    contrast = coefficients[:, 6].view(-1, 1, 1, 1)
    brightness = coefficients[:, 7].view(-1, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    # (x - mean) * c + mean + b == x * c + (mean * (1 - c) + b), in one in-place pass
    return x.mul_(contrast).add_(mean * (1 - contrast) + brightness).clamp_(0.0, 1.0)
