"""`chexvision predict` over real radiographs with unreadable files among them: every readable file
is scored, the unreadable ones are rows with the reason in `error`, and the exit status says
whether any were (2, naming all of them) unless --skip-bad accepts them (0, counted by kind).
The CSV is written a batch at a time, so a killed run leaves complete rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, realdata

from chexvision_lib.cli.main import main as cli_main
from chexvision_lib.core.labels import OUTPUTS
from chexvision_lib.core.predictions import prob_column
from chexvision_lib.data.image_io import ImageDecodeError
from chexvision_lib.models.loading import load_model
from chexvision_lib.models.predict import predict_images, prediction_columns
from chexvision_lib.models.registry import build_model

PROBS = [prob_column(name) for name in OUTPUTS]
BAD = ("cut.jpeg", "empty.png", "notes.png")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_model("seresnet_small", image_size=64)
    model.thresholds = [0.5] * len(OUTPUTS)
    folder = tmp_path_factory.mktemp("predict-files") / "model"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str]]:
    """(all files in order, the readable ones): 12 NIH PNGs (both RGBA ones among them), 10
    pediatric JPEGs, and three unreadable files spread between them."""
    nih = sorted(realdata("nih", "images").glob("*.png"))
    rgba = [p for p in nih if _mode(p) == "RGBA"]
    pngs = rgba + [p for p in nih if p not in rgba][: 12 - len(rgba)]
    jpegs = sorted(realdata("pediatric", "PNEUMONIA").glob("*.jpeg"))[:5]
    jpegs += sorted(realdata("pediatric", "NORMAL").glob("*.jpeg"))[:5]
    folder = tmp_path_factory.mktemp("bad-files")
    cut, empty, notes = (folder / name for name in BAD)
    cut.write_bytes(jpegs[0].read_bytes()[:-12])  # a JPEG short of its last 12 bytes
    empty.write_bytes(b"")
    notes.write_text("not an image, whatever the name says\n")
    readable = [str(p) for p in pngs + jpegs]
    everything = readable[:5] + [str(cut)] + readable[5:13] + [str(empty)] + readable[13:]
    everything.insert(len(everything) - 3, str(notes))
    assert len(readable) == 22
    return everything, readable


def _mode(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as image:
        return image.mode


def _predict(*args: str) -> int:
    return cli_main(["predict", *args, "--device", "cpu", "--workers", "2"])


def _check_rows(frame: pd.DataFrame, model_dir: Path, everything: list, readable: list) -> None:
    assert list(frame["image"]) == everything
    errors = frame["error"].fillna("")
    bad = frame[errors != ""]
    assert [Path(p).name for p in bad["image"]] == list(BAD)
    for path, error in zip(bad["image"], bad["error"], strict=True):
        assert error.startswith(f"{path}: not a readable image")
    assert bad[PROBS].isna().all().all() and bad["abnormal"].isna().all()
    good = frame[errors == ""]
    expected = predict_images(load_model(model_dir), readable, batch_size=5)
    assert list(good["image"]) == readable
    assert np.allclose(good[PROBS].to_numpy(float), expected[PROBS].to_numpy(), atol=1e-6)
    assert list(good["abnormal"].astype(bool)) == list(expected["abnormal"].astype(bool))


def test_without_skip_bad_every_readable_file_is_scored_and_all_bad_ones_named(
    model_dir: Path, files, tmp_path: Path, capsys
):
    everything, readable = files
    out = tmp_path / "scores.csv"
    assert _predict(str(model_dir), *everything, "--out", str(out), "--batch-size", "4") == 2
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith("chexvision predict: error: 3 of 25 files could not be read"), err
    for name in BAD:
        assert name in first
    assert "(1 truncated, 1 empty, 1 not an image)" in first
    assert f"{out} holds 22 scored and 3 error rows" in first
    frame = pd.read_csv(out)
    assert list(frame.columns) == prediction_columns()
    _check_rows(frame, model_dir, everything, readable)


def test_skip_bad_exits_0_and_counts_by_kind(model_dir: Path, files, tmp_path: Path, capsys):
    everything, readable = files
    out = tmp_path / "scores.csv"
    assert _predict(str(model_dir), *everything, "--out", str(out), "--skip-bad") == 0
    captured = capsys.readouterr()
    assert "wrote 25 rows" in captured.out
    assert (
        "skipped 3 of 25 files could not be read (1 truncated, 1 empty, 1 not an image)"
        in captured.err
    )
    _check_rows(pd.read_csv(out), model_dir, everything, readable)

    assert _predict(str(model_dir), *everything, "--json", "--skip-bad") == 0
    records = json.loads(capsys.readouterr().out)  # the count goes to stderr: stdout is JSON
    frame = pd.DataFrame(records)
    assert all("error" in record for record in records)
    assert sum(record["error"] == "" for record in records) == 22
    _check_rows(frame, model_dir, everything, readable)

    assert _predict(str(model_dir), *everything[:8], "--json") == 2  # the cut JPEG is 6th
    captured = capsys.readouterr()
    record = json.loads(captured.out)[5]
    assert record["error"].startswith(f"{everything[5]}: not a readable image (image file is")
    assert record["abnormal"] is None and record[PROBS[0]] is None
    assert "1 of 8 files could not be read (1 truncated)" in captured.err


def test_library_raises_naming_every_bad_file_or_keeps_their_rows(model_dir: Path, files):
    everything, readable = files
    model = load_model(model_dir)
    with pytest.raises(ImageDecodeError, match="3 of 25 files could not be read") as caught:
        predict_images(model, everything, batch_size=8)
    assert all(name in str(caught.value) for name in BAD)
    frame = predict_images(model, everything, batch_size=8, skip_bad=True)
    _check_rows(frame, model_dir, everything, readable)
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1, got 0"):
        predict_images(model, readable, batch_size=0)
    with pytest.raises(ValueError, match="workers must be a whole number >= 1, got 0"):
        predict_images(model, readable, workers=0)


def test_a_killed_run_leaves_complete_rows(model_dir: Path, tmp_path: Path):
    nih = sorted(str(p) for p in realdata("nih", "images").glob("*.png"))
    paths = nih * 10  # ~1000 files: far more than are scored before the kill
    out = tmp_path / "scores.csv"
    command = [sys.executable, "-m", "chexvision_lib.cli", "predict", str(model_dir), *paths]
    command += ["--out", str(out), "--batch-size", "8", "--workers", "1", "--device", "cpu"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 1 + 8:  # header + one batch
                break
            time.sleep(0.01)
        assert process.poll() is None, process.stderr.read().decode()
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    text = out.read_text()
    assert text.endswith("\n")
    frame = pd.read_csv(out)
    assert list(frame.columns) == prediction_columns()
    assert 8 <= len(frame) < len(paths)
    assert list(frame["image"]) == paths[: len(frame)]
    assert frame[PROBS].notna().all().all() and frame["error"].isna().all()
    assert ((frame[PROBS] > 0) & (frame[PROBS] < 1)).all().all()
    n_fields = len(prediction_columns())
    assert all(line.count(",") == n_fields - 1 for line in text.splitlines())


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--batch-size", "0"], ["argument --batch-size", "whole number >= 1", "'0'"]),
        (["--batch-size", "many"], ["argument --batch-size", "'many'"]),
        (["--workers", "0"], ["argument --workers", "whole number >= 1", "'0'"]),
        (["--workers", "-3"], ["argument --workers", "'-3'"]),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag(model_dir: Path, files, flags, needles, capsys):
    with pytest.raises(SystemExit) as caught:
        cli_main(["predict", str(model_dir), files[1][0], *flags])
    assert caught.value.code == 2
    first, *rest = capsys.readouterr().err.splitlines()
    assert first.startswith("chexvision predict: error: "), first
    assert all(needle in first for needle in needles), first
    assert not any(line.startswith("usage:") for line in rest)


def test_run_folder_without_model_is_named(files, tmp_path: Path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"epochs": 2}))
    (run / "history.csv").write_text("epoch\n")
    assert cli_main(["predict", str(run), files[1][0]]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(
        f"chexvision predict: error: {run} has no model/ folder (config.json + model.safetensors)"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["predict", str(empty), files[1][0]]) == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(f"chexvision predict: error: {empty} has no model/ folder")
