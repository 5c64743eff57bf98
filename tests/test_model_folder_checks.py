"""A model folder is checked when it is loaded: config.json against the package and the weights,
and each refusal names the folder, the file and the field, through the API and the CLI."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from chexvision_lib.cli.main import main
from chexvision_lib.core.labels import ABNORMAL, OUTPUTS
from chexvision_lib.models.loading import load_model
from chexvision_lib.models.registry import (
    ChestClassifier,
    ModelFolderError,
    build_model,
    check_model_config,
)
from chexvision_lib.training.checkpoints import save_model_folder

SIZE = 64


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder as training writes it (extra keys, thresholds chosen)."""
    model = build_model("seresnet_small", image_size=SIZE)
    model.thresholds = [None] * 3 + [0.25] * (len(OUTPUTS) - 3)
    folder = tmp_path_factory.mktemp("saved") / "model"
    save_model_folder(model, folder, {"best_epoch": 2, "threshold_method": "f1", "training": {}})
    return folder


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "x.png"
    Image.fromarray(np.arange(SIZE * SIZE, dtype=np.uint8).reshape(SIZE, SIZE)).save(path)
    return path


def edited(saved: Path, tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the saved folder whose config.json `edit` changed."""
    folder = Path(shutil.copytree(saved, tmp_path / "model"))
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def refused(folder: Path, image: Path, capsys: pytest.CaptureFixture, *needles: str) -> str:
    """Assert load_model and `chexvision predict` both refuse `folder`, naming `needles`."""
    with pytest.raises((ValueError, FileNotFoundError)) as caught:
        load_model(folder)
    message = str(caught.value)
    for needle in needles:
        assert needle in message, message
    capsys.readouterr()
    assert main(["predict", str(folder), str(image)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chexvision predict: error: ")
    for needle in needles:
        assert needle in err, err
    return message


def test_a_valid_folder_loads_and_predicts(
    saved: Path, image: Path, capsys: pytest.CaptureFixture
) -> None:
    model = load_model(saved)
    assert model.thresholds[:3] == [None] * 3 and model.thresholds[3] == 0.25
    capsys.readouterr()
    assert main(["predict", str(saved), str(image), "--json", "--workers", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and 0.0 <= rows[0][f"prob_{ABNORMAL}"] <= 1.0


def test_swapped_outputs_are_refused(
    saved: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    def swap(config: dict) -> None:
        outputs = config["preprocessing"]["outputs"]
        outputs[1], outputs[2] = outputs[2], outputs[1]

    message = refused(
        edited(saved, tmp_path, swap),
        image,
        capsys,
        "config.json",
        "preprocessing.outputs",
        "another order",
        "'Effusion'",
        "'Cardiomegaly'",
    )
    assert str(tmp_path / "model") in message
    assert json.dumps(list(OUTPUTS)) in message  # what was expected


def test_a_missing_output_is_refused(
    saved: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = edited(saved, tmp_path, lambda c: c["preprocessing"]["outputs"].remove("Hernia"))
    refused(folder, image, capsys, "config.json", "preprocessing.outputs", "lacks Hernia")


def test_an_unknown_output_name_is_refused(tmp_path: Path, saved: Path) -> None:
    def rename(config: dict) -> None:
        config["preprocessing"]["outputs"][0] = "Atelectasia"

    folder = edited(saved, tmp_path, rename)
    with pytest.raises(ModelFolderError, match="lacks Atelectasis; has unknown 'Atelectasia'"):
        load_model(folder)


def test_an_unknown_arch_is_refused(
    saved: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = edited(saved, tmp_path, lambda c: c.update(arch="seresnet_tiny"))
    refused(folder, image, capsys, "config.json", 'arch is "seresnet_tiny"', "seresnet_small")


def test_image_size_below_the_minimum_is_refused(
    saved: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    def shrink(config: dict) -> None:
        config["image_size"] = config["preprocessing"]["image_size"] = 16

    folder = edited(saved, tmp_path, shrink)
    refused(folder, image, capsys, "config.json", "image_size is 16", ">= 32")


def test_preprocessing_image_size_must_equal_the_models(tmp_path: Path, saved: Path) -> None:
    folder = edited(saved, tmp_path, lambda c: c["preprocessing"].update(image_size=128))
    with pytest.raises(ModelFolderError, match="preprocessing.image_size is 128; expected 64"):
        load_model(folder)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("mean", [0.5, 0.5, 0.5], "preprocessing.mean is [0.5, 0.5, 0.5]; expected [0.5]"),
        ("std", 0.25, "preprocessing.std is 0.25; expected [0.25]"),
        ("mean", [0.485], "preprocessing.mean is [0.485]; expected [0.5] (the scratch"),
    ],
)
def test_normalisation_must_be_the_architectures(
    tmp_path: Path, saved: Path, field: str, value: object, needle: str
) -> None:
    folder = edited(saved, tmp_path, lambda c: c["preprocessing"].update({field: value}))
    with pytest.raises(ModelFolderError) as caught:
        load_model(folder)
    assert needle in str(caught.value) and "config.json" in str(caught.value)


def test_a_threshold_outside_zero_one_is_refused(
    saved: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = edited(saved, tmp_path, lambda c: c["thresholds"].__setitem__(4, 1.7))
    refused(folder, image, capsys, "config.json", "thresholds[4] (Mass) is 1.7", "[0, 1]")


def test_thresholds_of_the_wrong_length_are_refused(tmp_path: Path, saved: Path) -> None:
    folder = edited(saved, tmp_path, lambda c: c.update(thresholds=[0.5] * 14))
    with pytest.raises(ModelFolderError, match=r"thresholds is .*; expected null or a list of 15"):
        load_model(folder)


def test_a_head_of_another_width_is_refused(
    saved: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = Path(shutil.copytree(saved, tmp_path / "model"))
    state = safetensors.torch.load_file(str(folder / "model.safetensors"))
    state["findings_head.weight"] = torch.zeros(15, state["findings_head.weight"].shape[1])
    state["findings_head.bias"] = torch.zeros(15)
    safetensors.torch.save_file(state, str(folder / "model.safetensors"))
    refused(
        folder,
        image,
        capsys,
        "model.safetensors",
        "config.json",
        "2 tensor(s) of another shape [findings_head.bias (15,) in the file, (14,) expected; "
        "findings_head.weight (15, 128) in the file, (14, 128) expected]",
    )


def test_weights_of_another_architecture_are_refused(
    saved: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = Path(shutil.copytree(saved, tmp_path / "model"))
    other = build_model("resnet18", image_size=SIZE, head="binary")
    safetensors.torch.save_model(other, str(folder / "model.safetensors"))
    ours = set(ChestClassifier.from_pretrained(saved).state_dict())
    theirs = set(other.state_dict())
    refused(
        folder,
        image,
        capsys,
        "model.safetensors does not fit the model its config.json describes",
        "arch 'seresnet_small'",
        f"{len(ours - theirs)} missing [{min(ours - theirs)}; ",
        f"{len(theirs - ours)} unexpected [{min(theirs - ours)}; ",
        "abnormal_head.weight (1, 512) in the file, (1, 128) expected",
    )


def test_a_binary_head_saves_and_loads_with_its_one_output(tmp_path: Path) -> None:
    model = build_model("seresnet_small", image_size=SIZE, head="binary")
    model.save_pretrained(tmp_path / "binary")
    assert json.loads((tmp_path / "binary" / "config.json").read_text())["preprocessing"][
        "outputs"
    ] == [ABNORMAL]
    assert load_model(tmp_path / "binary").head == "binary"
    # The dual head's outputs in a binary folder are refused: its one column is "Abnormal".
    config = json.loads((tmp_path / "binary" / "config.json").read_text())
    config["preprocessing"]["outputs"] = list(OUTPUTS)
    with pytest.raises(ModelFolderError, match=r"has unknown 'Atelectasis'.*binary head"):
        check_model_config(config, str(tmp_path / "binary"))


def test_a_config_that_is_not_json_is_refused(
    saved: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = Path(shutil.copytree(saved, tmp_path / "model"))
    (folder / "config.json").write_text('{"arch": "seresnet_small",')
    refused(folder, image, capsys, f"{folder}/config.json is not valid JSON")
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelFolderError, match="config.json holds a JSON list"):
        ChestClassifier.from_pretrained(folder)


def test_a_missing_field_is_named(tmp_path: Path, saved: Path) -> None:
    folder = edited(saved, tmp_path, lambda c: c.pop("preprocessing"))
    with pytest.raises(ModelFolderError, match="config.json: preprocessing is missing; expected"):
        ChestClassifier.from_pretrained(folder)


def test_a_run_folder_without_model_is_named(
    image: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": "seresnet_small", "cache": "c"}))
    with pytest.raises(FileNotFoundError) as caught:
        load_model(run)
    message = str(caught.value)
    assert message.startswith(f"{run} has no model/ folder (config.json + model.safetensors)")
    assert "is it a run folder that finished an epoch?" in message
    assert "arch" not in message  # not "missing 1 required positional argument: 'arch'"
    capsys.readouterr()
    assert main(["predict", str(run), str(image)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"chexvision predict: error: {run}") and "run folder" in err
    assert "model/" in err and "'arch'" not in err
    # An empty folder gets the same answer.
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no model/ folder"):
        load_model(tmp_path / "empty")


def test_a_model_folder_without_weights_is_named(tmp_path: Path, saved: Path) -> None:
    folder = Path(shutil.copytree(saved, tmp_path / "model"))
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model: no model.safetensors"):
        load_model(folder)
    with pytest.raises(FileNotFoundError, match="model: no model.safetensors"):
        load_model(tmp_path)  # through the run folder's model/


def test_a_hub_repo_is_checked_too(
    saved: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.hub_mixin

    from chexvision_lib.models import registry

    served = {"folder": saved}
    downloads: list[tuple[str, str, str | None]] = []

    def fake_download(*, repo_id: str, filename: str, revision: str | None, **_: object) -> str:
        downloads.append((repo_id, filename, revision))
        return str(served["folder"] / filename)

    monkeypatch.setattr(registry, "hf_hub_download", fake_download)
    monkeypatch.setattr(huggingface_hub.hub_mixin, "hf_hub_download", fake_download)
    model = load_model("someone/chexvision-x", revision="abc123")
    assert model.image_size == SIZE
    assert ("someone/chexvision-x", "config.json", "abc123") in downloads
    assert ("someone/chexvision-x", "model.safetensors", "abc123") in downloads

    served["folder"] = edited(saved, tmp_path, lambda c: c["preprocessing"]["outputs"].reverse())
    with pytest.raises(ModelFolderError) as caught:
        load_model("someone/chexvision-x", revision="abc123")
    assert str(caught.value).startswith(
        "someone/chexvision-x@abc123/config.json: preprocessing.outputs lists the outputs in "
        "another order (position 0 is 'Abnormal'"
    )
