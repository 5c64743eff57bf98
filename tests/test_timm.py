"""timm backbones as `timm/<name>`: building, one training step, the model folder round trip,
Grad-CAM on CNN / ViT / Swin, pretrained weights from local files (a safetensors file and a fake
Hugging Face cache), and the errors. CPU, tiny inputs, no network.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch

from chexvision_lib.core.labels import OUTPUTS
from chexvision_lib.explain.gradcam import grad_cam
from chexvision_lib.models import timm_backbones
from chexvision_lib.models.loading import load_model
from chexvision_lib.models.registry import (
    ChestClassifier,
    ModelFolderError,
    build_model,
    check_image_size,
    check_model_name,
    find_pretrained_weights,
    is_model_name,
    min_image_size,
)

torch.set_num_threads(2)

CNN = "timm/resnet10t"  # 5M parameters, timm's smallest ResNet
VIT = "timm/vit_tiny_patch16_224"  # 5.5M parameters; built for 64 px here
SWIN = "timm/swin_tiny_patch4_window7_224"


def _batch(model: ChestClassifier, seed: int = 0) -> torch.Tensor:
    size = model.image_size
    return torch.randn(2, model.in_chans, size, size, generator=torch.Generator().manual_seed(seed))


def _first_conv(model: ChestClassifier) -> torch.nn.Module:
    return model.backbone.get_submodule(model.backbone.pretrained_cfg["first_conv"])


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test: nothing may download."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


# --- names ----------------------------------------------------------------------------------
def test_timm_names_are_model_names_and_unknown_ones_are_refused_with_suggestions() -> None:
    assert is_model_name("resnet18") and is_model_name(CNN) and is_model_name(VIT)
    assert is_model_name("timm/convnext_tiny.fb_in22k_ft_in1k")  # with a pretrained tag
    assert not is_model_name("timm/convnext_tiy") and not is_model_name("convnext_tiny")
    with pytest.raises(ValueError) as error:
        check_model_name("timm/convnext_tiy", parameter="model")
    message = str(error.value)
    assert message.startswith("model:") and "timm.list_models()" in message
    assert "timm/convnext_tiny" in message  # difflib's suggestion
    with pytest.raises(ValueError, match="unknown pretrained tag 'in99k'.*fb_in22k_ft_in1k"):
        check_model_name("timm/convnext_tiny.in99k")
    with pytest.raises(ValueError, match="timm/<name>"):
        build_model("convnext_tiny")
    with pytest.raises(ValueError, match="not a timm model"):
        build_model("timm/resnet10tt", image_size=64)


# --- building and training ------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "size"), [(CNN, 64), (VIT, 64)])
def test_one_training_step_with_the_dual_head_reaches_the_grey_stem(arch: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, image_size=size, dropout=0.1)
    stem = _first_conv(model)
    assert stem.weight.shape[1] == 1  # one grey input channel
    x = _batch(model)
    labels = torch.randint(0, 2, (2, len(OUTPUTS)), generator=torch.Generator().manual_seed(1))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    before = stem.weight.detach().clone()

    logits = model(x)
    assert logits.shape == (2, len(OUTPUTS))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
    loss.backward()
    assert torch.isfinite(loss)
    assert stem.weight.grad is not None and torch.isfinite(stem.weight.grad).all()
    assert stem.weight.grad.abs().sum() > 0
    optimiser.step()
    assert not torch.equal(stem.weight, before)
    assert torch.isfinite(model(x)).all()


def test_binary_head_and_three_channels_and_channels_last() -> None:
    model = build_model(CNN, image_size=64, head="binary", in_chans=3).eval()
    x = _batch(model)
    with torch.no_grad():
        expected = model(x)
        actual = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
    assert expected.shape == (2, 1)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_normalisation_follows_the_timm_tag_like_torchvision_models_for_grey_input() -> None:
    imagenet_grey = build_model("resnet18", image_size=32).preprocessing
    cnn = build_model(CNN, image_size=64)
    assert cnn.preprocessing["mean"] == imagenet_grey["mean"]  # the RGB average, as for resnet18
    assert cnn.preprocessing["std"] == imagenet_grey["std"]
    # vit_tiny's default tag (augreg) was trained on (x - 0.5) / 0.5.
    vit = build_model(VIT, image_size=32, in_chans=3)
    assert vit.preprocessing["mean"] == [0.5, 0.5, 0.5] and vit.preprocessing["std"] == [0.5] * 3


# --- sizes ------------------------------------------------------------------------------------
def test_sizes_a_model_cannot_take_are_clear_errors_before_building() -> None:
    assert min_image_size(CNN) == 32
    assert min_image_size(VIT) == 32
    assert min_image_size("timm/inception_v3") == 75  # its stem's valid convolutions need 75 px
    assert min_image_size("timm/vit_small_patch14_reg4_dinov2") == 42  # 3 patches of 14 px
    with pytest.raises(ValueError) as error:
        build_model(VIT, image_size=72)
    message = str(error.value)
    assert "72" in message and VIT in message and "multiple of 16" in message
    assert "64 or 80" in message
    with pytest.raises(ValueError, match=r"image_size must be an integer >= 32 .*resnet10t.*16"):
        check_image_size(CNN, 16)
    with pytest.raises(ValueError, match=r">= 75 for arch 'timm/inception_v3', got 64"):
        check_image_size("timm/inception_v3", 64)
    check_image_size(VIT, 48)  # 3 x 3 patches


# --- model folders --------------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "size"), [(CNN, 64), (VIT, 32)])
def test_save_pretrained_and_from_pretrained_give_identical_outputs(
    tmp_path: Path, arch: str, size: int
) -> None:
    model = build_model(arch, image_size=size, head="dual")
    with torch.no_grad():  # non-trivial normalisation statistics, so a missed buffer would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    model.eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["arch"] == arch and config["timm_version"] == timm.__version__
    assert config["preprocessing"]["image_size"] == size

    x = _batch(model)
    for loaded in (ChestClassifier.from_pretrained(tmp_path), load_model(tmp_path)):
        assert loaded.arch == arch and not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))


def _edited(folder: Path, change) -> Path:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_model_folder_checks_the_timm_fields(tmp_path: Path) -> None:
    model = build_model(VIT, image_size=32)
    model.save_pretrained(tmp_path)

    _edited(tmp_path, lambda c: c.pop("timm_version"))
    with pytest.raises(ModelFolderError, match="timm_version is missing; expected the version"):
        load_model(tmp_path)
    _edited(tmp_path, lambda c: c.update(timm_version=10))
    with pytest.raises(ModelFolderError, match="timm_version is 10"):
        load_model(tmp_path)

    _edited(tmp_path, lambda c: c.update(timm_version="0.9.16"))
    with pytest.warns(UserWarning, match=f"saved with timm 0.9.16, timm {timm.__version__}"):
        load_model(tmp_path)  # same layers in this case: loads, with a warning

    def bad_size(config: dict) -> None:
        config["timm_version"] = timm.__version__
        config["image_size"] = config["preprocessing"]["image_size"] = 40

    _edited(tmp_path, bad_size)
    with pytest.raises(
        ModelFolderError, match="image_size is 40; expected a size .*multiple of 16"
    ):
        load_model(tmp_path)
    _edited(tmp_path, lambda c: c.update(arch="timm/vit_tiny_patch16_2244"))
    with pytest.raises(ModelFolderError, match='arch is "timm/vit_tiny_patch16_2244"'):
        load_model(tmp_path)


def test_weights_of_another_timm_model_are_refused_by_the_folder_check(tmp_path: Path) -> None:
    build_model(CNN, image_size=64).save_pretrained(tmp_path)
    _edited(tmp_path, lambda c: c.update(arch="timm/resnet14t"))
    with pytest.raises(ModelFolderError, match="does not fit the model its config.json describes"):
        load_model(tmp_path)


# --- Grad-CAM ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "size", "grid"), [(CNN, 64, 2), (VIT, 64, 4), (SWIN, 128, 4)])
def test_grad_cam_maps_have_the_input_size_and_vary(arch: str, size: int, grid: int) -> None:
    torch.manual_seed(0)
    model = build_model(arch, image_size=size)
    # Positive head weights: a random head can weigh a CNN's (non-negative) features to a map
    # that is negative everywhere, which Grad-CAM's ReLU makes a blank one.
    with torch.no_grad():
        model.findings_head.weight.abs_()
        model.abnormal_head.weight.abs_()
    x = _batch(model)
    result = grad_cam(model, x, [0, OUTPUTS.index("Abnormal")])
    assert result.maps.shape == (2, size, size)
    assert result.raw.shape == (2, grid, grid)  # the feature map's (or token grid's) resolution
    assert np.isfinite(result.maps).all() and np.isfinite(result.raw).all()
    assert all(image_map.max() > image_map.min() for image_map in result.maps)
    assert model.training  # restored


def test_vit_tokens_become_a_map_without_the_prefix_tokens() -> None:
    model = build_model("timm/deit_tiny_distilled_patch16_224", image_size=32)
    layer, reshape = model.cam_target()
    assert layer is model.backbone.blocks[-1].norm1
    # Class and distillation tokens (values -1, -2) first, then the 2 x 2 patch tokens.
    tokens = torch.tensor([-1.0, -2.0, 0.0, 1.0, 2.0, 3.0]).view(1, 6, 1).expand(1, 6, 3)
    feature_map = reshape(tokens)
    assert feature_map.shape == (1, 3, 2, 2)
    assert torch.equal(feature_map[0, 1], torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
    cnn_layer, cnn_reshape = build_model(CNN, image_size=64).cam_target()
    assert cnn_reshape is None and isinstance(cnn_layer, torch.nn.Sequential)  # layer4


# --- pretrained weights ---------------------------------------------------------------------
def _rgb_weights(name: str, path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised timm model with its RGB stem and ImageNet classifier, saved."""
    torch.manual_seed(seed)
    state = timm.create_model(name, pretrained=False).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(state, str(path))
    return state


def _assert_backbone_is_the_file(model: ChestClassifier, state: dict) -> None:
    first_conv = model.backbone.pretrained_cfg["first_conv"] + ".weight"
    classifier = model.backbone.pretrained_cfg["classifier"]
    loaded = model.backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith(classifier + ".")}
    for key, value in loaded.items():
        if key == first_conv and model.in_chans == 1:
            # timm's adapt_input_conv: the grey stem is the sum of the RGB filters.
            torch.testing.assert_close(value, state[key].sum(dim=1, keepdim=True))
        else:
            assert torch.equal(value, state[key]), key


def test_pretrained_from_a_local_safetensors_file(tmp_path: Path, no_network: None) -> None:
    state = _rgb_weights("resnet10t", tmp_path / "resnet10t.safetensors")
    model = build_model(CNN, image_size=64, pretrained=tmp_path / "resnet10t.safetensors")
    assert _first_conv(model).weight.shape[1] == 1
    _assert_backbone_is_the_file(model, state)
    rgb = build_model(CNN, image_size=64, in_chans=3, pretrained=tmp_path / "resnet10t.safetensors")
    _assert_backbone_is_the_file(rgb, state)  # three channels: the stem as it is in the file


def test_pretrained_vit_gets_its_position_embeddings_resampled(
    tmp_path: Path, no_network: None
) -> None:
    folder = tmp_path / "kaggle" / "vit"
    state = _rgb_weights("vit_tiny_patch16_224", folder / "model.safetensors")
    model = build_model(VIT, image_size=64, pretrained=folder)  # a folder holding the file
    assert state["pos_embed"].shape == (1, 1 + 14 * 14, 192)
    assert model.backbone.pos_embed.shape == (1, 1 + 4 * 4, 192)
    torch.testing.assert_close(
        model.backbone.patch_embed.proj.weight,
        state["patch_embed.proj.weight"].sum(dim=1, keepdim=True),
    )
    assert torch.equal(model.backbone.pos_embed[:, 0], state["pos_embed"][:, 0])  # class token
    assert torch.equal(model.backbone.blocks[-1].mlp.fc2.weight, state["blocks.11.mlp.fc2.weight"])


def _fake_hub_cache(cache: Path, repo: str, state_path: Path) -> Path:
    """Lay out a repo the way huggingface_hub caches it: blobs/, snapshots/<rev>/, refs/main."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    blob = folder / "blobs" / "f00d"
    blob.parent.mkdir(parents=True)
    blob.write_bytes(state_path.read_bytes())
    snapshot = folder / "snapshots" / revision / "model.safetensors"
    snapshot.parent.mkdir(parents=True)
    os.symlink(os.path.relpath(blob, snapshot.parent), snapshot)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    return snapshot


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_imagenet_weights_come_from_the_local_hugging_face_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None, variable: str
) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "hf"))
    cache = tmp_path / "hf" if variable == "HF_HUB_CACHE" else tmp_path / "hf" / "hub"
    state = _rgb_weights("resnet10t", tmp_path / "weights.safetensors", seed=3)
    repo = "timm/resnet10t.c3_in1k"  # resnet10t's default pretrained tag
    snapshot = _fake_hub_cache(cache, repo, tmp_path / "weights.safetensors")
    assert find_pretrained_weights(CNN, "imagenet") == snapshot
    model = build_model(CNN, image_size=64, pretrained="imagenet")
    _assert_backbone_is_the_file(model, state)


def test_missing_imagenet_weights_say_where_they_were_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError) as error:
        build_model("timm/convnext_atto.d2_in1k", image_size=64, pretrained="imagenet")
    message = str(error.value)
    assert str(tmp_path / "empty" / "models--timm--convnext_atto.d2_in1k") in message
    assert "hf download timm/convnext_atto.d2_in1k model.safetensors" in message
    assert "Nothing is downloaded" in message
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        build_model(CNN, image_size=64, pretrained=tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="'imagenet' or a path to a .safetensors file"):
        build_model(CNN, image_size=64, pretrained=tmp_path / "weights.pth")


def test_weights_of_another_model_or_a_partial_file_are_refused(tmp_path: Path) -> None:
    _rgb_weights("convnext_atto", tmp_path / "convnext.safetensors")
    with pytest.raises(
        ValueError,
        match=r"convnext.safetensors does not fit the timm/resnet10t.*"
        r"\d+ missing keys \['conv1.0.weight'",
    ):
        build_model(CNN, image_size=64, pretrained=tmp_path / "convnext.safetensors")
    state = _rgb_weights("resnet10t", tmp_path / "full.safetensors")
    del state["layer4.0.bn2.running_var"]
    safetensors.torch.save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match=r"1 missing keys \['layer4\.0\.bn2\.running_var'\]"):
        build_model(CNN, image_size=64, pretrained=tmp_path / "partial.safetensors")


def test_the_hub_cache_folder_is_read_from_the_environment_at_call_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "a"))
    assert timm_backbones.hub_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "b"))
    assert timm_backbones.hub_cache_dir() == tmp_path / "b" / "hub"
