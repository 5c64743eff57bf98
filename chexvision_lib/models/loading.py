"""Loading a saved model: a model folder, a run folder or a Hub repo id, never unpickled."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from chexvision_lib.models.registry import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ChestClassifier,
    ModelFolderError,
)


def _describes_a_model(config_path: Path) -> bool:
    """Whether `config_path` is a model's config.json (a run folder's own one records `model`,
    the architecture's name, where a model folder's records `arch`)."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # unreadable: from_pretrained says what is wrong with it
    return isinstance(config, dict) and "arch" in config


def model_folder(folder: str | Path) -> Path:
    """The model folder that a local `folder` names: a run folder's model/, or `folder` itself.

    Raises FileNotFoundError for a folder that holds neither a model/ folder nor a model (for
    example a run stopped before its first epoch finished).
    """
    path = Path(folder)
    if (path / "model").is_dir():
        return path / "model"  # a run folder; from_pretrained names what model/ lacks
    if (path / WEIGHTS_FILE).is_file():
        return path
    config = path / CONFIG_FILE
    if config.is_file() and _describes_a_model(config):
        return path  # a model folder without its weights: from_pretrained says so
    raise FileNotFoundError(
        f"{folder} has no model/ folder ({CONFIG_FILE} + {WEIGHTS_FILE}): is it a run folder "
        "that finished an epoch? (training writes model/ when an epoch ends with a new best "
        "validation score; pass a run folder, a model folder or a Hub repo id)"
    )


def load_model(
    folder: str | Path, device: torch.device | str = "cpu", revision: str | None = None
) -> ChestClassifier:
    """Load a model folder (or a run folder's model/, or a Hub repo id) without unpickling.

    A folder whose config.json or weights disagree with this package raises ModelFolderError (a
    ValueError) naming the folder, the file and the field; files that are absent raise
    FileNotFoundError; anything else that stops the load is a ValueError naming `folder`.
    """
    path = Path(folder)
    if path.is_file():
        raise ValueError(
            f"{folder} is a file; expected a model folder ({CONFIG_FILE} + {WEIGHTS_FILE}), a run "
            "folder or a Hub repo id"
        )
    source = str(model_folder(path)) if path.is_dir() else str(folder)
    try:
        model = ChestClassifier.from_pretrained(source, revision=revision)
    except (ModelFolderError, FileNotFoundError):
        raise  # their messages already name the folder, file and field
    except Exception as error:
        raise ValueError(f"{folder}: cannot load a CheXVision model ({error})") from None
    return model.to(device).eval()
