"""The bad-input catalogue: each case builds one bad input (metadata, images, flags, configs,
checkpoints, model folders, prediction files, uploads to the Hub or Kaggle) and asserts what a user
sees: exit status 2, one line that names the file, row or flag, no traceback, nothing lost.

Add a case when a new way to go wrong is found: the catalogue grows with the project.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_ROWS, write_tiny_nih
from PIL import Image

from chexvision_lib.cli.main import main as cli_main
from chexvision_lib.data.prepare import prepare
from chexvision_lib.training.config import TrainConfig
from chexvision_lib.training.loop import fit


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path, dict], list[str]]  # (scratch folder, shared fixtures) -> argv
    message: str  # a fragment of the one-line error (after "chexvision CMD: error: ")


def nih(tmp: Path, edit: Callable[[Path], None] | None = None, rows=TINY_ROWS) -> Path:
    root = write_tiny_nih(tmp / "nih", list(rows), test_patients={5, 6})
    if edit is not None:
        edit(root)
    return root


def move_to_test(image: str) -> Callable[[Path], None]:
    """Move one image of a train_val patient to test_list.txt: that patient is in two splits."""

    def edit(root: Path) -> None:
        train = (root / "train_val_list.txt").read_text().split()
        (root / "train_val_list.txt").write_text("\n".join(n for n in train if n != image))
        (root / "test_list.txt").write_text((root / "test_list.txt").read_text() + "\n" + image)

    return edit


def csv_of(root: Path) -> Path:
    return next(root.glob("Data_Entry_2017*.csv"))


def edit_csv(change: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        path = csv_of(root)
        path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")

    return edit


def prepare_args(root: Path, tmp: Path, *extra: str) -> list[str]:
    return ["prepare", str(root), "--out", str(tmp / "cache"), "--size", "32", *extra]


def write_json(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def train_args(fx: dict, tmp: Path, *extra: str) -> list[str]:
    base = ["train", "--cache", str(fx["cache"]), "--out", str(tmp / "run"), "--epochs", "1"]
    return [*base, "--model", "seresnet_small", "--batch-size", "8", *extra]


def copy_run(fx: dict, tmp: Path) -> Path:
    return Path(shutil.copytree(fx["run"], tmp / "run"))


def corrupt_png(root: Path) -> None:
    (root / "images_001" / "images" / TINY_ROWS[0][0]).write_bytes(b"\x89PNG\r\n\x1a\nbroken")


CASES = [
    # --- metadata ---------------------------------------------------------------------------
    Case("empty-csv", lambda t, fx: prepare_args(nih(t, lambda r: csv_of(r).write_text("")), t),
         "the file is empty"),
    Case("csv-not-utf8", lambda t, fx: prepare_args(
        nih(t, lambda r: csv_of(r).write_bytes(csv_of(r).read_bytes().replace(b"M,", b"\xe9,", 1))),
        t), "not UTF-8 text (byte 0xe9"),
    Case("csv-missing-column", lambda t, fx: prepare_args(
        nih(t, edit_csv(lambda ls: [ls[0].replace("Patient ID", "Patient"), *ls[1:]])), t),
        "missing required column(s) ['Patient ID']"),
    Case("csv-duplicate-row", lambda t, fx: prepare_args(
        nih(t, edit_csv(lambda ls: [*ls, ls[1]])), t), "appears twice"),
    Case("csv-duplicate-by-trailing-space", lambda t, fx: prepare_args(
        nih(t, edit_csv(lambda ls: [*ls, ls[1].replace(".png,", ".png ,", 1)])), t),
        "appears twice (also row 2"),
    Case("csv-unknown-finding", lambda t, fx: prepare_args(
        nih(t, edit_csv(lambda ls: [ls[0], ls[1].replace("Cardiomegaly", "Cardiomegally"), *ls[2:]])),
        t), "row 2"),
    Case("csv-patient-not-integer", lambda t, fx: prepare_args(
        nih(t, edit_csv(lambda ls: [ls[0], ls[1].replace(",0,1,", ",0,x1,"), *ls[2:]])), t),
        "Patient ID 'x1' is not an integer"),
    Case("split-list-not-utf8", lambda t, fx: prepare_args(
        nih(t, lambda r: (r / "test_list.txt").write_bytes(b"\xe9" + (r / "test_list.txt").read_bytes())),
        t), "test_list.txt: not UTF-8 text"),
    Case("split-list-duplicate", lambda t, fx: prepare_args(
        nih(t, lambda r: (r / "test_list.txt").write_text((r / "test_list.txt").read_text() * 2)),
        t), "is listed more than once"),
    Case("patient-in-two-splits", lambda t, fx: prepare_args(nih(t, move_to_test("00000001_001.png")), t),
         "patient"),
    Case("missing-image", lambda t, fx: prepare_args(
        nih(t, lambda r: (r / "images_001" / "images" / TINY_ROWS[2][0]).unlink()), t),
        "were not found below"),
    Case("no-data-entry-csv", lambda t, fx: prepare_args(
        nih(t, lambda r: csv_of(r).unlink()), t, "--kind", "nih"), "Data_Entry_2017*.csv"),
    Case("two-data-entry-csvs", lambda t, fx: prepare_args(
        nih(t, lambda r: shutil.copy(csv_of(r), r / "Data_Entry_2017_v2020.csv")), t),
        "Data_Entry_2017"),
    Case("root-missing", lambda t, fx: prepare_args(t / "no-such-folder", t), "no-such-folder"),
    Case("corrupt-image", lambda t, fx: prepare_args(nih(t, corrupt_png), t), TINY_ROWS[0][0]),
    Case("prepare-negative-workers", lambda t, fx: prepare_args(nih(t), t, "--workers", "-1"),
         "--workers"),
    Case("prepare-size-too-small", lambda t, fx: prepare_args(nih(t), t, "--size", "4"), "size"),
    Case("prepare-over-another-cache", lambda t, fx: [
        "prepare", str(fx["synth"]), "--out", str(fx["cache"]), "--size", "48"],
        "already holds a cache with other settings"),
    # --- training config and flags ------------------------------------------------------------
    Case("config-not-json", lambda t, fx: [
        "train", "--config", str(write_csv(t / "c.json", "epochs: 2"))], "c.json: not valid JSON"),
    Case("config-wrong-type", lambda t, fx: [
        "train", "--config", str(write_json(t / "c.json", {"cache": "c", "out": "o", "epochs": "two"}))],
        "epochs: expected int, got 'two'"),
    Case("config-string-for-float", lambda t, fx: [
        "train", "--config", str(write_json(t / "c.json", {"cache": "c", "out": "o", "lr": "0.1"}))],
        "lr: expected a number, got '0.1'"),
    Case("config-a-list", lambda t, fx: ["train", "--config", str(write_json(t / "c.json", [1]))],
         "c.json: expected a JSON object"),
    Case("config-unknown-key", lambda t, fx: [
        "train", "--config", str(write_json(t / "c.json", {"cache": "c", "out": "o", "bacth": 1}))],
        "unknown TrainConfig parameter(s) ['bacth']"),
    Case("config-missing", lambda t, fx: ["train", "--config", str(t / "nope.json")], "nope.json"),
    Case("train-no-cache-flag", lambda t, fx: ["train", "--out", str(t / "r")], "--cache is required"),
    Case("train-unknown-model", lambda t, fx: [*train_args(fx, t), "--model", "resnet9000"],
         "resnet9000"),
    Case("train-batch-size-zero", lambda t, fx: [*train_args(fx, t), "--batch-size", "0"],
         "batch_size must be at least 1"),
    Case("train-negative-lr", lambda t, fx: [*train_args(fx, t), "--lr", "-1"],
         "lr must be positive"),
    Case("train-freeze-all-epochs", lambda t, fx: [*train_args(fx, t), "--freeze-epochs", "1"],
         "freeze_epochs must be in [0, epochs)"),
    Case("train-pretrained-and-init", lambda t, fx: [
        *train_args(fx, t), "--pretrained", "imagenet", "--init-from", str(fx["run"])],
        "either pretrained or init_from"),
    Case("train-not-a-cache", lambda t, fx: [
        "train", "--cache", str(t), "--out", str(t / "r"), "--epochs", "1"], "not a complete cache"),
    Case("train-image-larger-than-cache", lambda t, fx: [*train_args(fx, t), "--image-size", "128"],
         "exceeds the cache's 64 px"),
    Case("train-unknown-recipe", lambda t, fx: [*train_args(fx, t), "--recipe", "chexnet2"],
         "unknown recipe 'chexnet2'"),
    Case("train-pretrained-missing-file", lambda t, fx: [
        *train_args(fx, t), "--model", "resnet18", "--pretrained", str(t / "w.pth")], "w.pth"),
    Case("train-over-an-existing-run", lambda t, fx: [
        *train_args(fx, t)[:4], str(fx["run"]), "--epochs", "1"], "already holds a run"),
    Case("batch-larger-than-split", lambda t, fx: [*train_args(fx, t), "--batch-size", "100000"],
         "exceeds the"),
    # --- checkpoints and resume ---------------------------------------------------------------
    Case("resume-nothing", lambda t, fx: ["train", "--resume", str(t / "nope")], "no checkpoint at"),
    Case("resume-with-config", lambda t, fx: [
        "train", "--resume", str(copy_run(fx, t)), "--config", "x.json"], "drop --config"),
    Case("resume-with-other-flags", lambda t, fx: [
        "train", "--resume", str(copy_run(fx, t)), "--lr", "0.5"], "drop ['--lr']"),
    Case("resume-truncated-checkpoint", lambda t, fx: ["train", "--resume", str(truncate_checkpoint(
        copy_run(fx, t)))], "not a readable CheXVision checkpoint"),
    Case("resume-old-layout", lambda t, fx: ["train", "--resume", str(old_checkpoint(t))],
         "a checkpoint of format 1"),
    Case("resume-pickled-object", lambda t, fx: ["train", "--resume", str(pickled_checkpoint(t))],
         "not a readable CheXVision checkpoint"),
    # --- evaluation, predictions, label sets ---------------------------------------------------
    Case("evaluate-not-a-run", lambda t, fx: ["evaluate", str(t)], "is not a run folder"),
    Case("evaluate-unknown-split-cache", lambda t, fx: [
        "evaluate", str(fx["run"]), "--cache", str(t)], "cache"),
    Case("compare-not-predictions", lambda t, fx: [
        "compare", str(write_csv(t / "a.csv", "x,y\n1,2\n")), str(fx["predictions"])],
        "not a CheXVision predictions file"),
    Case("compare-empty-file", lambda t, fx: [
        "compare", str(write_csv(t / "a.csv", "")), str(fx["predictions"])], "the file is empty"),
    Case("labels-binary-not-utf8", lambda t, fx: [
        "labels", str(fx["predictions"]), "--binary", str(write_bytes(t / "l.txt", b"\xe9 1\n"))],
        "not UTF-8"),
    Case("labels-binary-bad-line", lambda t, fx: [
        "labels", str(fx["predictions"]), "--binary", str(write_csv(t / "l.txt", "a.png maybe\n"))],
        "l.txt"),
    Case("report-unevaluated-split", lambda t, fx: ["report", str(copy_run(fx, t)), "--split", "val"],
         "metrics.json not found"),
    # --- model folders and publishing -----------------------------------------------------------
    Case("predict-text-as-image", lambda t, fx: [
        "predict", str(fx["run"]), str(write_csv(t / "x.png", "not an image"))], "x.png"),
    Case("predict-model-missing", lambda t, fx: ["predict", str(t / "nope"), "a.png"], "nope"),
    Case("card-unevaluated", lambda t, fx: [
        "card", str(copy_run(fx, t)), "--out", str(t / "m"), "--split", "val", "--no-figures"],
        "metrics.json"),
    Case("push-not-a-model-folder", lambda t, fx: ["push", str(t), "--repo-id", "a/b", "--dry-run"],
         "is not a model folder"),
    Case("push-tampered-weights", lambda t, fx: [
        "push", str(tampered_model_folder(fx, t)), "--repo-id", "a/b", "--dry-run"],
        "is not the file the card was built for"),
    Case("push-commit-as-branch", lambda t, fx: [
        "push", str(fx["model_folder"]), "--repo-id", "a/b", "--revision", "a" * 40, "--dry-run"],
        "a commit hash cannot be committed to"),
    Case("space-branch-as-revision", lambda t, fx: [
        "space", str(fx["model_folder"]), str(t / "space"), "--repo-id", "a/b", "--revision", "main"],
        "main"),
    # --- Kaggle -----------------------------------------------------------------------------------
    Case("kaggle-secret-parameter", lambda t, fx: [
        "kaggle", "push", "--dry-run", "-p", "kaggle_key=abc", "--out", str(t / "k")],
        "refusing parameter 'kaggle_key'"),
    Case("kaggle-malformed-parameter", lambda t, fx: [
        "kaggle", "push", "--dry-run", "-p", "epochs", "--out", str(t / "k")], "expected -p NAME=VALUE"),
    Case("kaggle-unknown-notebook", lambda t, fx: [
        "kaggle", "push", "--dry-run", "--notebook", "07_nope", "--out", str(t / "k")],
        "unknown notebook '07_nope'"),
    Case("kaggle-validate-not-a-build", lambda t, fx: ["kaggle", "push", "--validate", str(t)],
         "cannot read"),
]  # fmt: skip


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def truncate_checkpoint(run: Path) -> Path:
    checkpoint = run / "checkpoints" / "last.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    return run


def old_checkpoint(tmp: Path) -> Path:
    run = tmp / "old"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": {}, "state": {"epoch": 1}, "config": {}}, run / "checkpoints" / "last.pt")
    return run


class Payload:
    def __reduce__(self):  # runs `touch` when unpickled: it must never be
        return (print, ("PWNED",))


def pickled_checkpoint(tmp: Path) -> Path:
    import pickle

    run = tmp / "evil"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(pickle.dumps({"state": Payload()}))
    return run


def tampered_model_folder(fx: dict, tmp: Path) -> Path:
    folder = Path(shutil.copytree(fx["model_folder"], tmp / "model"))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    return folder


@pytest.fixture(scope="module")
def fx(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One small synthetic cache, a trained and evaluated run, its model folder."""
    from chexvision_lib.evaluation.evaluate import evaluate_run
    from chexvision_lib.publishing.model_folder import build_model_folder

    root = tmp_path_factory.mktemp("catalogue")
    cache = prepare(synth_root, root / "cache", size=64, progress=False)
    config = TrainConfig(
        cache=str(cache), out=str(root / "run"), model="seresnet_small", epochs=1,
        batch_size=16, threads=2,
    )  # fmt: skip
    run = fit(config, show_progress=False)
    evaluate_run(run, "test", n_resamples=20, show_progress=False)
    model_folder = build_model_folder(run, root / "model", figures=False)
    return {
        "synth": synth_root,
        "cache": cache,
        "run": run,
        "predictions": run / "test" / "predictions.csv",
        "model_folder": model_folder,
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line(case: Case, fx: dict, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = case.build(tmp_path, fx)
    try:
        status = cli_main(argv)
    except SystemExit as stop:  # argparse refuses a bad flag value itself, also with status 2
        status = stop.code
    captured = capsys.readouterr()
    assert status == 2, captured.err
    # Progress bars may come first (stderr); the error is one line, the hint another.
    errors = [line for line in captured.err.splitlines() if line.startswith("chexvision ")]
    assert len(errors) == 1 and errors[0].startswith(f"chexvision {argv[0]}"), captured.err
    assert case.message in captured.err, captured.err
    assert "Traceback" not in captured.err
    assert "PWNED" not in captured.out + captured.err


def test_the_catalogue_has_at_least_fifty_cases():
    assert len(CASES) >= 50
    assert len({c.name for c in CASES}) == len(CASES)


def test_skip_bad_keeps_every_good_image_and_says_what_it_skipped(tmp_path, capsys):
    root = nih(tmp_path, corrupt_png)
    (root / "images_001" / "images" / TINY_ROWS[2][0]).unlink()
    assert cli_main(prepare_args(root, tmp_path, "--skip-bad")) == 0
    out = capsys.readouterr().out
    assert "skipped 1 missing images" in out
    assert "failed to decode 1: not a readable image" in out
    info = json.loads((tmp_path / "cache" / "cache.json").read_text())
    assert (info["n"], info["n_failed"]) == (len(TINY_ROWS) - 1, 1)


def test_a_failed_prepare_can_be_rerun_with_skip_bad(tmp_path, capsys):
    root = nih(tmp_path, corrupt_png)
    assert cli_main(prepare_args(root, tmp_path, "--workers", "1")) == 2
    assert (tmp_path / "cache" / "prepare.json").exists()  # the interrupted prepare stays
    assert cli_main(prepare_args(root, tmp_path, "--skip-bad", "--workers", "1")) == 0
    good = Image.open(root / "images_001" / "images" / TINY_ROWS[1][0])
    images = np.fromfile(tmp_path / "cache" / "images.u8", np.uint8).reshape(-1, 32, 32)
    assert images[1].mean() == pytest.approx(np.asarray(good.resize((32, 32))).mean(), abs=1)
    assert "failed to decode 1" in capsys.readouterr().out
