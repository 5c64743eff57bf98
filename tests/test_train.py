import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

from chexvision_lib.cli.main import main as cli_main
from chexvision_lib.core.config import from_dict
from chexvision_lib.core.labels import OUTPUTS
from chexvision_lib.core.predictions import prob_column
from chexvision_lib.data.batches import BatchLoader, CachedSplit
from chexvision_lib.data.prepare import prepare
from chexvision_lib.evaluation.evaluate import evaluate_run
from chexvision_lib.models.loading import load_model
from chexvision_lib.models.predict import predict_images, predict_loader
from chexvision_lib.models.registry import build_model
from chexvision_lib.training.checkpoints import load_checkpoint
from chexvision_lib.training.config import TrainConfig
from chexvision_lib.training.loop import fit, train_one_epoch, validation_row
from chexvision_lib.training.losses import masked_bce, positive_weights
from chexvision_lib.training.optimisation import make_optimizer, set_backbone_frozen

TIMING_COLUMNS = ["seconds", "images_per_s"]


@pytest.fixture(scope="module")
def cache(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare(synth_root, tmp_path_factory.mktemp("cache") / "c", size=64, progress=False)


def small_config(cache: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        cache=str(cache),
        out=str(out),
        model="seresnet_small",
        epochs=3,
        batch_size=16,
        lr=3e-3,
        seed=0,
        deterministic=True,
        threads=2,
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_config_rejects_unknown_keys_and_bad_values(cache: Path):
    with pytest.raises(ValueError, match=r"unknown TrainConfig parameter\(s\) \['bacth_size'\]"):
        from_dict(TrainConfig, {"cache": "c", "out": "o", "bacth_size": 3})
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        TrainConfig(cache="c", out="o", batch_size=0)
    with pytest.raises(ValueError, match="optimizer"):
        from_dict(TrainConfig, {"cache": "c", "out": "o", "optimizer": "rmsprop"})
    with pytest.raises(TypeError, match="epochs: expected int"):
        from_dict(TrainConfig, {"cache": "c", "out": "o", "epochs": "3"})


def test_fit_writes_a_complete_run(cache: Path, tmp_path: Path):
    run = fit(small_config(cache, tmp_path / "run", epochs=2), show_progress=False)
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 2
    for column in (
        "train_loss",
        "val_loss",
        "macro_auc",
        "binary_auc",
        "lr",
        "seconds",
        "images_per_s",
        "auc_Hernia",
    ):
        assert column in history.columns
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["effective_batch_size"] == 16 and resolved["world_size"] == 1
    assert resolved["data_source"]["sha256"]["test_list"]
    model_config = json.loads((run / "model" / "config.json").read_text())
    assert len(model_config["thresholds"]) == 15
    assert model_config["best_epoch"] == int(history["macro_auc"].idxmax()) + 1
    model = load_model(run)
    assert model.thresholds == model_config["thresholds"]

    metrics = evaluate_run(run, "test", n_resamples=50, show_progress=False)
    predictions = pd.read_csv(run / "test" / "predictions.csv")
    assert len(predictions) == metrics["n_images"] == len(CachedSplit(cache, "test"))
    assert metrics["split"] == "test" and "Research" in metrics["disclaimer"]
    assert metrics["outputs"]["Abnormal"]["at_validation_threshold"]["threshold"] == pytest.approx(
        model.thresholds[-1]
    )

    # predict on the original PNG files gives the probabilities evaluate computed from the cache
    test_rows = predictions.head(6)
    paths = (
        CachedSplit(cache, "test").table.set_index("image_id").loc[test_rows["image_id"], "path"]
    )
    scored = predict_images(model, list(paths), batch_size=4)
    for name in OUTPUTS:
        np.testing.assert_allclose(
            scored[prob_column(name)], test_rows[prob_column(name)], atol=1e-5
        )


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model" / "model.safetensors")


def test_killed_run_resumes_to_the_same_weights_and_history(cache: Path, tmp_path: Path):
    """With a weight EMA (averaged every 2 steps, past its warm-up at the first checkpoint): the
    raw weights, their average and the early-stopping memory all resume exactly."""
    ema = {"ema_decay": 0.9, "ema_every": 2, "warmup_epochs": 0.5}
    reference = fit(small_config(cache, tmp_path / "reference", **ema), show_progress=False)
    killed = tmp_path / "killed"
    config = small_config(cache, killed, **ema)
    code = (
        "import sys, json; from chexvision_lib import fit, TrainConfig; "
        f"fit(TrainConfig(**json.loads({json.dumps(json.dumps(config.__dict__))})), "
        "show_progress=False)"
    )
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, start_new_session=True)
    checkpoint = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not checkpoint.exists():
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    saved = load_checkpoint(checkpoint)["state"]
    assert saved["progress"]["epoch"] < 3, "killed before the end"
    assert saved["ema"]["steps"] == saved["progress"]["step"] and saved["ema"]["averaged"]
    # As if the kill had also landed while the next checkpoint was being written: a torn
    # temporary file beside the last complete one, which resume must ignore.
    checkpoint.with_name("last.pt.tmp").write_bytes(checkpoint.read_bytes()[:4096])
    fit(config, resume=True, show_progress=False)
    a = pd.read_csv(reference / "history.csv").drop(columns=TIMING_COLUMNS)
    b = pd.read_csv(killed / "history.csv").drop(columns=TIMING_COLUMNS)
    pd.testing.assert_frame_equal(a, b)
    wa, wb = _weights(reference), _weights(killed)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    shipped = [
        json.loads((run / "model" / "config.json").read_text()) for run in (reference, killed)
    ]
    for key in ("thresholds", "temperatures", "best_epoch", "shipped_weights"):
        assert shipped[0][key] == shipped[1][key], key
    final = [
        load_checkpoint(run / "checkpoints" / "last.pt")["state"] for run in (reference, killed)
    ]
    for key, value in final[0]["ema"]["averaged"].items():
        assert torch.equal(value, final[1]["ema"]["averaged"][key]), key


def test_the_better_of_the_weights_and_their_average_ships(cache: Path, tmp_path: Path):
    """Each epoch validates both; early stopping watches the better; the best epoch's better
    weights ship, with temperatures and thresholds chosen on their validation predictions. The
    average never changes the training itself."""
    plain = fit(small_config(cache, tmp_path / "plain", epochs=2), show_progress=False)
    run = fit(small_config(cache, tmp_path / "ema", epochs=2, ema_decay=0.9), show_progress=False)
    history, without = pd.read_csv(run / "history.csv"), pd.read_csv(plain / "history.csv")
    chosen = ["monitor", "monitor_weights"]
    raw_columns = [c for c in without.columns if c not in TIMING_COLUMNS + chosen]
    pd.testing.assert_frame_equal(history[raw_columns], without[raw_columns])
    assert (without["monitor_weights"] == "raw").all()
    # In the warm-up (the first epoch) the average follows the weights: the same AUCs.
    assert history.loc[0, "ema_macro_auc"] == history.loc[0, "macro_auc"]
    for _, row in history.iterrows():
        use_ema = row["ema_macro_auc"] > row["macro_auc"]
        assert row["monitor"] == max(row["ema_macro_auc"], row["macro_auc"])
        assert row["monitor_weights"] == ("ema" if use_ema else "raw")
    assert (history["monitor_weights"] == "ema").any(), "this seed's average wins an epoch"

    shipped = json.loads((run / "model" / "config.json").read_text())
    best = int(history["monitor"].idxmax())
    assert shipped["best_epoch"] == best + 1
    assert shipped["shipped_weights"] == history.loc[best, "monitor_weights"]
    # The shipped weights are that epoch's: their validation AUCs (which temperatures, being
    # monotone, leave alone) are the ones history.csv recorded for them.
    model = load_model(run)
    val = CachedSplit(cache, "val")
    loader = BatchLoader(val, 32, torch.device("cpu"), shuffle=False)
    probs, labels = predict_loader(model, loader, model.preprocessing, None)
    prefix = "ema_" if shipped["shipped_weights"] == "ema" else ""
    for name, value in validation_row(probs, labels).items():
        assert value == pytest.approx(history.loc[best, prefix + name], abs=1e-6, nan_ok=True), name
    assert model.temperatures is not None and len(model.thresholds) == 15


def test_a_moved_run_resumes_where_it_is_now(cache: Path, tmp_path: Path, capsys):
    """A run copied elsewhere (a Kaggle output, a download) continues in the copy; the original
    is never written to."""
    original = tmp_path / "original"
    fit(small_config(cache, original, epochs=3), show_progress=False)
    checkpoint = torch.load(original / "checkpoints" / "last.pt", weights_only=True)
    checkpoint["state"]["progress"].update(epoch=1, stopped_early=False)  # as if stopped at 1
    checkpoint["state"]["history"] = checkpoint["state"]["history"][:1]
    torch.save(checkpoint, original / "checkpoints" / "last.pt")
    moved = tmp_path / "moved"
    shutil.copytree(original, moved)
    before = (original / "history.csv").read_bytes()
    assert cli_main(["train", "--resume", str(moved)]) == 0
    assert f"run folder: {moved}" in capsys.readouterr().out
    assert (original / "history.csv").read_bytes() == before
    assert len(pd.read_csv(moved / "history.csv")) == 3


def test_a_checkpoint_of_another_layout_is_refused_by_name(cache: Path, tmp_path: Path, capsys):
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}, "state": {"epoch": 1}, "config": {}}, run / "checkpoints" / "last.pt")
    assert cli_main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "last.pt: a checkpoint of format 1, written by an earlier CheXVision" in err
    torch.save({"a": 1}, run / "checkpoints" / "last.pt")
    assert cli_main(["train", "--resume", str(run)]) == 2
    assert "not a CheXVision checkpoint" in capsys.readouterr().err


def test_frozen_phase_really_freezes_the_backbone(cache: Path):
    config = small_config(cache, "unused", freeze_epochs=1, unfreeze_lr_factor=0.1)
    model = build_model("seresnet_small", image_size=64)
    data = CachedSplit(cache, "train")
    loader = BatchLoader(data, 16, torch.device("cpu"), shuffle=True, drop_last=True)
    optimizer = make_optimizer(model, config, torch.device("cpu"))
    assert optimizer.param_groups[1]["lr"] == pytest.approx(config.lr * 0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    set_backbone_frozen(model, True)
    args = (
        optimizer,
        None,
        torch.amp.GradScaler("cpu", enabled=False),
        config,
        positive_weights(data.labels),
        model.preprocessing,
        None,
    )
    train_one_epoch(model, loader, *args, 0, False)
    after = model.state_dict()
    backbone_keys = {k for k in before if k.startswith("backbone.")}
    assert backbone_keys and any("running_mean" in k for k in backbone_keys)
    assert all(torch.equal(before[k], after[k]) for k in backbone_keys)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in backbone_keys)
    model.train()
    set_backbone_frozen(model, False)
    train_one_epoch(model, loader, *args, 1, False)
    assert any(not torch.equal(before[k], model.state_dict()[k]) for k in backbone_keys)


def test_two_phase_history(cache: Path, tmp_path: Path):
    run = fit(
        small_config(cache, tmp_path / "run", epochs=2, freeze_epochs=1, optimizer="sgd", lr=0.01),
        show_progress=False,
    )
    history = pd.read_csv(run / "history.csv")
    assert history["phase"].tolist() == ["frozen", "full"]
    assert history["backbone_lr"].tolist()[0] == 0.0
    assert history["backbone_lr"].tolist()[1] == pytest.approx(0.001)


def test_masked_loss_ignores_unknown_labels():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    labels = torch.tensor([[1.0, -1.0], [0.0, -1.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:, 0], labels[:, 0], pos_weight=torch.tensor(2.0)
    )
    assert masked_bce(logits, labels, torch.tensor([2.0, 5.0])) == pytest.approx(expected.item())
    assert positive_weights(np.array([[1, -1], [0, 0], [0, 1], [0, -1]])).tolist() == [3.0, 1.0]


def test_bad_inputs_give_clear_errors(cache: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="seresnet_small"):
        fit(small_config(cache, tmp_path / "a", model="resnet999"), show_progress=False)
    with pytest.raises(ValueError, match="image_size"):
        fit(
            small_config(cache, tmp_path / "b", model="alexnet", image_size=32), show_progress=False
        )
    with pytest.raises(ValueError, match="exceeds the cache"):
        fit(small_config(cache, tmp_path / "c", image_size=128), show_progress=False)
    with pytest.raises(ValueError, match="batch_size 4096 exceeds"):
        fit(small_config(cache, tmp_path / "d", batch_size=4096), show_progress=False)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        fit(small_config(cache, tmp_path / "e", amp="fp16"), show_progress=False)
    corrupt = tmp_path / "f" / "checkpoints" / "last.pt"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(ValueError, match="not a readable CheXVision checkpoint"):
        fit(small_config(cache, tmp_path / "f"), resume=True, show_progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        fit(small_config(cache, tmp_path / "f"), show_progress=False)


def test_cli_predict_rejects_non_images(cache: Path, tmp_path: Path, capsys):
    run = fit(small_config(cache, tmp_path / "run", epochs=1), show_progress=False)
    text = tmp_path / "report.png"
    text.write_text("not an image")
    assert cli_main(["predict", str(run), str(text)]) == 2
    assert "report.png: not a readable image" in capsys.readouterr().err
    assert (
        cli_main(["train", "--cache", str(cache), "--out", str(tmp_path / "x"), "--model", "nope"])
        == 2
    )
    image = CachedSplit(cache, "test").table["path"].iloc[0]
    assert cli_main(["predict", str(run), image, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert 0.0 <= rows[0][prob_column("Abnormal")] <= 1.0
    images = list(CachedSplit(cache, "test").table["path"].iloc[:5])
    out = tmp_path / "predictions.csv"
    args = ["predict", str(run), *images, "--out", str(out), "--workers", "1", "--device", "cpu"]
    assert cli_main(args) == 0
    written = pd.read_csv(out)
    expected = predict_images(load_model(run), images)
    assert list(written["image"]) == images
    columns = [prob_column(name) for name in OUTPUTS]
    assert np.allclose(written[columns].to_numpy(), expected[columns].to_numpy(), atol=1e-6)


def test_bf16_autocast_on_cpu_trains(cache: Path, tmp_path: Path):
    run = fit(
        replace(small_config(cache, tmp_path / "run", epochs=1), amp="bf16", deterministic=False),
        show_progress=False,
    )
    assert json.loads((run / "config.json").read_text())["amp_dtype"] == "bfloat16"
    assert np.isfinite(pd.read_csv(run / "history.csv")["train_loss"]).all()
