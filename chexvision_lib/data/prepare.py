"""`prepare`: index any supported source, then decode it once into a cache (see cache.py)."""

from __future__ import annotations

from pathlib import Path

from chexvision_lib.data.binary_sets import build_binary_index
from chexvision_lib.data.cache import prepare_cache
from chexvision_lib.data.hub_parquet import build_hub_index
from chexvision_lib.data.nih_index import DATA_ENTRY_PATTERN, build_nih_index


def detect_kind(root: Path) -> str:
    """nih (a Data_Entry CSV below), hub (parquet shards), else binary (class folders / CSV)."""
    if root.is_file():
        return "binary"
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist")
    for path in root.rglob("*"):
        if DATA_ENTRY_PATTERN.match(path.name):
            return "nih"
        if path.suffix == ".parquet":
            return "hub"
    return "binary"


def prepare(
    root: str | Path,
    out: str | Path,
    *,
    size: int = 256,
    kind: str = "auto",
    metadata_root: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    views: tuple[str, ...] | None = None,
    skip_bad: bool = False,
    clahe: bool = False,
    workers: int | None = None,
    progress: bool = True,
    ignore_disk_budget: bool = False,
) -> Path:
    """Index `root` (kind auto-detected or given) and decode it once into the cache folder `out`.

    Before writing, the disk holding `out` must have room for the cache (N x size x size bytes
    plus the index); prepare refuses with the numbers otherwise, unless `ignore_disk_budget`.
    """
    root = Path(root)
    kind = detect_kind(root) if kind == "auto" else kind
    options = {"val_fraction": val_fraction, "seed": seed, "views": views, "skip_bad": skip_bad}
    if kind == "nih":
        index = build_nih_index(root, **options)
        table, source = index.table, index.source
    elif kind == "hub":
        if metadata_root is None:
            raise ValueError(
                "--metadata-root is required for the parquet (hub) source: the "
                "folder with Data_Entry_2017*.csv, train_val_list.txt, test_list.txt"
            )
        index = build_hub_index(root, metadata_root, **options)
        table, source = index.table, index.source
    elif kind == "binary":
        test = 0.3
        table, source = build_binary_index(
            root,
            seed=seed,
            fractions={
                "train": (1 - test) * (1 - val_fraction),
                "val": (1 - test) * val_fraction,
                "test": test,
            },
        )
    else:
        raise ValueError(f"kind: {kind!r} is not one of auto, nih, hub, binary")
    return prepare_cache(
        table,
        out,
        size=size,
        clahe=clahe,
        skip_bad=skip_bad,
        workers=workers,
        source=source,
        progress=progress,
        ignore_disk_budget=ignore_disk_budget,
    )
