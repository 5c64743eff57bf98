"""What only a CUDA device can show: the device-side data path gives the CPU's batches, the
training step never makes the host wait for the GPU, and fp16 training scores like fp32.

Every test here skips without a GPU (CI has none); they run on a lent GPU machine with
`python -m pytest tests/test_cuda.py`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import small_config

from chexvision_lib.data.batches import Augment, BatchLoader, CachedSplit, augment
from chexvision_lib.data.prepare import prepare
from chexvision_lib.models.loading import load_model
from chexvision_lib.models.predict import predict_arrays
from chexvision_lib.models.registry import build_model
from chexvision_lib.runtime.devices import autocast_dtype
from chexvision_lib.training.loop import fit, train_one_epoch
from chexvision_lib.training.losses import positive_weights
from chexvision_lib.training.optimisation import make_optimizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def cache(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare(synth_root, tmp_path_factory.mktemp("cache") / "c", size=64, progress=False)


def test_augment_gives_the_same_images_on_cuda_and_cpu():
    pixels = torch.randint(0, 256, (8, 1, 96, 96), dtype=torch.uint8)
    settings = Augment(hflip=True)
    on_cpu = augment(pixels, 64, settings, torch.Generator().manual_seed(5))
    on_cuda = augment(pixels.to(CUDA), 64, settings, torch.Generator().manual_seed(5))
    # Same random draws (made on the CPU); only grid_sample's arithmetic differs.
    assert on_cuda.device.type == "cuda"
    assert torch.allclose(on_cuda.cpu(), on_cpu, atol=1e-4)


def test_resident_and_streamed_batches_are_the_same(cache: Path):
    data = CachedSplit(cache, "train")
    streamed = BatchLoader(data, 16, CUDA, shuffle=True, seed=3, drop_last=True)
    resident = BatchLoader(data, 16, CUDA, shuffle=True, seed=3, drop_last=True, on_device=True)
    pairs = list(zip(streamed, resident, strict=True))
    assert len(pairs) == len(data) // 16
    for (pixels_a, labels_a, index_a), (pixels_b, labels_b, index_b) in pairs:
        assert pixels_a.device.type == pixels_b.device.type == "cuda"
        assert torch.equal(pixels_a, pixels_b)
        assert torch.equal(labels_a, labels_b)
        assert torch.equal(index_a, index_b)


def _sync_warnings(cache: Path, tmp_path: Path, batch_size: int) -> tuple[int, int]:
    """(host syncs counted by torch's sync debug mode in one training epoch, steps taken)."""
    config = small_config(cache, tmp_path / "sync", batch_size=batch_size, device="cuda")
    data = CachedSplit(cache, "train")
    loader = BatchLoader(data, batch_size, CUDA, shuffle=True, drop_last=True)
    model = build_model("seresnet_small", image_size=data.size).to(CUDA)
    model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, config, CUDA)
    scaler = torch.amp.GradScaler("cuda")
    pos_weight = positive_weights(data.labels).to(CUDA)
    amp = autocast_dtype("auto", CUDA)
    args = (model, loader, optimizer, None, scaler, config, pos_weight, model.preprocessing, amp)
    train_one_epoch(*args, epoch=0, show_progress=False)  # warm-up: cuDNN, allocators
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_one_epoch(*args, epoch=1, show_progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return len(syncs), len(loader)


def test_training_steps_never_wait_for_the_gpu(cache: Path, tmp_path: Path):
    few, few_steps = _sync_warnings(cache, tmp_path, batch_size=32)
    many, many_steps = _sync_warnings(cache, tmp_path, batch_size=4)
    assert many_steps >= 4 * few_steps
    # Host syncs happen once per epoch (the loss for history.csv), never once per step.
    assert many == few
    assert few <= 4


def test_fp16_training_on_cuda_scores_like_fp32(cache: Path, tmp_path: Path):
    run = fit(
        small_config(cache, tmp_path / "run", epochs=2, deterministic=False, device="cuda"),
        show_progress=False,
    )
    assert json.loads((run / "config.json").read_text())["amp_dtype"] == "float16"
    data = CachedSplit(cache, "test")
    pixels = data.read(np.arange(len(data)))
    on_cuda = predict_arrays(load_model(run, "cuda"), pixels, amp="fp16")
    on_cpu = predict_arrays(load_model(run, "cpu"), pixels, amp="off")
    assert np.isfinite(on_cuda).all()
    assert np.abs(on_cuda - on_cpu).max() < 5e-3
