"""The Hub's pre-resized NIH variant the original CheXVision trained on, as a second pixel source.

`HlexNC/chest-xray-14-320` stores the images as parquet shards with columns `image` (PNG bytes, or
the `datasets` Image struct {bytes, path}), `labels` and `filename`. Its own label column is not
used: images are joined by file name to the NIH metadata CSV, so patient ids, the official
patient-wise split and the canonical label parsing apply exactly as for the original files.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from chexvision_lib.data.nih_index import NIHIndex, build_nih_index
from chexvision_lib.data.synthetic import MARKER_NAME

HUB_REPO_ID = "HlexNC/chest-xray-14-320"
REQUIRED_PARQUET_COLUMNS = ("image", "filename")


def download_hub_variant(local_dir: str | Path, revision: str, repo_id: str = HUB_REPO_ID) -> Path:
    """Fetch the parquet shards at a pinned `revision` (a commit hash) into `local_dir`.

    The revision is required: an unpinned "main" would let the data change under a published
    result. Needs network (Kaggle with internet on, or a workstation).
    """
    from huggingface_hub import snapshot_download

    if not revision or revision == "main":
        raise ValueError("revision: pass the dataset commit hash to pin the data, not 'main'")
    return Path(
        snapshot_download(
            repo_id,
            repo_type="dataset",
            revision=revision,
            allow_patterns=["*.parquet"],
            local_dir=str(local_dir),
        )
    )


def parquet_image_refs(parquet_dir: str | Path) -> pd.DataFrame:
    """One row per image in the shards below `parquet_dir`: image_id, path (shard), parquet_row."""
    shards = sorted(Path(parquet_dir).rglob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no .parquet shards found below {parquet_dir}")
    frames = []
    for shard in shards:
        schema_names = pq.ParquetFile(shard).schema_arrow.names
        missing = [c for c in REQUIRED_PARQUET_COLUMNS if c not in schema_names]
        if missing:
            raise ValueError(f"{shard}: missing column(s) {missing}; found {schema_names}")
        names = pq.read_table(shard, columns=["filename"]).column("filename").to_pylist()
        frames.append(
            pd.DataFrame(
                {
                    "image_id": [Path(str(name)).name for name in names],
                    "path": str(shard),
                    "parquet_row": np.arange(len(names), dtype=np.int64),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def build_hub_index(
    parquet_dir: str | Path, metadata_root: str | Path, **split_options: object
) -> NIHIndex:
    """Index the parquet variant, taking labels, patients and splits from `metadata_root`.

    `metadata_root` holds the NIH Data_Entry CSV and split lists (the Kaggle mount, or a folder
    with just those three files); `split_options` are those of `build_nih_index`.
    """
    parquet_dir = Path(parquet_dir).resolve()
    index = build_nih_index(metadata_root, images=parquet_image_refs(parquet_dir), **split_options)
    # The pixels are synthetic too when the shards sit in (or below) a synthetic set's folder.
    synthetic = bool(index.source["synthetic"]) or any(parquet_dir.rglob(MARKER_NAME))
    index.source.update(
        {
            "kind": "hub_parquet",
            "parquet_dir": str(parquet_dir),
            "hub_repo_id": HUB_REPO_ID,
            "synthetic": synthetic,
        }
    )
    return index


@lru_cache(maxsize=4)
def _row_group_offsets(path: str) -> np.ndarray:
    metadata = pq.ParquetFile(path).metadata
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    return np.concatenate([[0], np.cumsum(sizes)])


@lru_cache(maxsize=2)
def _row_group_images(path: str, group: int) -> list[object]:
    # Workers read images in contiguous chunks, so caching the last row group avoids re-reading it.
    return pq.ParquetFile(path).read_row_group(group, columns=["image"]).column("image").to_pylist()


def read_parquet_image(path: str, row: int) -> bytes:
    """The encoded image bytes of row `row` of shard `path`."""
    offsets = _row_group_offsets(path)
    group = int(np.searchsorted(offsets, row, side="right") - 1)
    value = _row_group_images(path, group)[row - offsets[group]]
    if isinstance(value, dict):  # the `datasets` Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes")
    if not isinstance(value, bytes | bytearray):
        raise ValueError(f"{path}, row {row}: the image column holds no bytes")
    return bytes(value)
