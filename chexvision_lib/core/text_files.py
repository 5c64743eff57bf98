"""Reading the text files users hand us (metadata CSVs, split lists, label lists, predictions): a
file that is empty, not UTF-8 or not a table is an error that names the file and says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd


def _not_utf8(path: Path, error: UnicodeDecodeError) -> ValueError:
    return ValueError(
        f"{path}: not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); "
        "save it as UTF-8"
    )


def read_text(path: str | Path) -> str:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from None


def read_table(path: str | Path, **options: Any) -> pd.DataFrame:
    """pd.read_csv with errors that name the file (pandas' own name nothing)."""
    path = Path(path)
    try:
        return pd.read_csv(path, encoding="utf-8", **options)
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{path}: the file is empty (expected a header row and rows)") from None
    except pd.errors.ParserError as error:
        raise ValueError(f"{path}: not a readable CSV table ({error})") from None
