"""Experiment logs: each backend's files read back with the tool's own reader (TensorBoard's
EventAccumulator, MLflow's client on the file store, the W&B offline run folder), a resumed run
continuing its logs, and a training run logging its steps and epochs without leaking a secret."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from chexvision_lib.cli.main import build_parser
from chexvision_lib.core.config import from_dict
from chexvision_lib.data.prepare import prepare
from chexvision_lib.training import experiment_log
from chexvision_lib.training.config import TrainConfig
from chexvision_lib.training.experiment_log import ExperimentLogs, StepLog
from chexvision_lib.training.loop import fit

SECRET = "hf_not_a_real_token_7f3a9c"


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """W&B never reaches the network here: offline, silent, its own files under tmp."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-home"))


def tensorboard_scalars(run: Path, tag: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one scalar, as TensorBoard reads them."""
    events = EventAccumulator(str(run / "logs" / "tensorboard"))
    events.Reload()
    scalars = events.Scalars(tag)
    return [event.step for event in scalars], [event.value for event in scalars]


def a_figure(path: Path) -> Path:
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)).save(path)
    return path


def test_a_backend_is_checked_when_the_config_is_made(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(ValueError, match=r"log: unknown backend 'neptune'; known: \['mlflow'"):
        TrainConfig(cache="c", out="o", log=("neptune",))
    with pytest.raises(TypeError, match="log: expected a list of backends"):
        TrainConfig(cache="c", out="o", log="tensorboard")
    missing = ("chexvision_no_such_module", "mlflow-skinny")
    monkeypatch.setitem(experiment_log.BACKENDS, "mlflow", missing)
    with pytest.raises(ValueError, match=r"mlflow needs the 'mlflow-skinny' package \(pip install"):
        from_dict(TrainConfig, {"cache": "c", "out": "o", "log": ["tensorboard", "mlflow"]})
    # JSON gives a list; the config holds the tuple a saved config compares equal to
    config = from_dict(TrainConfig, {"cache": "c", "out": "o", "log": ["tensorboard"]})
    assert config.log == ("tensorboard",)


def test_the_log_flag_repeats_or_takes_commas():
    args = build_parser().parse_args(
        ["train", "--log", "tensorboard,mlflow", "--log", "wandb", "--ema-decay", "0.99"]
    )
    assert args.log == ["tensorboard", "mlflow", "wandb"]
    values = {"cache": "c", "out": "o", "log": args.log, "ema_decay": args.ema_decay}
    config = from_dict(TrainConfig, values)
    assert config.log == ("tensorboard", "mlflow", "wandb") and config.ema_decay == 0.99
    assert "log" not in vars(build_parser().parse_args(["train"])), "unset flags stay unset"


def test_under_torchrun_the_flag_is_spelt_log_to(capsys: pytest.CaptureFixture[str]):
    """torchrun claims any prefix of its own flags, even after the script: --log is its
    --log-dir, so `chexvision train` also takes --log-to."""
    from torch.distributed.run import get_args_parser

    script = ["--standalone", "--nproc_per_node=2", "-m", "chexvision_lib.cli", "train"]
    with pytest.raises(SystemExit):
        get_args_parser().parse_args([*script, "--log", "tensorboard"])
    assert "ambiguous option: --log" in capsys.readouterr().err
    launched = get_args_parser().parse_args([*script, "--log-to", "tensorboard,mlflow"])
    args = build_parser().parse_args(launched.training_script_args)
    assert args.log == ["tensorboard", "mlflow"]


def test_tensorboard_events_read_back_and_a_resumed_run_replaces_its_repeated_steps(
    tmp_path: Path,
):
    run = tmp_path / "run"
    with ExperimentLogs(("tensorboard",), run) as logs:
        logs.log_config({"model": "seresnet", "cache": {"size": 64}})
        for step in (1, 2, 3):
            logs.log_scalars(step, {"step/train_loss": 1.0 / step, "step/lr": 0.1 * step})
        logs.log_scalars(3, {"epoch/macro_auc": 0.75, "epoch/binary_auc": float("nan")})
        logs.log_scalars(3, {"epoch/phase": "full"})  # not a number: not logged
        logs.log_file(a_figure(run / "roc.png"))
    steps, losses = tensorboard_scalars(run, "step/train_loss")
    assert steps == [1, 2, 3] and losses == pytest.approx([1.0, 0.5, 1 / 3])
    events = EventAccumulator(str(run / "logs" / "tensorboard"))
    events.Reload()
    assert events.Scalars("epoch/macro_auc")[0].value == pytest.approx(0.75)
    assert "epoch/binary_auc" not in events.Tags()["scalars"], "NaN is no data point"
    assert events.Tags()["images"] == ["figures/roc"]
    image = events.Images("figures/roc")[0]
    assert (image.width, image.height) == (8, 6)
    # A run killed after step 3, resumed from its checkpoint at step 2: step 3 is logged anew.
    with ExperimentLogs(("tensorboard",), run, first_step=2) as logs:
        logs.log_scalars(3, {"step/train_loss": 0.25})
        logs.log_scalars(4, {"step/train_loss": 0.2})
    steps, losses = tensorboard_scalars(run, "step/train_loss")
    assert steps == [1, 2, 3, 4] and losses == pytest.approx([1.0, 0.5, 0.25, 0.2])


def test_the_step_log_writes_every_step_with_one_flush_per_n(tmp_path: Path):
    run = tmp_path / "run"
    with ExperimentLogs(("tensorboard",), run) as logs:
        step_log = StepLog(logs, step=10, every=2)
        for k in range(5):
            step_log.add(torch.tensor(float(k)), lr=0.5)
            assert len(step_log.pending) == (k + 1) % 2, "flushed every 2 steps"
        step_log.flush()
    assert tensorboard_scalars(run, "step/train_loss") == ([11, 12, 13, 14, 15], [0, 1, 2, 3, 4])
    assert set(tensorboard_scalars(run, "step/lr")[1]) == {0.5}


def test_mlflow_file_store_reads_back_and_a_resumed_run_continues_it(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    (run).mkdir()
    (run / "history.csv").write_text("epoch,macro_auc\n1,0.75\n")
    config = {"model": "seresnet", "epochs": 3, "cache": {"size": 64}, "log": ["mlflow"]}
    with ExperimentLogs(("mlflow",), run) as logs:
        logs.log_config(config)
        logs.log_scalars(1, {"step/train_loss": 0.9})
        logs.log_scalars(2, {"step/train_loss": 0.7, "epoch/macro_auc": 0.75})
        logs.log_file(run / "history.csv")
    client = MlflowClient(tracking_uri=(run / "logs" / "mlruns").resolve().as_uri())
    run_id = (run / "logs" / "mlflow_run_id").read_text()
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert logged.data.params["model"] == "seresnet" and logged.data.params["cache.size"] == "64"
    assert logged.data.params["log"] == '["mlflow"]'
    history = client.get_metric_history(run_id, "step/train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.9), (2, 0.7)]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert artifacts == {"config.json", "history.csv"}

    # resumed: the same MLflow run, parameters not logged twice (they are write-once)
    with pytest.raises(RuntimeError, match="boom"), ExperimentLogs(("mlflow",), run) as logs:
        logs.log_config({**config, "device": "cuda:0"})
        logs.log_scalars(3, {"step/train_loss": 0.5})
        raise RuntimeError("boom")
    assert client.get_run(run_id).info.status == "FAILED", "an exception marks the run failed"
    assert [m.step for m in client.get_metric_history(run_id, "step/train_loss")] == [1, 2, 3]
    assert len(client.search_runs([logged.info.experiment_id])) == 1


def test_a_moved_run_logs_to_mlflow_where_it_is_now(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    original = tmp_path / "original"
    with ExperimentLogs(("mlflow",), original) as logs:
        logs.log_scalars(1, {"step/train_loss": 0.9})
    moved = tmp_path / "moved"
    shutil.copytree(original, moved)
    before = sorted(p.relative_to(original) for p in original.rglob("*"))
    (moved / "history.csv").write_text("epoch\n1\n")
    with ExperimentLogs(("mlflow",), moved, first_step=1) as logs:
        logs.log_config({"model": "seresnet"})
        logs.log_file(moved / "history.csv")
    assert sorted(p.relative_to(original) for p in original.rglob("*")) == before
    client = MlflowClient(tracking_uri=(moved / "logs" / "mlruns").resolve().as_uri())
    run_id = (moved / "logs" / "mlflow_run_id").read_text()
    assert {a.path for a in client.list_artifacts(run_id)} == {"config.json", "history.csv"}


def test_wandb_offline_run_folder_holds_the_run(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.csv").write_text("epoch,macro_auc\n1,0.75\n")
    with ExperimentLogs(("wandb",), run) as logs:
        logs.log_config({"model": "seresnet_small", "epochs": 3})
        logs.log_scalars(1, {"step/train_loss": 0.9})
        logs.log_scalars(1, {"epoch/macro_auc": 0.6875})
        logs.log_file(run / "history.csv")
    run_id = (run / "logs" / "wandb_run_id").read_text()
    folders = list((run / "logs" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(folders) == 1, "offline: a local run folder, nothing synced"
    expected = (b"step/train_loss", b"epoch/macro_auc", b"0.6875", b"seresnet_small")
    # wandb-core (a separate process) may still be writing the records when finish() returns
    # (about 1 run in 10 here); they are complete by the time it exits, so wait for them.
    deadline = time.time() + 20
    while True:
        records = (folders[0] / f"run-{run_id}.wandb").read_bytes()
        if all(text in records for text in expected) or time.time() > deadline:
            break
        time.sleep(0.1)
    for text in expected:
        assert text in records, text
    copy = folders[0] / "files" / "history.csv"
    assert not copy.is_symlink() and copy.read_text() == (run / "history.csv").read_text()


def test_a_training_run_logs_steps_epochs_and_files_and_no_secret(
    synth_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    cache = prepare(synth_root, tmp_path / "cache", size=64, progress=False)
    config = TrainConfig(
        cache=str(cache),
        out=str(tmp_path / "run"),
        model="seresnet_small",
        epochs=2,
        batch_size=16,
        threads=2,
        ema_decay=0.9,
        log=("tensorboard", "mlflow", "wandb"),
    )
    run = fit(config, show_progress=False)
    history = pd.read_csv(run / "history.csv")
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["log"] == ["tensorboard", "mlflow", "wandb"]
    steps, _ = tensorboard_scalars(run, "step/train_loss")
    total_steps = len(steps)
    assert steps == list(range(1, total_steps + 1))
    assert total_steps % 2 == 0 and total_steps >= 2, "every step of both epochs"
    measured = [c for c in history if c.startswith("auc_") and history[c].notna().all()]
    for column in ("macro_auc", "ema_macro_auc", measured[0], "images_per_s", "monitor"):
        steps, values = tensorboard_scalars(run, f"epoch/{column}")
        assert values == pytest.approx(history[column].tolist()), column
        assert steps == [total_steps // 2, total_steps]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run / "logs" / "mlruns").resolve().as_uri())
    run_id = (run / "logs" / "mlflow_run_id").read_text()
    macro = client.get_metric_history(run_id, "epoch/macro_auc")
    assert [m.value for m in macro] == pytest.approx(history["macro_auc"].tolist())
    assert {a.path for a in client.list_artifacts(run_id)} == {
        "config.json",
        "history.csv",
        "model",
    }
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/config.json"]
    events = EventAccumulator(str(run / "logs" / "tensorboard"))
    events.Reload()
    assert "config/text_summary" in events.Tags()["tensors"], "the config as TensorBoard text"
    assert client.get_run(run_id).data.params["ema_decay"] == "0.9"
    assert list((run / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    for path in (run / "logs").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
