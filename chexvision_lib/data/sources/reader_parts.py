"""Pieces the CheXpert, MIMIC-CXR-JPG, PadChest and Indiana readers share beyond common.py: reading
a published CSV as text, errors that name the row, reader options, per-view skip counts, and
finding images by file name.

Rows in errors are numbered as in the file (1 = the header), as data/nih_index.py does.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from chexvision_lib.core.text_files import read_table
from chexvision_lib.data.nih_index import DatasetLayoutError
from chexvision_lib.data.sources.common import check_columns, filter_views


def csv_row(position: int) -> int:
    """The file row of a data row's 0-based position (row 1 is the header)."""
    return position + 2


def read_csv_text(path: Path, required: Iterable[str]) -> pd.DataFrame:
    """A published CSV (plain or .gz) read as text: blanks stay "" (a blank label means something
    other than 0.0), unnamed index columns written by pandas are dropped, required columns are
    checked."""
    raw = read_table(path, dtype=str, keep_default_na=False)
    raw = raw.loc[:, [c for c in raw.columns if not str(c).startswith("Unnamed:")]]
    check_columns(raw, required, path)
    return raw


def first_row(mask: pd.Series) -> int:
    """The position of the first True of a boolean Series (call only when one is True)."""
    return int(mask.to_numpy().nonzero()[0][0])


def check_unique(values: pd.Series, what: str, path: Path) -> None:
    """A key column (an image id, a study) must not repeat: the second occurrence is named."""
    repeated = values.duplicated()
    if repeated.any():
        at = first_row(repeated)
        earlier = first_row(values == values.iloc[at])
        raise ValueError(
            f"{path}, row {csv_row(at)}: {what} {values.iloc[at]!r} appears twice "
            f"(also row {csv_row(earlier)})"
        )


def numeric_column(raw: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """A numeric column as float: blank -> NaN; anything else that is not a number is an error."""
    text = raw[column].str.strip()
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = values.isna() & (text != "")
    if bad.any():
        at = first_row(bad)
        raise ValueError(
            f"{path}, row {csv_row(at)}: {column} {raw[column].iloc[at]!r} is not a number"
        )
    return values.astype(float)


def drop_views(
    table: pd.DataFrame, views: tuple[str, ...] | None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """`filter_views`, with the dropped rows counted per view ("lateral_views": 12, ...) for the
    source record's `skipped`."""
    kept, _ = filter_views(table, views)
    before = table["view"].value_counts()
    after = kept["view"].value_counts().reindex(before.index, fill_value=0)
    dropped = before - after
    return kept, {f"{view.lower()}_views": int(n) for view, n in dropped.items() if n}


def paths_by_name(paths: list[Path], root: Path) -> dict[str, str]:
    """File name -> path, for datasets whose image names are unique (PadChest, Indiana): found
    wherever below the root a copy keeps them. A name in two folders is an error (two copies)."""
    by_name: dict[str, str] = {}
    repeated: list[str] = []
    for path in paths:
        if path.name in by_name:
            repeated.append(path.name)
        by_name[path.name] = str(path)
    if repeated:
        raise DatasetLayoutError(
            f"{len(repeated)} image name(s) occur in more than one folder below {root}, e.g. "
            f"{repeated[:3]}; point the root at one copy"
        )
    return by_name
