"""Named recipes: valid configs, explicit values win, the recipe is recorded, and a Kaggle run can
continue in a later session from an earlier one's output and end as if never interrupted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from chexvision_lib.cli.main import main as cli_main
from chexvision_lib.data.prepare import prepare
from chexvision_lib.notebook.helpers import cache_size, training_config
from chexvision_lib.notebook.kaggle_session import resume_from_output
from chexvision_lib.training.loop import fit
from chexvision_lib.training.recipes import RECIPES, config_with_recipe

REPO = Path(__file__).resolve().parents[1]
TINY = {"model": "seresnet_small", "image_size": 64, "epochs": 3, "batch_size": 16, "threads": 2}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_is_a_valid_config(name):
    config = config_with_recipe({"recipe": name, "cache": "c", "out": "o"})
    assert config.recipe == name
    for key, value in RECIPES[name].items():
        assert getattr(config, key) == value, key


def test_the_seed_recipe_is_the_issue_s():
    config = config_with_recipe({"recipe": "chexvision-resnet", "cache": "c", "out": "o"})
    assert (config.model, config.head, config.batch_size, config.accum_steps) == (
        "seresnet",
        "dual",
        24,
        4,
    )
    assert (config.optimizer, config.lr_schedule, config.epochs, config.patience) == (
        "adamw",
        "cosine",
        100,
        15,
    )
    tang = config_with_recipe({"recipe": "tang2020", "cache": "c", "out": "o"})
    assert (tang.head, tang.optimizer, tang.lr_schedule, tang.plateau_patience) == (
        "binary",
        "sgd",
        "plateau",
        5,
    )
    scratch = config_with_recipe({"recipe": "tang2020-scratch", "cache": "c", "out": "o"})
    assert (scratch.pretrained, scratch.lr) == (None, 1e-2)


def test_the_record_recipe_is_densenet_at_448_with_ema():
    config = config_with_recipe({"recipe": "nih-sota", "cache": "c", "out": "o"})
    assert (config.model, config.pretrained, config.head) == ("densenet121", "imagenet", "dual")
    assert 384 <= config.image_size <= 512
    assert (config.optimizer, config.lr_schedule) == ("adamw", "cosine")
    assert config.warmup_epochs > 0 and config.patience < config.epochs
    assert 0.99 < config.ema_decay < 1.0 and config.ema_every >= 1
    # the EMA's horizon (~1 / (1 - decay) steps) spans at most a few epochs of ~77k images
    effective_batch = config.batch_size * config.accum_steps
    assert 1 / (1 - config.ema_decay) < 5 * 77_000 / effective_batch
    assert config.hflip


def test_explicit_values_override_the_recipe():
    config = config_with_recipe(
        {"recipe": "chexnet", "cache": "c", "out": "o", "epochs": 3, "pretrained": None}
    )
    assert (config.epochs, config.pretrained, config.image_size) == (3, None, 224)


def test_an_unknown_recipe_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown recipe 'chexnet2'; known: \['chexnet'"):
        config_with_recipe({"recipe": "chexnet2", "cache": "c", "out": "o"})


def test_notebook_parameters_keep_the_recipe_unless_given():
    config = training_config("chexvision-resnet", "c", "o", model=None, epochs=2)
    assert (config.model, config.epochs, config.recipe) == ("seresnet", 2, "chexvision-resnet")
    scratch = training_config("chexvision-densenet", "c", "o", pretrained="scratch")
    assert scratch.pretrained is None
    assert cache_size("chexnet", None) == 224
    assert cache_size(None, None) == 256
    assert cache_size("chexnet", 128) == 128


def test_the_recipe_is_recorded_in_config_json(synth_root, tmp_path, capsys):
    cache = prepare(synth_root, tmp_path / "cache", size=64, progress=False)
    out = tmp_path / "run"
    args = ["train", "--recipe", "chexvision-resnet", "--cache", str(cache), "--out", str(out)]
    args += ["--model", "seresnet_small", "--image-size", "64", "--epochs", "1"]
    args += ["--batch-size", "16", "--threads", "2"]
    assert cli_main(args) == 0
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["recipe"] == "chexvision-resnet"
    assert (recorded["model"], recorded["accum_steps"], recorded["patience"]) == (
        "seresnet_small",
        4,
        15,
    )
    assert recorded["effective_batch_size"] == 64


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def test_a_run_continues_in_the_next_kaggle_session(synth_root, tmp_path, monkeypatch):
    """Session 1 is killed after its first checkpoint (Kaggle's 12 h limit); session 2 mounts its
    output read-only, resumes with resume_from="auto", and ends identical to an uninterrupted
    run."""
    reference = tmp_path / "reference" / "runs" / "train"
    reference_cache = prepare(synth_root, tmp_path / "reference" / "cache", size=64, progress=False)
    fit(config_with_recipe({**TINY, "cache": str(reference_cache), "out": str(reference)}),
        show_progress=False)  # fmt: skip

    first = tmp_path / "session1" / "working"
    first.mkdir(parents=True)
    monkeypatch.chdir(first)
    prepare(synth_root, "runs/cache64", size=64, progress=False)
    values = {**TINY, "cache": "runs/cache64", "out": "runs/train"}
    code = (
        "import json; from chexvision_lib.training.recipes import config_with_recipe; "
        "from chexvision_lib import fit; "
        f"fit(config_with_recipe(json.loads({json.dumps(json.dumps(values))})), "
        "show_progress=False)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, env=env)
    checkpoint = first / "runs" / "train" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not checkpoint.exists():
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert len(pd.read_csv(first / "runs" / "train" / "history.csv")) < 3, "killed mid-run"

    kaggle = tmp_path / "session2"
    shutil.copytree(first, kaggle / "input" / "chexvision-train")
    (kaggle / "working").mkdir()
    monkeypatch.setenv("CHEXVISION_KAGGLE_ROOT", str(kaggle))
    monkeypatch.chdir(kaggle / "working")
    assert resume_from_output("auto", "runs/train")
    assert Path("runs/cache64").is_symlink(), "the mounted cache is used, not prepared again"
    fit(config_with_recipe(values), resume=True, show_progress=False)

    timing = ["seconds", "images_per_s"]
    a = pd.read_csv(reference / "history.csv").drop(columns=timing)
    b = pd.read_csv(kaggle / "working" / "runs" / "train" / "history.csv").drop(columns=timing)
    pd.testing.assert_frame_equal(a, b)
    wa, wb = _weights(reference), _weights(kaggle / "working" / "runs" / "train")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    mounted = kaggle / "input" / "chexvision-train" / "runs" / "train" / "history.csv"
    assert len(pd.read_csv(mounted)) < 3, "the mounted output is never written to"
