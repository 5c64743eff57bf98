"""Writes that a kill cannot tear: readers see the old file or folder, or the new one, never half.

Long runs on Kaggle end without warning (the session limit, a kill); every file another step reads
back (cache.json, config.json, metrics.json, checkpoints, model folders) goes through here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def write_json_atomic(path: Path, payload: object) -> None:
    """Write JSON via a temporary file and rename, so readers never see a half-written file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(temporary, path)


def replace_folder(staging: Path, out: Path) -> None:
    """Swap a fully written `staging` folder in place of `out` (two renames, no copying)."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


def recover_folder(out: Path) -> None:
    """Undo a swap that a kill interrupted between its two renames (`out` gone, `out.old` kept)."""
    old = out.with_name(out.name + ".old")
    if not out.exists() and old.exists():
        os.replace(old, out)
