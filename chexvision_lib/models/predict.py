"""Score radiograph files with a model folder: any PNG/JPEG, any size or mode.

The pixels are those of `image_io.load_grey`, the definition the cache uses, so with amp="off"
a file scores exactly as its cached copy does in `evaluate`. Three things make it fast:
- `load_grey` decodes 8-bit greyscale PNGs with OpenCV when it is installed (same pixels as PIL,
  ~12% faster per core; benchmarks/bench_decode.py).
- Decoding runs in a thread pool (OpenCV and PIL release the GIL), a batch ahead of the model, so
  on a GPU the model never waits for the CPU, and on a CPU decode fills the model's idle gaps.
- The model runs under inference_mode in channels_last. amp="bf16" scores with a bfloat16 copy of
  the weights on a CPU (autocast elsewhere): the model alone ~1.5-2x fp32 on an AVX512-BF16 CPU,
  probabilities moved by up to ~3e-3 (benchmarks/README.md); amp="off" (the default) is fp32 and
  exact.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.core.labels import ABNORMAL, NUM_FINDINGS, OUTPUTS
from chexvision_lib.core.predictions import prob_column
from chexvision_lib.data.batches import BatchLoader, normalise, to_device
from chexvision_lib.data.image_io import load_grey
from chexvision_lib.models.registry import ChestClassifier
from chexvision_lib.runtime import distributed
from chexvision_lib.runtime.devices import autocast_dtype

__all__ = ["predict_images", "predict_arrays", "DISCLAIMER"]

# How many batches are decoded ahead of the one the model is scoring.
DECODE_AHEAD = 2


def _decoded_batches(
    paths: Sequence[str | Path], size: int, batch_size: int, workers: int
) -> Iterator[np.ndarray]:
    """uint8 (B, size, size) batches in order, `DECODE_AHEAD` batches decoded ahead."""
    starts = iter(range(0, len(paths), batch_size))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: deque[list[Future]] = deque()

        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                chunk = paths[start : start + batch_size]
                pending.append([pool.submit(load_grey, p, size) for p in chunk])

        for _ in range(DECODE_AHEAD + 1):
            submit_next()
        while pending:
            futures = pending.popleft()
            submit_next()
            yield np.stack([future.result() for future in futures])


class _Scorer:
    """The model prepared once for scoring: eval, channels_last, and for bf16 on the CPU a
    bfloat16 copy of the weights (autocast would re-cast every weight at every batch)."""

    def __init__(self, model: ChestClassifier, amp: str) -> None:
        model.eval()
        self.device = next(model.parameters()).device
        self.spec = model.preprocessing
        self.dtype = autocast_dtype(amp, self.device)
        self.input_dtype = torch.float32
        if self.dtype == torch.bfloat16 and self.device.type == "cpu":
            model = copy.deepcopy(model).to(torch.bfloat16)
            self.input_dtype, self.dtype = torch.bfloat16, None
        self.model = model.to(memory_format=torch.channels_last)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        spec = self.spec
        with torch.inference_mode():
            x = normalise(
                torch.from_numpy(pixels).unsqueeze(1).to(self.device),
                spec["mean"][0],
                spec["std"][0],
                spec["image_size"],
            )
            x = x.to(self.input_dtype).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                probs = torch.sigmoid(self.model(x).float())
        out = np.full((len(pixels), len(OUTPUTS)), np.nan)
        out[:, -probs.shape[1] :] = probs.cpu().numpy()
        return out


def predict_arrays(model: ChestClassifier, pixels: np.ndarray, amp: str = "off") -> np.ndarray:
    """uint8 (B, S, S) already at the model's size -> probabilities (B, 15), NaN findings for a
    binary head."""
    return _Scorer(model, amp)(pixels)


def predict_images(
    model: ChestClassifier,
    paths: Sequence[str | Path],
    *,
    batch_size: int = 32,
    workers: int = 2,
    amp: str = "off",
) -> pd.DataFrame:
    """One row per image: path, 15 probabilities, and abnormal yes/no at the stored threshold."""
    scorer = _Scorer(model, amp)
    size = model.preprocessing["image_size"]
    paths = list(paths)
    rows = [scorer(batch) for batch in _decoded_batches(paths, size, batch_size, workers)]
    probs = np.concatenate(rows) if rows else np.zeros((0, len(OUTPUTS)))
    frame = pd.DataFrame(probs, columns=[prob_column(n) for n in OUTPUTS])
    frame.insert(0, "image", [str(p) for p in paths])
    threshold = model.thresholds[-1] if model.thresholds else None
    frame["abnormal_threshold"] = threshold
    frame["abnormal"] = frame[prob_column(ABNORMAL)] >= (0.5 if threshold is None else threshold)
    return frame


@torch.no_grad()
def predict_loader(
    model: torch.nn.Module,
    loader: BatchLoader,
    spec: dict,
    amp_dtype: torch.dtype | None,
    channels_last: bool = True,
    desc: str = "predict",
    show_progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid probabilities (n, 15) in split order; NaN findings for a binary head.

    Under DDP each rank predicts its share and the shares are gathered; padding duplicates are
    dropped by position, so every image is counted exactly once.
    """
    model.eval()
    device = loader.device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    probs, positions = [], []
    for pixels, _, index in tqdm(loader, desc=desc, leave=False, disable=not show_progress):
        x = normalise(pixels, spec["mean"][0], spec["std"][0], spec["image_size"])
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x.contiguous(memory_format=memory_format))
        probs.append(torch.sigmoid(logits.float()))
        positions.append(to_device(index, device))
    p = torch.cat(probs) if probs else torch.zeros(0, 1, device=device)
    pos = torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long, device=device)
    if loader.world_size > 1:  # every rank must get here: gather is a collective
        p, pos = distributed.gather(p), distributed.gather(pos)
    n = len(loader.data)
    out = np.full((n, NUM_FINDINGS + 1), np.nan, dtype=np.float64)
    pos_np, p_np = pos.cpu().numpy(), p.cpu().numpy().astype(np.float64)
    if p_np.shape[1] == 1:
        out[pos_np, -1] = p_np[:, 0]
    else:
        out[pos_np] = p_np
    return out, loader.data.labels.astype(np.float64)
