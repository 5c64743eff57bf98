"""The one-time image cache: decode every radiograph once into a uint8 (N, S, S) array on disk.

Decoding a 1024 px PNG costs a CPU core ~8-13 ms; doing it every epoch starves a GPU. `prepare`
does it once, in parallel, and training reads the array (memmap, or whole in device memory).

Layout of a cache folder:
    index.csv     the index table, one row per image; row i is images.u8[i]
    images.u8     raw uint8 array, shape (N, S, S), C order
    done.u8       one byte per image: 1 once its pixels are written and flushed
    failed.csv    images that could not be decoded (only when asked to skip bad images)
    cache.json    written LAST, atomically: size, count, settings, source. Its presence is what
                  makes the folder a complete cache; a killed prepare never leaves one.
A killed prepare resumes: images whose done byte is set are not decoded again.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from chexvision_lib.core.atomic_files import write_json_atomic
from chexvision_lib.core.machine import available_cores
from chexvision_lib.data.image_io import ImageDecodeError, load_grey
from chexvision_lib.data.splits import check_patient_disjoint

CACHE_FORMAT = 1
CHUNK = 32  # images per worker task: big enough to amortise IPC, small enough to resume finely


class IncompleteCacheError(FileNotFoundError):
    """A folder is not a complete cache (prepare was interrupted, or never ran)."""


@dataclass(frozen=True)
class CacheSettings:
    size: int
    clahe: bool = False
    skip_bad: bool = False

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ValueError(f"size must be at least 32 px, got {self.size}")


def _apply_clahe(grey: np.ndarray) -> np.ndarray:
    import cv2  # optional dependency, only needed when CLAHE is asked for

    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)


# --- worker side --------------------------------------------------------------------------------
_worker_state: dict[str, object] = {}


def _init_worker(images_path: str, shape: tuple[int, int, int], settings: CacheSettings) -> None:
    # Each worker maps the output array once and writes its images straight into it.
    _worker_state["images"] = np.memmap(images_path, dtype=np.uint8, mode="r+", shape=shape)
    _worker_state["settings"] = settings


def _decode_one(row: dict[str, object], size: int) -> np.ndarray:
    if row.get("parquet_row") is not None and not pd.isna(row.get("parquet_row")):
        from chexvision_lib.data.hub_parquet import read_parquet_image

        data = read_parquet_image(str(row["path"]), int(row["parquet_row"]))
        return load_grey(data, size, name=f"{row['path']}#row{int(row['parquet_row'])}")
    return load_grey(str(row["path"]), size)


def _decode_chunk(task: tuple[list[int], list[dict[str, object]]]) -> tuple[list[int], list[str]]:
    positions, rows = task
    images = _worker_state["images"]
    settings: CacheSettings = _worker_state["settings"]  # type: ignore[assignment]
    errors: list[str] = []
    for position, row in zip(positions, rows, strict=True):
        try:
            grey = _decode_one(row, settings.size)
        except ImageDecodeError as error:
            if not settings.skip_bad:
                raise
            errors.append(str(error))
            grey = np.zeros((settings.size, settings.size), np.uint8)
        else:
            errors.append("")
        if settings.clahe:
            grey = _apply_clahe(grey)
        images[position] = grey  # type: ignore[index]
    images.flush()  # type: ignore[union-attr]
    return positions, errors


# --- main side ----------------------------------------------------------------------------------
def prepare_cache(
    table: pd.DataFrame,
    out: str | Path,
    *,
    size: int,
    clahe: bool = False,
    skip_bad: bool = False,
    workers: int | None = None,
    source: dict[str, object] | None = None,
    progress: bool = True,
) -> Path:
    """Decode every image of `table` once into a cache folder (see the module docstring).

    Re-running on the same folder resumes an interrupted prepare; on a complete cache with the
    same settings it returns at once. Different settings on an existing folder are an error.
    """
    settings = CacheSettings(size=size, clahe=clahe, skip_bad=skip_bad)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(table)
    if n == 0:
        raise ValueError("the index table is empty: nothing to cache")
    check_patient_disjoint(table, "prepare")
    table = table.reset_index(drop=True)
    shape = (n, size, size)
    index_path, images_path, done_path = out / "index.csv", out / "images.u8", out / "done.u8"
    settings_path = out / "prepare.json"
    plan = {
        "format": CACHE_FORMAT,
        "settings": asdict(settings),
        "n": n,
        "images": table["image_id"].tolist(),
    }

    if (out / "cache.json").exists():
        info = json.loads((out / "cache.json").read_text())
        if info["settings"] == asdict(settings) and info["n"] == n:
            return out
        raise ValueError(
            f"{out} already holds a cache with other settings ({info['settings']}); "
            "choose another --out folder"
        )
    if settings_path.exists():
        previous = json.loads(settings_path.read_text())
        if previous != plan:
            raise ValueError(
                f"{out} holds an interrupted prepare of a different table or settings; "
                "delete the folder or choose another --out"
            )
    else:
        for stale in (images_path, done_path):
            stale.unlink(missing_ok=True)
        write_json_atomic(settings_path, plan)

    table.to_csv(index_path, index=False)
    if not images_path.exists():
        # Sparse file of the right size; workers fill it in place.
        with open(images_path, "wb") as handle:
            handle.truncate(n * size * size)
    if not done_path.exists():
        with open(done_path, "wb") as handle:
            handle.truncate(n)
    done = np.memmap(done_path, dtype=np.uint8, mode="r+", shape=(n,))
    todo = np.flatnonzero(done == 0)

    records = table.to_dict("records")
    tasks = [
        (chunk.tolist(), [records[i] for i in chunk])
        for chunk in np.array_split(todo, max(1, -(-len(todo) // CHUNK)))
        if len(chunk)
    ]
    failures: list[tuple[str, str]] = []
    failed_path = out / "failed.csv"
    if failed_path.exists():
        failures = list(pd.read_csv(failed_path).itertuples(index=False, name=None))
    workers = workers or min(available_cores(), 16)
    bar = tqdm(
        total=n, initial=n - len(todo), desc=f"prepare {size}px", unit="img", disable=not progress
    )
    # 'spawn' avoids forking a process that may already hold CUDA or OpenMP threads (notebooks).
    context = mp.get_context("spawn")
    with context.Pool(workers, _init_worker, (str(images_path), shape, settings)) as pool:
        for positions, errors in pool.imap_unordered(_decode_chunk, tasks):
            for position, error in zip(positions, errors, strict=True):
                if error:
                    failures.append((records[position]["image_id"], error))
            if failures:
                pd.DataFrame(failures, columns=["image_id", "error"]).to_csv(
                    failed_path, index=False
                )
            done[positions] = 1
            done.flush()
            bar.update(len(positions))
    bar.close()

    ok = ~table["image_id"].isin({image for image, _ in failures})
    table.assign(ok=ok).to_csv(index_path, index=False)
    write_json_atomic(
        out / "cache.json",
        {
            "format": CACHE_FORMAT,
            "settings": asdict(settings),
            "n": n,
            "n_failed": len(failures),
            "shape": list(shape),
            "source": source or {},
        },
    )
    return out


def open_cache(folder: str | Path) -> tuple[pd.DataFrame, np.memmap, dict[str, object]]:
    """Open a complete cache read-only: (index table, (N, S, S) uint8 memmap, cache.json)."""
    folder = Path(folder)
    info_path = folder / "cache.json"
    if not info_path.exists():
        state = "an interrupted prepare" if (folder / "prepare.json").exists() else "no cache"
        raise IncompleteCacheError(
            f"{folder} is not a complete cache ({state}); run `chexvision prepare` "
            "(it resumes an interrupted one)"
        )
    info = json.loads(info_path.read_text())
    table = pd.read_csv(folder / "index.csv", dtype={"patient": str, "image_id": str})
    images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=tuple(info["shape"]))
    if len(table) != images.shape[0]:
        raise IncompleteCacheError(
            f"{folder}: index.csv has {len(table)} rows, images.u8 holds {images.shape[0]}"
        )
    check_patient_disjoint(table, str(folder))
    return table, images, info
