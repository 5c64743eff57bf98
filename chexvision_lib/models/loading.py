"""Loading a saved model: a model folder, a run folder or a Hub repo id, never unpickled."""

from __future__ import annotations

from pathlib import Path

import torch

from chexvision_lib.models.registry import ChestClassifier


def load_model(
    folder: str | Path, device: torch.device | str = "cpu", revision: str | None = None
) -> ChestClassifier:
    """Load a model folder (or a run folder's model/, or a Hub repo id) without unpickling."""
    path = Path(folder)
    if (path / "model" / "config.json").exists():
        path = path / "model"
    source = str(path) if path.exists() else str(folder)
    try:
        model = ChestClassifier.from_pretrained(source, revision=revision)
    except Exception as error:
        raise ValueError(f"{folder}: cannot load a CheXVision model ({error})") from None
    return model.to(device).eval()
