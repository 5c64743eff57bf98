"""DDP on the CPU with gloo and 2 processes, launched by torchrun like a user would.

Equivalence claim: with N ranks of batch B, each optimiser step sees exactly the images one
process sees with batch N x B (same shuffled order, interleaved across ranks, same tail dropped),
and DDP averages the per-rank mean gradients, which equals the full-batch mean gradient. The only
arithmetic difference is the order of float32 summation in the all-reduce (~1e-7 relative per
step), so we use a network without batch norm (alexnet: batch-norm statistics would legitimately
differ between B and N x B images) and plain SGD (Adam's first steps divide by sqrt of tiny second
moments and amplify rounding), and require metrics to agree to 1e-5 and weights to 1e-5.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

from chexvision_lib.data.batches import BatchLoader, CachedSplit
from chexvision_lib.data.prepare import prepare
from chexvision_lib.models.loading import load_model
from chexvision_lib.models.predict import predict_loader
from chexvision_lib.training.config import TrainConfig
from chexvision_lib.training.loop import fit

ARGS = [
    "--model",
    "alexnet",
    "--epochs",
    "2",
    "--no-augment",
    "--optimizer",
    "sgd",
    "--lr",
    "0.01",
    "--threads",
    "1",
    "--seed",
    "0",
]


def torchrun(*args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *args,
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from chexvision_lib.data.synthetic import write_synthetic_nih

    base = tmp_path_factory.mktemp("ddp")
    write_synthetic_nih(base / "data", n_patients=100, image_size=128, seed=5)
    return prepare(base / "data", base / "cache", size=64, val_fraction=0.2, progress=False)


def test_two_processes_match_one_process_with_the_same_effective_batch(cache: Path, tmp_path: Path):
    torchrun(
        "-m",
        "chexvision_lib.cli",
        "train",
        "--cache",
        str(cache),
        "--out",
        str(tmp_path / "ddp"),
        "--batch-size",
        "8",
        *ARGS,
    )
    config = TrainConfig(
        cache=str(cache),
        out=str(tmp_path / "single"),
        model="alexnet",
        epochs=2,
        augment=False,
        optimizer="sgd",
        lr=0.01,
        threads=1,
        batch_size=16,
    )
    fit(config, show_progress=False)
    resolved = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert resolved["world_size"] == 2 and resolved["effective_batch_size"] == 16
    columns = ["train_loss", "val_loss", "macro_auc", "binary_auc"]
    ddp = pd.read_csv(tmp_path / "ddp" / "history.csv")[columns]
    single = pd.read_csv(tmp_path / "single" / "history.csv")[columns]
    np.testing.assert_allclose(ddp.to_numpy(), single.to_numpy(), atol=1e-5)
    a = load_file(tmp_path / "ddp" / "model" / "model.safetensors")
    b = load_file(tmp_path / "single" / "model" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    # rank 0 alone wrote the run: one history, one checkpoint, no stray temporary files
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == [
        "checkpoints",
        "config.json",
        "history.csv",
        "model",
    ]

    # --resume works the same under torchrun (a finished run: no epoch is added)
    torchrun("-m", "chexvision_lib.cli", "train", "--resume", str(tmp_path / "ddp"))
    assert len(pd.read_csv(tmp_path / "ddp" / "history.csv")) == 2


def test_sharded_evaluation_scores_every_image_exactly_once(cache: Path, tmp_path: Path):
    run = fit(
        TrainConfig(
            cache=str(cache),
            out=str(tmp_path / "run"),
            model="seresnet_small",
            epochs=1,
            batch_size=16,
            threads=2,
        ),
        show_progress=False,
    )
    data = CachedSplit(cache, "test")
    assert len(data) % 2 == 1, "an odd count makes the 2-rank sampler pad"
    out = tmp_path / "ddp_eval.npz"
    torchrun(str(REPO / "tests" / "ddp_eval_worker.py"), str(run), str(cache), "test", str(out))
    result = np.load(out)
    n = int(result["n"])
    counts = np.bincount(result["positions"], minlength=n)
    assert (counts >= 1).all(), "every image scored"
    assert counts.sum() - n == (-n) % 2  # duplicates only from the sampler's padding
    model = load_model(run)
    loader = BatchLoader(data, 4, torch.device("cpu"), shuffle=False)
    single, _ = predict_loader(model, loader, model.preprocessing, None, show_progress=False)
    np.testing.assert_allclose(result["probs"], single, atol=1e-6)
