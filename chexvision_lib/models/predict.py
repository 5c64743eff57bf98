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

`tta` (models/tta.py) scores each image as several views (its mirror, five crops) and averages
their logits before the temperatures; "none", the default, is the plain prediction. Rows record
the view set in their `tta` column: the stored thresholds were chosen without TTA.

An unreadable file never costs the others their scores: `score_files` yields one `ScoredBatch` per
batch as it finishes, where a file `load_grey` refuses is a row with NaN probabilities, `abnormal`
empty (pandas NA) and the reason in `error` ("" for scored rows). `predict_images` collects them
and raises an ImageDecodeError naming every unreadable file unless `skip_bad=True`.
"""

from __future__ import annotations

import copy
import numbers
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from chexvision_lib.core.disclaimer import DISCLAIMER
from chexvision_lib.core.labels import ABNORMAL, NUM_FINDINGS, OUTPUTS
from chexvision_lib.core.predictions import prob_column
from chexvision_lib.data.batches import BatchLoader, normalise, to_device
from chexvision_lib.data.image_io import ImageDecodeError, load_grey
from chexvision_lib.models.registry import ChestClassifier
from chexvision_lib.models.tta import check_tta, merged_logits
from chexvision_lib.runtime import distributed
from chexvision_lib.runtime.devices import autocast_dtype

__all__ = [
    "predict_images",
    "predict_arrays",
    "score_files",
    "ScoredBatch",
    "prediction_columns",
    "failure_summary",
    "DISCLAIMER",
]

# How many batches are decoded ahead of the one the model is scoring.
DECODE_AHEAD = 2


def _load_or_error(path: str | Path, size: int) -> np.ndarray | ImageDecodeError:
    try:
        return load_grey(path, size)
    except ImageDecodeError as error:
        return error


def _decoded_batches(
    paths: Sequence[str | Path], size: int, batch_size: int, workers: int
) -> Iterator[list[np.ndarray | ImageDecodeError]]:
    """Per batch, in order: each file's uint8 (size, size) pixels or the ImageDecodeError that
    refused it; `DECODE_AHEAD` batches decoded ahead. Stopping early (an interrupt, the consumer
    closing the generator) cancels the batches not yet started."""
    starts = iter(range(0, len(paths), batch_size))
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    pending: deque[list[Future]] = deque()

    def submit_next() -> None:
        start = next(starts, None)
        if start is not None:
            chunk = paths[start : start + batch_size]
            pending.append([pool.submit(_load_or_error, p, size) for p in chunk])

    try:
        for _ in range(DECODE_AHEAD + 1):
            submit_next()
        while pending:
            futures = pending.popleft()
            submit_next()
            yield [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Scorer:
    """The model prepared once for scoring: eval, channels_last, and for bf16 on the CPU a
    bfloat16 copy of the weights (autocast would re-cast every weight at every batch)."""

    def __init__(self, model: ChestClassifier, amp: str, tta: str = "none") -> None:
        self.tta = check_tta(tta)
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
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                probs = self.model.probabilities(merged_logits(self._forward, x, self.tta))
        out = np.full((len(pixels), len(OUTPUTS)), np.nan)
        out[:, -probs.shape[1] :] = probs.cpu().numpy()
        return out

    def _forward(self, view: torch.Tensor) -> torch.Tensor:
        # Views are made from the float32 batch, then cast: a crop is resized at the precision
        # `normalise` resized the image at.
        return self.model(view.to(self.input_dtype).contiguous(memory_format=torch.channels_last))


def predict_arrays(
    model: ChestClassifier, pixels: np.ndarray, amp: str = "off", tta: str = "none"
) -> np.ndarray:
    """uint8 (B, S, S) already at the model's size -> probabilities (B, 15), NaN findings for a
    binary head; `tta` a view set of models/tta.py."""
    return _Scorer(model, amp, tta)(pixels)


def prediction_columns() -> list[str]:
    """The columns of `predict_images` / `chexvision predict`, in order."""
    columns = [*(prob_column(n) for n in OUTPUTS), "abnormal_threshold", "abnormal", "tta"]
    return ["image", *columns, "error"]


@dataclass
class ScoredBatch:
    """One batch of `score_files`: its rows (`prediction_columns()`), and the errors of the files
    that could not be read (also in the rows' `error` column)."""

    frame: pd.DataFrame
    failures: list[ImageDecodeError] = field(default_factory=list)


def _check_whole_number(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def score_files(
    model: ChestClassifier,
    paths: Sequence[str | Path],
    *,
    batch_size: int = 32,
    workers: int = 2,
    amp: str = "off",
    tta: str = "none",
) -> Iterator[ScoredBatch]:
    """Score image files a batch at a time, yielding each batch as soon as the model is done
    with it (so a caller can write rows as they come). Files that cannot be read are rows with
    NaN probabilities, `abnormal` NA and the ImageDecodeError's message in `error`. `tta`: a
    view set of models/tta.py, recorded in every row. Bad arguments raise here, before anything
    is decoded."""
    _check_whole_number(batch_size, "batch_size")
    _check_whole_number(workers, "workers")
    return _score_batches(_Scorer(model, amp, tta), model, list(paths), batch_size, workers)


def _score_batches(
    scorer: _Scorer, model: ChestClassifier, paths: list, batch_size: int, workers: int
) -> Iterator[ScoredBatch]:
    size = model.preprocessing["image_size"]
    threshold = model.thresholds[-1] if model.thresholds else None
    start = 0
    for decoded in _decoded_batches(paths, size, batch_size, workers):
        readable = [k for k, item in enumerate(decoded) if isinstance(item, np.ndarray)]
        probs = np.full((len(decoded), len(OUTPUTS)), np.nan)
        if readable:
            probs[readable] = scorer(np.stack([decoded[k] for k in readable]))
        errors = ["" if isinstance(item, np.ndarray) else str(item) for item in decoded]
        images = paths[start : start + len(decoded)]
        start += len(decoded)
        yield ScoredBatch(
            _rows(images, probs, errors, threshold, scorer.tta),
            [item for item in decoded if isinstance(item, ImageDecodeError)],
        )


def _rows(
    images: Sequence[str | Path],
    probs: np.ndarray,
    errors: list[str],
    threshold: float | None,
    tta: str,
) -> pd.DataFrame:
    frame = pd.DataFrame(probs, columns=[prob_column(n) for n in OUTPUTS])
    frame.insert(0, "image", [str(p) for p in images])
    frame["abnormal_threshold"] = threshold
    cut = 0.5 if threshold is None else threshold
    abnormal = probs[:, OUTPUTS.index(ABNORMAL)] >= cut
    frame["abnormal"] = pd.array(
        [pd.NA if error else bool(flag) for flag, error in zip(abnormal, errors, strict=True)],
        dtype="boolean",
    )
    frame["tta"] = tta
    frame["error"] = errors
    return frame


def failure_summary(failures: Sequence[ImageDecodeError]) -> str:
    """How many unreadable files of each kind, most common first: "2 truncated, 1 empty"."""
    counts = Counter(getattr(error, "kind", "corrupt") for error in failures)
    return ", ".join(f"{n} {kind}" for kind, n in counts.most_common())


def predict_images(
    model: ChestClassifier,
    paths: Sequence[str | Path],
    *,
    batch_size: int = 32,
    workers: int = 2,
    amp: str = "off",
    tta: str = "none",
    skip_bad: bool = False,
) -> pd.DataFrame:
    """One row per image: path, 15 probabilities, abnormal yes/no at the stored threshold, the
    test-time augmentation `tta` (models/tta.py; "none": plain), and `error` ("" when scored).

    Every file is tried. Unreadable ones raise an ImageDecodeError naming all of them, or with
    `skip_bad` stay as rows with NaN probabilities, `abnormal` NA and the reason in `error`.
    """
    paths = list(paths)
    batches = list(
        score_files(model, paths, batch_size=batch_size, workers=workers, amp=amp, tta=tta)
    )
    failures = [error for batch in batches for error in batch.failures]
    if failures and not skip_bad:
        kinds = {error.kind for error in failures}
        raise ImageDecodeError(
            f"{len(failures)} of {len(paths)} files could not be read "
            f"({failure_summary(failures)}): " + "; ".join(str(error) for error in failures),
            kind=kinds.pop() if len(kinds) == 1 else "corrupt",
        )
    if not batches:
        threshold = model.thresholds[-1] if model.thresholds else None
        return _rows([], np.zeros((0, len(OUTPUTS))), [], threshold, tta)
    return pd.concat([batch.frame for batch in batches], ignore_index=True)


@torch.no_grad()
def predict_loader(
    model: torch.nn.Module,
    loader: BatchLoader,
    spec: dict,
    amp_dtype: torch.dtype | None,
    channels_last: bool = True,
    desc: str = "predict",
    show_progress: bool = True,
    tta: str = "none",
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid probabilities (n, 15) in split order; NaN findings for a binary head. `tta`: a
    view set of models/tta.py, whose views' logits are averaged before the temperatures.

    Under DDP each rank predicts its share and the shares are gathered; padding duplicates are
    dropped by position, so every image is counted exactly once.
    """
    check_tta(tta)
    model.eval()
    device = loader.device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    # A ChestClassifier applies its fitted temperatures; any other module, a plain sigmoid.
    to_probabilities = model.probabilities if isinstance(model, ChestClassifier) else torch.sigmoid
    probs, positions = [], []
    for pixels, _, index in tqdm(loader, desc=desc, leave=False, disable=not show_progress):
        x = normalise(pixels, spec["mean"][0], spec["std"][0], spec["image_size"])
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = merged_logits(
                lambda view: model(view.contiguous(memory_format=memory_format)), x, tta
            )
        probs.append(to_probabilities(logits.float()))
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
