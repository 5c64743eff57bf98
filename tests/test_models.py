"""Tests for chexvision_lib.models.registry: shapes, errors, SE-ResNet structure, local pretrained
weights, Hub round trip, parameter groups and the Grad-CAM layer. CPU, small inputs, no network.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torchvision.models as tvm

from chexvision_lib.core.labels import ABNORMAL, OUTPUTS
from chexvision_lib.models.registry import (
    MODEL_NAMES,
    ChestClassifier,
    SEBasicBlock,
    SqueezeExcitation,
    build_model,
    find_pretrained_weights,
    min_image_size,
)

torch.set_num_threads(2)


def _batch(model: ChestClassifier, size: int | None = None) -> torch.Tensor:
    size = size or model.image_size
    return torch.randn(2, model.in_chans, size, size, generator=torch.Generator().manual_seed(0))


# --- every architecture -------------------------------------------------------------------
@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_every_architecture_gives_dual_and_binary_logits_at_its_minimum_size(arch: str) -> None:
    size = min_image_size(arch)
    dual = build_model(arch, image_size=size)
    binary = build_model(arch, image_size=size, head="binary")
    assert dual(_batch(dual)).shape == (2, len(OUTPUTS))
    assert binary(_batch(binary)).shape == (2, 1)
    assert dual.preprocessing["outputs"] == list(OUTPUTS)
    assert binary.preprocessing["outputs"] == [ABNORMAL]


def test_expected_architectures_are_registered() -> None:
    assert set(MODEL_NAMES) == {
        "seresnet", "seresnet_small", "densenet121", "resnet18", "resnet50",
        "vgg16", "vgg19", "alexnet", "inception_v3",
    }  # fmt: skip


def test_three_channel_input_and_channels_last() -> None:
    model = build_model("resnet18", image_size=32, in_chans=3).eval()
    x = _batch(model)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        actual = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    assert model.preprocessing["mean"] == [0.485, 0.456, 0.406]


# --- argument errors name the parameter ---------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"arch": "resnet19"}, ["arch", "resnet18", "seresnet"]),
        ({"arch": "inception_v3", "image_size": 74}, ["image_size", "75"]),
        ({"arch": "alexnet", "image_size": 62}, ["image_size", "63"]),
        ({"arch": "resnet18", "image_size": 31}, ["image_size", "32"]),
        ({"arch": "resnet18", "head": "triple"}, ["head", "dual", "binary"]),
        ({"arch": "resnet18", "in_chans": 2}, ["in_chans", "1", "3"]),
        ({"arch": "resnet18", "dropout": 1.0}, ["dropout"]),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_parameter(
    kwargs: dict, words: list[str]
) -> None:
    arch = kwargs.pop("arch")
    with pytest.raises(ValueError) as error:
        build_model(arch, **kwargs)
    for word in words:
        assert word in str(error.value)


def test_forward_rejects_wrong_channel_count() -> None:
    model = build_model("seresnet_small", image_size=32)
    with pytest.raises(ValueError, match="expected input of shape"):
        model(torch.zeros(2, 3, 32, 32))


# --- SE-ResNet ----------------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "width"), [("seresnet", 64), ("seresnet_small", 16)])
def test_seresnet_has_depths_3_4_6_3_and_se_in_every_block(arch: str, width: int) -> None:
    backbone = build_model(arch).backbone
    stages = [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4]
    assert [len(stage) for stage in stages] == [3, 4, 6, 3]
    blocks = [m for m in backbone.modules() if isinstance(m, SEBasicBlock)]
    assert len(blocks) == 16
    assert all(isinstance(block.se, SqueezeExcitation) for block in blocks)
    assert backbone.stem[0].in_channels == 1
    assert backbone.stem[0].out_channels == width
    stage_widths = [stage[-1].conv2.out_channels for stage in stages]
    assert stage_widths == [width, 2 * width, 4 * width, 8 * width]


def test_squeeze_excitation_scales_channels_by_a_sigmoid_gate() -> None:
    se = SqueezeExcitation(64)
    assert se.reduce.out_features == 64 // 16
    x = torch.rand(2, 64, 5, 5) + 0.1
    ratio = se(x) / x
    # One factor per (image, channel), strictly between 0 and 1.
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio))
    assert ((ratio > 0) & (ratio < 1)).all()


def test_scratch_networks_have_no_pretrained_weights() -> None:
    with pytest.raises(ValueError, match="from scratch"):
        build_model("seresnet", pretrained="imagenet")


# --- pretrained weights from local files --------------------------------------------------
def _torchvision_state(builder, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return builder(weights=None).state_dict()


def _assert_backbone_equals_file(
    model: ChestClassifier, state: dict[str, torch.Tensor], first_conv: str
) -> None:
    loaded = model.backbone.state_dict()
    for key, value in state.items():
        if key.startswith(("fc.", "classifier.")) or key.endswith("num_batches_tracked"):
            continue
        if key == first_conv and model.in_chans == 1:
            torch.testing.assert_close(loaded[key], value.sum(dim=1, keepdim=True))
        else:
            assert torch.equal(loaded[key], value), key


def test_resnet18_loads_from_a_local_pth_with_rgb_summed_first_conv(tmp_path: Path) -> None:
    state = _torchvision_state(tvm.resnet18)
    torch.save(state, tmp_path / "resnet18.pth")
    model = build_model("resnet18", image_size=32, pretrained=tmp_path / "resnet18.pth")
    assert model.backbone.conv1.weight.shape == (64, 1, 7, 7)
    _assert_backbone_equals_file(model, state, "conv1.weight")


def test_resnet18_loads_from_safetensors_with_three_channels(tmp_path: Path) -> None:
    state = _torchvision_state(tvm.resnet18, seed=1)
    safetensors.torch.save_file(state, str(tmp_path / "resnet18.safetensors"))
    model = build_model(
        "resnet18", image_size=32, in_chans=3, pretrained=str(tmp_path / "resnet18.safetensors")
    )
    _assert_backbone_equals_file(model, state, "conv1.weight")


def test_densenet121_loads_legacy_key_names(tmp_path: Path) -> None:
    state = _torchvision_state(tvm.densenet121)
    # torchvision's published DenseNet files spell 'norm1' as 'norm.1', 'conv2' as 'conv.2', ...
    # and, being older than BatchNorm's num_batches_tracked buffer, do not contain it.
    legacy = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        for name in ("norm1", "norm2", "conv1", "conv2"):
            key = key.replace(f".{name}.", f".{name[:-1]}.{name[-1]}.")
        legacy[key] = value
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    torch.save(legacy, tmp_path / "densenet121.pth")
    model = build_model("densenet121", image_size=32, pretrained=tmp_path / "densenet121.pth")
    _assert_backbone_equals_file(model, state, "features.conv0.weight")


def test_partial_or_wrong_weights_file_is_an_error(tmp_path: Path) -> None:
    state = _torchvision_state(tvm.resnet18)
    del state["layer4.1.bn2.running_var"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"missing keys \['layer4.1.bn2.running_var'\]"):
        build_model("resnet18", image_size=32, pretrained=tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="unexpected keys"):
        build_model("alexnet", image_size=63, pretrained=tmp_path / "partial.pth")


def test_missing_weights_file_and_bad_suffix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        find_pretrained_weights("resnet18", tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="imagenet"):
        find_pretrained_weights("resnet18", tmp_path / "weights.bin")


def test_imagenet_weights_are_looked_up_in_the_torch_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert Path(torch.hub.get_dir()) == tmp_path / "hub"

    with pytest.raises(FileNotFoundError) as error:
        build_model("resnet18", pretrained="imagenet")
    message = str(error.value)
    assert str(expected) in message and "Nothing is downloaded" in message
    assert "pretrained=<path" in message

    expected.parent.mkdir(parents=True)
    state = _torchvision_state(tvm.resnet18)
    torch.save(state, expected)
    assert find_pretrained_weights("resnet18", "imagenet") == expected
    model = build_model("resnet18", image_size=32, pretrained="imagenet")
    _assert_backbone_equals_file(model, state, "conv1.weight")


# --- Hub mixin round trip -----------------------------------------------------------------
def test_save_pretrained_and_from_pretrained_round_trip(tmp_path: Path) -> None:
    model = build_model("seresnet_small", image_size=48, head="dual", dropout=0.2)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a missed buffer would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.running_mean.uniform_(-0.1, 0.1)
    model.eval()
    model.thresholds = [0.1 * (i % 9) for i in range(14)] + [0.3]
    model.temperatures = [1.0 + 0.1 * i for i in range(14)] + [None]
    model.save_pretrained(tmp_path, config={"best_epoch": 3, "arch": "ignored"})

    config = json.loads((tmp_path / "config.json").read_text())
    assert config == {
        "arch": "seresnet_small",
        "image_size": 48,
        "in_chans": 1,
        "head": "dual",
        "dropout": 0.2,
        "preprocessing": {
            "image_size": 48,
            "in_chans": 1,
            "mean": [0.5],
            "std": [0.25],
            "outputs": list(OUTPUTS),
        },
        "thresholds": model.thresholds,
        "temperatures": model.temperatures,
        "best_epoch": 3,
    }
    assert (tmp_path / "model.safetensors").is_file()

    loaded = ChestClassifier.from_pretrained(tmp_path)
    assert loaded.thresholds == model.thresholds
    assert loaded.temperatures == model.temperatures
    logits = torch.tensor([[2.0] * 15])
    expected = torch.sigmoid(logits / torch.tensor([t or 1.0 for t in model.temperatures]))
    torch.testing.assert_close(loaded.probabilities(logits), expected)
    assert not loaded.training
    assert loaded.preprocessing == model.preprocessing
    x = _batch(model)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))

    # A channels_last model (as trained on GPU) saves and loads too.
    model.to(memory_format=torch.channels_last).save_pretrained(tmp_path / "channels_last")
    reloaded = ChestClassifier.from_pretrained(tmp_path / "channels_last")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), loaded(x))


def test_from_pretrained_refuses_incomplete_weights(tmp_path: Path) -> None:
    model = build_model("seresnet_small", image_size=32)
    model.save_pretrained(tmp_path)
    state = safetensors.torch.load_file(str(tmp_path / "model.safetensors"))
    del state["abnormal_head.weight"]
    safetensors.torch.save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"1 missing \[abnormal_head\.weight\]"):
        ChestClassifier.from_pretrained(tmp_path)


# --- parameter groups and Grad-CAM layer --------------------------------------------------
@pytest.mark.parametrize("head", ["dual", "binary"])
def test_backbone_and_head_parameters_partition_all_parameters(head: str) -> None:
    model = build_model("seresnet_small", head=head)
    backbone = {id(p) for p in model.backbone_parameters()}
    heads = {id(p) for p in model.head_parameters()}
    assert backbone and heads and not backbone & heads
    assert backbone | heads == {id(p) for p in model.parameters()}
    assert len(model.head_parameters()) == (4 if head == "dual" else 2)


@pytest.mark.parametrize("arch", ["seresnet_small", "densenet121", "resnet18", "vgg16"])
def test_cam_layer_output_is_the_pooled_feature_map_and_gets_gradients(arch: str) -> None:
    size = min_image_size(arch)
    model = build_model(arch, image_size=size)
    captured: dict[str, torch.Tensor] = {}

    def keep_output(module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        captured["features"] = output
        output.register_hook(lambda grad: captured.__setitem__("grad", grad))

    def keep_output_grad(module: torch.nn.Module, grad_in: object, grad_out: tuple) -> None:
        captured["module_grad"] = grad_out[0]

    # Both hook styles Grad-CAM implementations use; the full backward hook fails if anything
    # modifies the layer's output in place.
    layer = model.cam_layer()
    handles = [
        layer.register_forward_hook(keep_output),
        layer.register_full_backward_hook(keep_output_grad),
    ]
    model(_batch(model))[:, -1].sum().backward()
    for handle in handles:
        handle.remove()
    features = captured["features"]
    assert features.ndim == 4 and features.shape[:2] == (2, model.num_features)
    assert captured["grad"].shape == features.shape
    torch.testing.assert_close(captured["module_grad"], captured["grad"])
