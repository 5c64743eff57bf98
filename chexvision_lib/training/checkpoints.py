"""Checkpoints and model folders, written atomically: a kill never leaves a torn file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from chexvision_lib.core.atomic_files import replace_folder
from chexvision_lib.models.registry import ChestClassifier

# --- checkpoints --------------------------------------------------------------------------------
# The layout of last.pt: {"format", "state": TrainState.state_dict(), "config"}. A file of
# another layout cannot be resumed by this code, and says so rather than failing half-way.
# Format 3 added the weight EMA's state and which weights (raw or averaged) are the best.
CHECKPOINT_FORMAT = 3


def save_checkpoint(path: Path, state: dict, config: dict) -> None:
    """torch.save to a temporary file, then rename: a kill never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "state": state, "config": config}, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}: nothing to resume") from None
    except Exception as error:  # torn, truncated or foreign files all land here
        raise ValueError(f"{path}: not a readable CheXVision checkpoint ({error})") from None
    if not isinstance(checkpoint, dict) or not {"state", "config"} <= checkpoint.keys():
        raise ValueError(f"{path}: not a CheXVision checkpoint (no training state and config)")
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path}: a checkpoint of format {checkpoint.get('format', 1)}, written by an earlier "
            f"CheXVision; this version resumes format {CHECKPOINT_FORMAT} only. Resume it with "
            "the version that wrote it, or start the run again"
        )
    return checkpoint


def save_model_folder(model: ChestClassifier, folder: Path, extra: dict) -> None:
    """save_pretrained into a temporary folder, then swap it in place of `folder`."""
    temporary = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary, config=extra)
    (temporary / "README.md").unlink(missing_ok=True)  # the card is written by `chexvision card`
    replace_folder(temporary, folder)
