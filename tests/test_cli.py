"""The command line as a user meets it: every subcommand answers --help, and every user error is one
line naming the file or flag, exit status 2, no traceback (unless --debug asks for it)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from chexvision_lib.cli.main import build_parser
from chexvision_lib.core.hashing import file_sha256
from chexvision_lib.data.prepare import prepare
from chexvision_lib.publishing.model_card import PUBLICATION_KEY

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = (
    "synth",
    "prepare",
    "train",
    "evaluate",
    "report",
    "compare",
    "labels",
    "score",
    "leaderboard",
    "predict",
    "card",
    "push",
    "kaggle",
    "study",
    "external",
    "cross-dataset",
    "demo",
    "app",
    "space",
)


@pytest.fixture(scope="module")
def tiny_cache(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare(synth_root, tmp_path_factory.mktemp("cli") / "cache", size=64, progress=False)


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    """What `push` checks before it talks to the Hub: a card, and weights matching config.json."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "README.md").write_text("card")
    sha256 = file_sha256(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({PUBLICATION_KEY: {"weights_sha256": sha256}}))
    return folder


def chexvision(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`chexvision ARGV` in a fresh process, as a shell would start it."""
    return subprocess.run(
        [sys.executable, "-m", "chexvision_lib.cli", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def assert_one_line_error(done: subprocess.CompletedProcess, command: str, *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    first = done.stderr.splitlines()[0]
    assert first.startswith(f"chexvision {command}: error: "), done.stderr
    for needle in needles:
        assert needle in first, first


def test_every_subcommand_is_registered():
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(commands.choices) == sorted(SUBCOMMANDS)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_answers_help(command):
    done = chexvision(command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: chexvision {command}")


def test_train_help_documents_every_config_field():
    text = " ".join(chexvision("train", "--help").stdout.split())  # argparse wraps lines
    assert "--batch-size BATCH_SIZE" in text
    assert "effective = batch_size x accum_steps x world size" in text
    assert "--hflip, --no-hflip" in text


def test_config_value_of_the_wrong_type_names_the_file_and_field(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"cache": "c", "out": "o", "epochs": "two"}))
    done = chexvision("train", "--config", str(config))
    assert_one_line_error(done, "train", str(config), "epochs", "'two'")


def test_config_that_is_not_json_names_the_file(tmp_path):
    config = tmp_path / "config.json"
    config.write_text("epochs: 2\n")
    assert_one_line_error(chexvision("train", "--config", str(config)), "train", str(config))


def test_missing_required_flag_is_one_line():
    assert_one_line_error(chexvision("train", "--out", "x"), "train", "--cache")


class Payload:
    def __reduce__(self):  # what a malicious checkpoint does: run code when unpickled
        return (os.system, ("touch /tmp/chexvision-pwned",))


def test_pretrained_pickle_is_refused_without_running_it(tmp_path, tiny_cache):
    weights = tmp_path / "evil.pth"
    weights.write_bytes(pickle.dumps({"weight": Payload()}))
    marker = Path("/tmp/chexvision-pwned")
    marker.unlink(missing_ok=True)
    done = chexvision(
        "train",
        "--cache",
        str(tiny_cache),
        "--out",
        str(tmp_path / "run"),
        "--model",
        "resnet18",
        "--pretrained",
        str(weights),
        "--epochs",
        "1",
    )
    assert_one_line_error(done, "train", str(weights), "refused to unpickle")
    assert not marker.exists()


def test_push_with_the_hub_offline_is_one_line(tmp_path, model_folder):
    done = chexvision(
        "push",
        str(model_folder),
        "--repo-id",
        "someone/x",
        env={"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_" + "x" * 34},
    )
    assert_one_line_error(done, "push")
    assert "x" * 34 not in done.stderr  # the token is never echoed


def test_debug_shows_the_traceback(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"cache": "c", "out": "o", "epochs": "two"}))
    done = chexvision("--debug", "train", "--config", str(config))
    assert done.returncode != 0
    assert "Traceback" in done.stderr
    with_env = chexvision("train", "--config", str(config), env={"CHEXVISION_DEBUG": "1"})
    assert "Traceback" in with_env.stderr


def test_a_bug_is_not_dressed_as_a_user_error(monkeypatch, capsys):
    """Anything but a user error keeps its traceback: hiding it would hide bugs."""
    from chexvision_lib.cli import main as cli

    parser = build_parser()
    args = parser.parse_args(["demo"])

    def broken(_args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(args, "func", broken, raising=False)
    monkeypatch.setattr(parser, "parse_args", lambda argv: args)
    with pytest.raises(ZeroDivisionError):
        cli.main(["demo"])
