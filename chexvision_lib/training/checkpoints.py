"""Checkpoints and model folders, written atomically: a kill never leaves a torn file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from chexvision_lib.core.atomic_files import replace_folder
from chexvision_lib.models.registry import ChestClassifier


# --- checkpoints --------------------------------------------------------------------------------
def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save to a temporary file, then rename: a kill never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}: nothing to resume") from None
    except Exception as error:  # torn, truncated or foreign files all land here
        raise ValueError(f"{path}: not a readable CheXVision checkpoint ({error})") from None


def save_model_folder(model: ChestClassifier, folder: Path, extra: dict) -> None:
    """save_pretrained into a temporary folder, then swap it in place of `folder`."""
    temporary = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary, config=extra)
    (temporary / "README.md").unlink(missing_ok=True)  # the card is written by `publish`
    replace_folder(temporary, folder)
