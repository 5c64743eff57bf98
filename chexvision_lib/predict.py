"""Score radiograph files with a model folder: any PNG/JPEG, any size or mode.

Images are decoded with the same `image_io.load_grey` as the cache, resized straight to the model's
input size, and scored in batches. Decoding runs in a thread pool (PIL releases the GIL while it
decodes), so on a 2-core machine decode and model overlap.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from chexvision_lib.batches import normalise
from chexvision_lib.evaluate import DISCLAIMER, prob_column
from chexvision_lib.image_io import load_grey
from chexvision_lib.labels import ABNORMAL, OUTPUTS
from chexvision_lib.models import ChestClassifier
from chexvision_lib.train import autocast_dtype

__all__ = ["predict_images", "predict_arrays", "DISCLAIMER"]


def _decoded_batches(
    paths: Sequence[str | Path], size: int, batch_size: int, workers: int
) -> Iterator[np.ndarray]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            yield np.stack(list(pool.map(lambda p: load_grey(p, size), chunk)))


@torch.no_grad()
def predict_arrays(model: ChestClassifier, pixels: np.ndarray, amp: str = "off") -> np.ndarray:
    """uint8 (B, S, S) already at the model's size -> probabilities (B, 15), NaN findings for a
    binary head."""
    device = next(model.parameters()).device
    spec = model.preprocessing
    x = normalise(
        torch.from_numpy(pixels).unsqueeze(1).to(device),
        spec["mean"][0],
        spec["std"][0],
        spec["image_size"],
    )
    dtype = autocast_dtype(amp, device)
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        probs = torch.sigmoid(model(x.contiguous(memory_format=torch.channels_last)).float())
    out = np.full((len(pixels), len(OUTPUTS)), np.nan)
    out[:, -probs.shape[1] :] = probs.cpu().numpy()
    return out


def predict_images(
    model: ChestClassifier,
    paths: Sequence[str | Path],
    *,
    batch_size: int = 32,
    workers: int = 2,
    amp: str = "off",
) -> pd.DataFrame:
    """One row per image: path, 15 probabilities, and abnormal yes/no at the stored threshold."""
    model.eval()
    model.to(memory_format=torch.channels_last)
    size = model.preprocessing["image_size"]
    rows = [
        predict_arrays(model, batch, amp)
        for batch in _decoded_batches(list(paths), size, batch_size, workers)
    ]
    probs = np.concatenate(rows) if rows else np.zeros((0, len(OUTPUTS)))
    frame = pd.DataFrame(probs, columns=[prob_column(n) for n in OUTPUTS])
    frame.insert(0, "image", [str(p) for p in paths])
    threshold = model.thresholds[-1] if model.thresholds else None
    frame["abnormal_threshold"] = threshold
    frame["abnormal"] = frame[prob_column(ABNORMAL)] >= (0.5 if threshold is None else threshold)
    return frame
