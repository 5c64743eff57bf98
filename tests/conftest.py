"""Shared fixtures: a tiny hand-made NIH layout, the synthetic set, the real data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("CHEXVISION_REALDATA", REPO.parent / "shared" / "realdata"))

HEADER_2017 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
HEADER_2020 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


def realdata(*parts: str) -> Path:
    """A path inside ../shared/realdata, or skip the test when the folder is absent."""
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available at {path}")
    return path


def write_tiny_nih(
    root: Path,
    rows: list[tuple[str, str, int, str]],
    test_patients: set[int],
    *,
    variant: str = "2017",
    size: int = 64,
) -> Path:
    """Write an NIH-layout folder: rows are (image name, Finding Labels, patient, view)."""
    images = root / "images_001" / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = [HEADER_2017 if variant == "2017" else HEADER_2020]
    for k, (name, labels, patient, view) in enumerate(rows):
        value = (k * 37) % 256
        Image.fromarray(np.full((size, size), value, np.uint8)).save(images / name)
        line = f"{name},{labels},0,{patient},{40 + k},M,{view},{size},{size},0.143,0.143"
        lines.append(line + ("," if variant == "2017" else ""))
    (root / f"Data_Entry_2017{'_v2020' if variant == '2020' else ''}.csv").write_text(
        "\n".join(lines) + "\n"
    )
    test = [r[0] for r in rows if r[2] in test_patients]
    train = [r[0] for r in rows if r[2] not in test_patients]
    (root / "train_val_list.txt").write_text("\n".join(train))
    (root / "test_list.txt").write_text("\n".join(test))
    return root


TINY_ROWS = [
    ("00000001_000.png", "Cardiomegaly", 1, "PA"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", 1, "PA"),
    ("00000002_000.png", "No Finding", 2, "AP"),
    ("00000003_000.png", "Pleural_Thickening", 3, "PA"),
    ("00000004_000.png", "Effusion|Mass", 4, "AP"),
    ("00000005_000.png", "No Finding", 5, "PA"),
    ("00000006_000.png", "Hernia", 6, "PA"),
    ("00000006_001.png", "No Finding", 6, "PA"),
]


@pytest.fixture
def tiny_nih(tmp_path: Path) -> Path:
    return write_tiny_nih(tmp_path / "nih", TINY_ROWS, test_patients={5, 6})


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chexvision_lib.data.synthetic import write_synthetic_nih

    root = tmp_path_factory.mktemp("synth") / "nih"
    write_synthetic_nih(root, n_patients=60, image_size=128, seed=3)
    return root


def tiny_evaluated_run(synth_root: Path, root: Path) -> Path:
    """One epoch of seresnet_small on the synthetic set at 64 px, evaluated on test and val: the
    run the publishing tests build model folders and cards from."""
    from chexvision_lib.data.prepare import prepare
    from chexvision_lib.evaluation.evaluate import evaluate_run
    from chexvision_lib.training.config import TrainConfig
    from chexvision_lib.training.loop import fit

    cache = prepare(synth_root, root / "cache", size=64, progress=False)
    config = TrainConfig(
        cache=str(cache),
        out=str(root / "run"),
        model="seresnet_small",
        epochs=1,
        batch_size=16,
        threads=2,
        deterministic=True,
    )
    run = fit(config, show_progress=False)
    evaluate_run(run, "test", n_resamples=50, show_progress=False)
    evaluate_run(run, "val", n_resamples=50, show_progress=False)
    return run
