"""`prepare`: index any supported source, then decode it once into a cache (see cache.py).

Sources (`kind`): NIH ChestX-ray14 (`nih`; its Hub parquet variant `hub`), the public datasets
of data/sources/ in their published layouts, and binary normal/abnormal sets (`binary`: a folder
per class or a path,label CSV). `auto` detects the kind from the file names below the root.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

from chexvision_lib.data.binary_sets import build_binary_index
from chexvision_lib.data.cache import prepare_cache
from chexvision_lib.data.hub_parquet import build_hub_index
from chexvision_lib.data.nih_index import DATA_ENTRY_PATTERN, build_nih_index
from chexvision_lib.data.sources.common import resolve_options

# Readers of data/sources/, by kind; each has KIND, OPTIONS, is_marker(path) and build_index(...).
SOURCE_KINDS = ("chexpert", "mimic", "padchest", "rsna", "indiana", "vindr")
KINDS = ("auto", "nih", "hub", *SOURCE_KINDS, "binary")


def source_reader(kind: str) -> ModuleType:
    """The reader module of one of SOURCE_KINDS."""
    if kind not in SOURCE_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    return importlib.import_module(f"chexvision_lib.data.sources.{kind}")


def detect_kind(root: Path) -> str:
    """The kind whose identifying file lies below `root`: nih (a Data_Entry CSV), a public dataset
    (its reader's `is_marker`), hub (parquet shards), else binary (class folders / CSV). Several
    kinds below one root (a Kaggle session with several datasets attached) is an error: the user
    points at one of them or passes --kind."""
    if root.is_file():
        return "binary"
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist")
    readers = [source_reader(kind) for kind in SOURCE_KINDS]
    found: dict[str, Path] = {}
    for directory, _dirs, files in os.walk(root, followlinks=True):
        for name in files:
            path = Path(directory, name)
            if DATA_ENTRY_PATTERN.match(name):
                found.setdefault("nih", path)
            elif name.endswith(".parquet"):
                found.setdefault("hub", path)
            for reader in readers:
                if reader.KIND not in found and reader.is_marker(path):
                    found[reader.KIND] = path
    if "nih" in found:
        found.pop("hub", None)  # the parquet variant's metadata is NIH's own CSV
    if len(found) > 1:
        listed = "; ".join(f"{kind} ({path})" for kind, path in sorted(found.items()))
        raise ValueError(
            f"{root} holds several datasets: {listed}; point ROOT at one or pass --kind"
        )
    return next(iter(found), "binary")


def check_options(kind: str, options: Mapping[str, object]) -> dict[str, object]:
    """Reader options (an uncertainty policy, a label rule) checked against what `kind` takes,
    before anything is read; kinds without options take none."""
    if kind in SOURCE_KINDS:
        reader = source_reader(kind)
        resolve_options(kind, reader.OPTIONS, options)
    elif options:
        raise ValueError(f"options {sorted(options)} do not apply to --kind {kind} (it takes none)")
    return dict(options)


def prepare(
    root: str | Path,
    out: str | Path,
    *,
    size: int = 256,
    kind: str = "auto",
    options: Mapping[str, object] | None = None,
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

    `options` are the reader's own choices (e.g. {"uncertainty": "ones"} for CheXpert); each
    kind's accepted options are its reader's OPTIONS. Before writing, the disk holding `out` must
    have room for the cache (N x size x size bytes plus the index); prepare refuses with the
    numbers otherwise, unless `ignore_disk_budget`.
    """
    root = Path(root)
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    kind = detect_kind(root) if kind == "auto" else kind
    reader_options = check_options(kind, options or {})
    common = {"val_fraction": val_fraction, "seed": seed, "views": views, "skip_bad": skip_bad}
    if kind == "nih":
        index = build_nih_index(root, **common)
        table, source = index.table, index.source
    elif kind == "hub":
        if metadata_root is None:
            raise ValueError(
                "--metadata-root is required for the parquet (hub) source: the "
                "folder with Data_Entry_2017*.csv, train_val_list.txt, test_list.txt"
            )
        index = build_hub_index(root, metadata_root, **common)
        table, source = index.table, index.source
    elif kind in SOURCE_KINDS:
        table, source = source_reader(kind).build_index(root, **common, **reader_options)
        source["views"] = list(views) if views else "frontal (the default)"
    else:
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
