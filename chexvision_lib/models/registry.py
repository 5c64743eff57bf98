"""Model architectures: one registry of backbones, each feeding the same two heads.

Every model maps a normalised image batch (B, in_chans, H, W) to logits:
- the "dual" head gives (B, 15): the 14 findings then "Abnormal", in `labels.OUTPUTS` order;
- the "binary" head gives (B, 1): "Abnormal" only (Tang et al. 2020's normal-vs-abnormal task).

The backbone turns the image into a feature map; the heads are global average pooling, dropout
and one linear layer per head. `ChestClassifier` is a Hugging Face `PyTorchModelHubMixin`, so
`save_pretrained(folder)` writes model.safetensors + config.json (constructor arguments plus the
preprocessing spec) and `ChestClassifier.from_pretrained(folder)` rebuilds and loads it, strictly
and without unpickling anything. Loading checks config.json against this package first (label
order, input size, normalisation, architecture, thresholds) and the weights' names and shapes
against the rebuilt model: a folder that disagrees is refused, naming the field.

Besides the built-in names (MODEL_NAMES), `timm/<name>` is any timm model (see `timm_backbones`);
`check_model_name` / `is_model_name` accept both.

ImageNet weights are used only when asked for and only from local files: nothing here downloads.
"""

from __future__ import annotations

import difflib
import json
import math
import pickle
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torchvision.models as tvm
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from chexvision_lib.core.labels import ABNORMAL, OUTPUTS
from chexvision_lib.models import timm_backbones
from chexvision_lib.models.timm_backbones import is_timm_arch

HEADS: tuple[str, ...] = ("dual", "binary")
INPUT_CHANNELS: tuple[int, ...] = (1, 3)

# --------------------------------------------------------------------------------------------
# Input normalisation: the one place these numbers live. Values are per channel, for pixel
# intensities already scaled to [0, 1]; `preprocessing` reports them and config.json keeps them.
# --------------------------------------------------------------------------------------------
_NORMALISATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    # torchvision's ImageNet weights were trained on inputs normalised with these statistics.
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # torchvision's Inception-v3 weights were ported from TensorFlow and expect (x - 0.5) / 0.5:
    # torchvision re-normalises inside the model (transform_input=True) when it loads them; we
    # build with transform_input=False and ask for that normalisation up front instead.
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    # Scratch networks have no statistics to inherit. 0.5 / 0.25 are round numbers close to
    # ChestX-ray14's own (mean 0.506, std 0.252 over the 103 real images in shared/realdata at
    # 256 px); fixed rather than measured so a saved model never depends on which subset was
    # prepared. They map [0, 1] to [-2, 2].
    "scratch": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}


def _normalisation(arch: str, in_chans: int) -> tuple[list[float], list[float]]:
    """Return (mean, std) lists of length `in_chans` for an architecture: its family's values,
    or for a timm model those its pretrained tag was trained with.

    One grey channel gets the average of the three RGB values: with the first convolution's
    weights summed over RGB (see `_sum_rgb_weights`; timm's `adapt_input_conv` does the same), a
    grey image normalised this way gives nearly the response the three-channel network gives to
    that image replicated to RGB.
    """
    if is_timm_arch(arch):
        mean, std = timm_backbones.normalisation(arch)
    else:
        mean, std = _NORMALISATION[_architecture(arch).normalisation]
    if in_chans == 1:
        return [round(sum(mean) / 3, 6)], [round(sum(std) / 3, 6)]
    return list(mean), list(std)


# --------------------------------------------------------------------------------------------
# SE-ResNet: the CheXVision scratch network.
# --------------------------------------------------------------------------------------------
SE_REDUCTION = 16
# Floor on the squeeze width so seresnet_small's 16-channel stage is not squeezed to 1 unit;
# seresnet (narrowest stage 64 channels -> 4 units) is unaffected.
SE_MIN_HIDDEN = 4
SERESNET_DEPTHS: tuple[int, int, int, int] = (3, 4, 6, 3)


class SqueezeExcitation(nn.Module):
    """Channel attention (Hu et al. 2018): pool -> FC reduce -> ReLU -> FC -> sigmoid -> scale."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        hidden = max(channels // reduction, SE_MIN_HIDDEN)
        self.reduce = nn.Linear(channels, hidden)
        self.expand = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        squeezed = x.mean(dim=(2, 3))
        channel_weights = torch.sigmoid(self.expand(torch.relu(self.reduce(squeezed))))
        return x * channel_weights[:, :, None, None]


class SEBasicBlock(nn.Module):
    """ResNet basic block (3x3, 3x3) whose residual branch is rescaled by squeeze-excitation."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.se = SqueezeExcitation(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        # Out-of-place ReLUs: Grad-CAM hooks on a block's output must see an unmodified tensor.
        residual = torch.relu(self.bn1(self.conv1(x)))
        residual = self.se(self.bn2(self.conv2(residual)))
        return torch.relu(residual + self.shortcut(x))


class SEResNet(nn.Module):
    """ResNet-34-shaped network with SE in every block; `base_width` scales all stages."""

    def __init__(
        self, in_chans: int, base_width: int, depths: tuple[int, ...] = SERESNET_DEPTHS
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, base_width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(base_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        widths = [base_width * 2**stage for stage in range(len(depths))]
        in_channels = base_width
        for stage, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            stride = 1 if stage == 0 else 2
            blocks = [SEBasicBlock(in_channels, width, stride)]
            blocks += [SEBasicBlock(width, width, 1) for _ in range(depth - 1)]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
            in_channels = width
        self.stages = [getattr(self, f"layer{i + 1}") for i in range(len(depths))]
        self.num_features = in_channels
        self._initialise_weights()

    def _initialise_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Each residual branch starts at zero, so every block starts as the identity (Goyal et al.
        # 2017): deep networks trained from scratch then begin as shallow ones and train stably.
        for module in self.modules():
            if isinstance(module, SEBasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x


# --------------------------------------------------------------------------------------------
# torchvision backbones, cut before their pooling/classifier. Module names are kept exactly as
# torchvision names them, so a torchvision state_dict maps onto `backbone` key for key.
# --------------------------------------------------------------------------------------------
def _resnet_backbone(builder: Callable[..., tvm.ResNet]) -> nn.Module:
    net = builder(weights=None)
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return nn.Sequential(OrderedDict((name, getattr(net, name)) for name in names))


def _densenet121_backbone() -> nn.Module:
    net = tvm.densenet121(weights=None)
    # torchvision applies ReLU after norm5 in forward(); ours is a module (out of place) so it
    # is also the Grad-CAM target whose output is exactly what the heads pool.
    return nn.Sequential(OrderedDict(features=net.features, final_relu=nn.ReLU()))


def _vgg_backbone(config_key: str) -> nn.Module:
    # Only the convolutional part: building torchvision's whole VGG would also initialise its
    # 120M-parameter fully connected classifier, which our heads replace (seconds per build).
    features = tvm.vgg.make_layers(tvm.vgg.cfgs[config_key], batch_norm=False)
    for module in features.modules():
        if isinstance(module, nn.Conv2d):  # torchvision's VGG initialisation
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return nn.Sequential(OrderedDict(features=features))


def _alexnet_backbone() -> nn.Module:
    return nn.Sequential(OrderedDict(features=tvm.alexnet(weights=None).features))


_INCEPTION_FEATURE_MODULES = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
    "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
    "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
)  # fmt: skip


def _inception_v3_backbone() -> nn.Module:
    net = tvm.inception_v3(weights=None, aux_logits=False, transform_input=False, init_weights=True)
    return nn.Sequential(OrderedDict((n, getattr(net, n)) for n in _INCEPTION_FEATURE_MODULES))


# --------------------------------------------------------------------------------------------
# The registry.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Architecture:
    """What build_model needs to know about one architecture."""

    build_backbone: Callable[[int], nn.Module]  # in_chans -> module giving (B, C, h, w)
    num_features: int  # C
    # Smallest accepted image_size: the larger of the smallest input the network runs on
    # (measured) and 32 px, the total stride of the five stride-2 stages, below which the
    # deeper stages only ever see one spatial position.
    min_image_size: int
    normalisation: str  # key of _NORMALISATION
    # Dotted name in the backbone of the module whose output is the feature map the heads pool
    # (and whose output nothing modifies in place, so Grad-CAM hooks see it intact).
    cam_layer: str
    first_conv: str  # dotted name in the backbone of the convolution that sees the image
    imagenet_weights: WeightsEnum | None = None  # None: scratch-only, no pretrained weights
    # torchvision state_dict keys that our backbone does not have (classifiers replaced by ours).
    dropped_key_prefixes: tuple[str, ...] = ()


def _torchvision(build: Callable[[], nn.Module], first_conv: str) -> Callable[[int], nn.Module]:
    """Wrap a three-channel torchvision builder so it yields a backbone for `in_chans`."""

    def build_backbone(in_chans: int) -> nn.Module:
        backbone = build()
        if in_chans == 1:
            _make_first_conv_grey(backbone, first_conv)
        return backbone

    return build_backbone


def _seresnet(base_width: int) -> Callable[[int], nn.Module]:
    return lambda in_chans: SEResNet(in_chans, base_width)


_ARCHITECTURES: dict[str, _Architecture] = {
    "seresnet": _Architecture(
        build_backbone=_seresnet(64),
        num_features=512,
        min_image_size=32,
        normalisation="scratch",
        cam_layer="layer4",
        first_conv="stem.0",
    ),
    "seresnet_small": _Architecture(
        build_backbone=_seresnet(16),
        num_features=128,
        min_image_size=32,
        normalisation="scratch",
        cam_layer="layer4",
        first_conv="stem.0",
    ),
    "densenet121": _Architecture(
        build_backbone=_torchvision(_densenet121_backbone, "features.conv0"),
        num_features=1024,
        min_image_size=32,
        normalisation="imagenet",
        cam_layer="final_relu",
        first_conv="features.conv0",
        imagenet_weights=tvm.DenseNet121_Weights.IMAGENET1K_V1,
        dropped_key_prefixes=("classifier.",),
    ),
    "resnet18": _Architecture(
        build_backbone=_torchvision(lambda: _resnet_backbone(tvm.resnet18), "conv1"),
        num_features=512,
        min_image_size=32,
        normalisation="imagenet",
        cam_layer="layer4",
        first_conv="conv1",
        imagenet_weights=tvm.ResNet18_Weights.IMAGENET1K_V1,
        dropped_key_prefixes=("fc.",),
    ),
    "resnet50": _Architecture(
        build_backbone=_torchvision(lambda: _resnet_backbone(tvm.resnet50), "conv1"),
        num_features=2048,
        min_image_size=32,
        normalisation="imagenet",
        cam_layer="layer4",
        first_conv="conv1",
        imagenet_weights=tvm.ResNet50_Weights.IMAGENET1K_V1,
        dropped_key_prefixes=("fc.",),
    ),
    "vgg16": _Architecture(
        build_backbone=_torchvision(lambda: _vgg_backbone("D"), "features.0"),
        num_features=512,
        min_image_size=32,
        normalisation="imagenet",
        cam_layer="features.30",  # the last MaxPool
        first_conv="features.0",
        imagenet_weights=tvm.VGG16_Weights.IMAGENET1K_V1,
        dropped_key_prefixes=("classifier.",),
    ),
    "vgg19": _Architecture(
        build_backbone=_torchvision(lambda: _vgg_backbone("E"), "features.0"),
        num_features=512,
        min_image_size=32,
        normalisation="imagenet",
        cam_layer="features.36",  # the last MaxPool
        first_conv="features.0",
        imagenet_weights=tvm.VGG19_Weights.IMAGENET1K_V1,
        dropped_key_prefixes=("classifier.",),
    ),
    "alexnet": _Architecture(
        build_backbone=_torchvision(_alexnet_backbone, "features.0"),
        num_features=256,
        min_image_size=63,
        normalisation="imagenet",
        cam_layer="features.12",  # the last MaxPool
        first_conv="features.0",
        imagenet_weights=tvm.AlexNet_Weights.IMAGENET1K_V1,
        dropped_key_prefixes=("classifier.",),
    ),
    "inception_v3": _Architecture(
        build_backbone=_torchvision(_inception_v3_backbone, "Conv2d_1a_3x3.conv"),
        num_features=2048,
        min_image_size=75,  # its natural size is 299 px
        normalisation="inception",
        cam_layer="Mixed_7c",
        first_conv="Conv2d_1a_3x3.conv",
        imagenet_weights=tvm.Inception_V3_Weights.IMAGENET1K_V1,
        dropped_key_prefixes=("fc.", "AuxLogits."),
    ),
}

MODEL_NAMES: tuple[str, ...] = tuple(_ARCHITECTURES)


def check_model_name(name: object, parameter: str = "arch") -> None:
    """ValueError naming `parameter` unless `name` is a MODEL_NAMES entry or timm/<name> with a
    name in `timm.list_models()` (optionally .<pretrained tag>); suggests close names."""
    if isinstance(name, str) and name in _ARCHITECTURES:
        return
    if is_timm_arch(name):
        timm_backbones.check_timm_arch(name, parameter)
        return
    close = difflib.get_close_matches(str(name), MODEL_NAMES, n=3)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise ValueError(
        f"unknown {parameter} {name!r}{hint}; expected one of {', '.join(MODEL_NAMES)}, or "
        "timm/<name> for a timm model (a name in timm.list_models())"
    )


def is_model_name(name: object) -> bool:
    """Whether `check_model_name` accepts `name`."""
    try:
        check_model_name(name)
    except ValueError:
        return False
    return True


def _architecture(arch: str) -> _Architecture:
    """The built-in architecture `arch` (timm names are handled by `timm_backbones`)."""
    check_model_name(arch)
    if arch not in _ARCHITECTURES:
        raise ValueError(f"{arch} is a timm architecture, not a built-in one")
    return _ARCHITECTURES[arch]


def min_image_size(arch: str) -> int:
    """Smallest `image_size` that `arch` accepts."""
    if is_timm_arch(arch):
        check_model_name(arch)
        return timm_backbones.min_image_size(arch)
    return _architecture(arch).min_image_size


def check_image_size(arch: str, image_size: int, in_chans: int = 1) -> None:
    """ValueError naming the size and `arch` unless `arch` takes `image_size` (at least its
    minimum; for a timm ViT a multiple of its patch size, and a size it runs on)."""
    minimum = min_image_size(arch)
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < minimum:
        raise ValueError(
            f"image_size must be an integer >= {minimum} for arch {arch!r}, got {image_size!r}"
        )
    if is_timm_arch(arch):
        timm_backbones.check_image_size(arch, image_size, in_chans)


# --------------------------------------------------------------------------------------------
# One-channel input.
# --------------------------------------------------------------------------------------------
def _sum_rgb_weights(weight: Tensor) -> Tensor:
    """(out, 3, k, k) -> (out, 1, k, k): what the filters compute on a grey image copied to RGB.

    This is timm's conversion of ImageNet first-layer weights to one input channel; the model
    then reads one channel instead of three identical ones (a third of the input memory).
    """
    return weight.sum(dim=1, keepdim=True)


def _make_first_conv_grey(backbone: nn.Module, first_conv: str) -> None:
    """Replace the image-facing convolution by a one-channel one with RGB-summed weights.

    Summing the (random) three-channel initialisation keeps randomly initialised and ImageNet
    initialised models on the same footing: either way, the grey network computes what the
    three-channel network computes on the grey image replicated to RGB.
    """
    old: nn.Conv2d = backbone.get_submodule(first_conv)
    new = nn.Conv2d(
        1,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        old.dilation,
        old.groups,
        bias=old.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(_sum_rgb_weights(old.weight))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    parent_name, _, child_name = first_conv.rpartition(".")
    setattr(backbone.get_submodule(parent_name), child_name, new)


# --------------------------------------------------------------------------------------------
# The model.
# --------------------------------------------------------------------------------------------
def _validate_arguments(
    arch: str, image_size: int, in_chans: int, head: str, dropout: float
) -> None:
    check_model_name(arch)
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")
    if in_chans not in INPUT_CHANNELS:
        raise ValueError(f"in_chans must be 1 (grey) or 3 (RGB), got {in_chans!r}")
    check_image_size(arch, image_size, in_chans)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")


WEIGHTS_FILE = "model.safetensors"  # the one weights file a model folder holds
CONFIG_FILE = "config.json"  # what save_pretrained writes beside it


# --------------------------------------------------------------------------------------------
# Model folder checks: config.json must describe what this package would save for the model it
# rebuilds, and the weights must be that model's, tensor for tensor.
# --------------------------------------------------------------------------------------------
class ModelFolderError(ValueError):
    """A model folder (or Hub repo) whose config.json or weights are not what they must be."""


_MISSING = object()
_NORMALISATION_TOLERANCE = 1e-6


def _shown(value: Any) -> str:
    if value is _MISSING:
        return "missing"
    text = json.dumps(value) if isinstance(value, list | dict | str) else repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _field_error(where: str, field: str, value: Any, expected: str) -> ModelFolderError:
    return ModelFolderError(
        f"{where}/{CONFIG_FILE}: {field} is {_shown(value)}; expected {expected}"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_model_config(path: Path, where: str) -> dict[str, Any]:
    """config.json of a model folder as a dict, or an error naming the file."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{where}: no {CONFIG_FILE} (a model folder holds {CONFIG_FILE} + {WEIGHTS_FILE}, "
            "as save_pretrained writes them)"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFolderError(
            f"{where}/{CONFIG_FILE} is not valid JSON ({error}); expected the JSON object that "
            "save_pretrained writes"
        ) from None
    if not isinstance(config, dict):
        raise ModelFolderError(
            f"{where}/{CONFIG_FILE} holds a JSON {type(config).__name__}; expected an object of "
            "the model's settings (arch, image_size, preprocessing, ...)"
        )
    return config


def _outputs_problem(found: Any, expected: tuple[str, ...]) -> str | None:
    """How a config's output names differ from the head's columns; None when they do not."""
    if not isinstance(found, list) or not all(isinstance(name, str) for name in found):
        return f"is {_shown(found)}, not a list of output names"
    if found == list(expected):
        return None
    missing = [name for name in expected if name not in found]
    unknown = [name for name in found if name not in expected]
    repeated = sorted({name for name in found if found.count(name) > 1})
    problems = [f"lacks {', '.join(missing)}"] if missing else []
    problems += [f"has unknown {', '.join(map(repr, unknown))}"] if unknown else []
    problems += [f"repeats {', '.join(repeated)}"] if repeated else []
    if not problems:  # the same names in another order
        i = next(i for i, (a, b) in enumerate(zip(found, expected, strict=True)) if a != b)
        problems.append(
            f"lists the outputs in another order (position {i} is {found[i]!r}, where the model's "
            f"column {i} is {expected[i]!r})"
        )
    return "; ".join(problems)


def check_model_config(config: dict[str, Any], where: str) -> None:
    """Refuse a config.json that is not what this package saves for the model it describes.

    `where` names the folder or Hub repo in the messages. Each message names the field and what
    was expected: the architecture and head must be known, `preprocessing` must agree with the
    constructor arguments and with this package's label order (labels.OUTPUTS) and the
    architecture's normalisation, and thresholds must be probabilities, one per output.
    """
    arch = config.get("arch", _MISSING)
    if not is_model_name(arch):
        raise _field_error(
            where, "arch", arch, f"one of {', '.join(MODEL_NAMES)}, or timm/<a timm model name>"
        )
    if is_timm_arch(arch):
        _check_timm_version(config.get("timm_version", _MISSING), where)
    head = config.get("head", _MISSING)
    if head not in HEADS:
        raise _field_error(where, "head", head, f"one of {', '.join(HEADS)}")
    in_chans = config.get("in_chans", _MISSING)
    if not _is_int(in_chans) or in_chans not in INPUT_CHANNELS:
        raise _field_error(where, "in_chans", in_chans, "1 (grey) or 3 (RGB)")
    image_size = config.get("image_size", _MISSING)
    minimum = min_image_size(arch)
    if not _is_int(image_size) or image_size < minimum:
        raise _field_error(
            where,
            "image_size",
            image_size,
            f"an integer >= {minimum} (the smallest input {arch} accepts)",
        )
    try:
        check_image_size(arch, image_size, in_chans)
    except ValueError as error:
        raise _field_error(
            where, "image_size", image_size, f"a size {arch} takes ({error})"
        ) from None
    dropout = config.get("dropout", 0.0)
    if not _is_number(dropout) or not 0.0 <= dropout < 1.0:
        raise _field_error(where, "dropout", dropout, "a number in [0, 1)")
    _check_thresholds(config.get("thresholds"), where)
    _check_temperatures(config.get("temperatures"), where)

    preprocessing = config.get("preprocessing", _MISSING)
    if not isinstance(preprocessing, dict):
        raise _field_error(
            where,
            "preprocessing",
            preprocessing,
            "an object with image_size, in_chans, mean, std and outputs",
        )
    outputs = OUTPUTS if head == "dual" else (ABNORMAL,)
    problem = _outputs_problem(preprocessing.get("outputs", _MISSING), outputs)
    if problem is not None:
        raise ModelFolderError(
            f"{where}/{CONFIG_FILE}: preprocessing.outputs {problem}; expected the {head} head's "
            f"outputs in its column order: {json.dumps(list(outputs))}"
        )
    for field, value in (("image_size", image_size), ("in_chans", in_chans)):
        found = preprocessing.get(field, _MISSING)
        if not _is_int(found) or found != value:
            raise _field_error(where, f"preprocessing.{field}", found, f"{value}, as {field}")
    family = (
        timm_backbones.normalisation_name(arch)
        if is_timm_arch(arch)
        else _ARCHITECTURES[arch].normalisation
    )
    for field, values in zip(("mean", "std"), _normalisation(arch, in_chans), strict=True):
        found = preprocessing.get(field, _MISSING)
        if (
            not isinstance(found, list)
            or len(found) != in_chans
            or not all(_is_number(v) for v in found)
            or any(
                abs(a - b) > _NORMALISATION_TOLERANCE for a, b in zip(found, values, strict=True)
            )
        ):
            raise _field_error(
                where,
                f"preprocessing.{field}",
                found,
                f"{json.dumps(values)} (the {family} normalisation of {arch}, one number per "
                f"input channel, in_chans {in_chans})",
            )


_VERSION = re.compile(r"\d+(\.\d+)*([.+-]?\w+)*")


def _check_timm_version(recorded: Any, where: str) -> None:
    """A timm architecture's config.json must say which timm built it; another installed timm is
    only a warning, since check_weights then refuses weights whose names or shapes moved."""
    if not isinstance(recorded, str) or not _VERSION.fullmatch(recorded):
        raise _field_error(
            where,
            "timm_version",
            recorded,
            'the version of timm the model was saved with, e.g. "1.0.31" (save_pretrained '
            "records it for timm/ architectures)",
        )
    installed = timm_backbones.timm_version()
    if recorded != installed:
        warnings.warn(
            f"{where}/{CONFIG_FILE}: saved with timm {recorded}, timm {installed} is installed "
            "(a model's layers can change between timm versions; the weights are checked next)",
            stacklevel=3,
        )


def _check_thresholds(thresholds: Any, where: str) -> None:
    if thresholds is None:
        return
    if not isinstance(thresholds, list) or len(thresholds) != len(OUTPUTS):
        raise _field_error(
            where,
            "thresholds",
            thresholds,
            f"null or a list of {len(OUTPUTS)} values, one per output in labels.OUTPUTS order",
        )
    for i, threshold in enumerate(thresholds):
        if threshold is not None and not (_is_number(threshold) and 0.0 <= threshold <= 1.0):
            raise _field_error(
                where,
                f"thresholds[{i}] ({OUTPUTS[i]})",
                threshold,
                "a probability in [0, 1], or null where none was chosen",
            )


def _check_temperatures(temperatures: Any, where: str) -> None:
    if temperatures is None:
        return
    if not isinstance(temperatures, list) or len(temperatures) != len(OUTPUTS):
        raise _field_error(
            where,
            "temperatures",
            temperatures,
            f"null or a list of {len(OUTPUTS)} values, one per output in labels.OUTPUTS order",
        )
    for i, temperature in enumerate(temperatures):
        if temperature is not None and not (_is_number(temperature) and 0.0 < temperature < 1e3):
            raise _field_error(
                where,
                f"temperatures[{i}] ({OUTPUTS[i]})",
                temperature,
                "a positive number (logits are divided by it), or null where none was fitted",
            )


def check_weights(model: nn.Module, weights: Path, where: str, strict: bool = True) -> None:
    """Refuse a safetensors file whose tensor names or shapes are not `model`'s.

    Reads only the file's header. Shape mismatches are always refused (they cannot be loaded);
    missing and unexpected tensors are refused when `strict`.
    """
    try:
        with safetensors.safe_open(str(weights), framework="pt") as handle:
            names = handle.keys()  # a safe_open handle is not a mapping: no `in handle`
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in names}
    except (safetensors.SafetensorError, OSError) as error:
        raise ModelFolderError(
            f"{where}/{WEIGHTS_FILE} is not a readable safetensors file ({error})"
        ) from None
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    reshaped = sorted(k for k in expected.keys() & shapes.keys() if expected[k] != shapes[k])
    missing = sorted(expected.keys() - shapes.keys()) if strict else []
    unexpected = sorted(shapes.keys() - expected.keys()) if strict else []

    def listed(keys: list[str], describe: Callable[[str], str] = str) -> str:
        more = f"; and {len(keys) - 5} more" if len(keys) > 5 else ""
        return "[" + "; ".join(describe(key) for key in keys[:5]) + more + "]"

    problems = []
    if reshaped:
        problems.append(
            f"{len(reshaped)} tensor(s) of another shape "
            + listed(reshaped, lambda k: f"{k} {shapes[k]} in the file, {expected[k]} expected")
        )
    if missing:
        problems.append(f"{len(missing)} missing {listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected {listed(unexpected)}")
    if problems:
        config = {name: getattr(model, name, None) for name in ("arch", "head", "in_chans")}
        described = ", ".join(f"{name} {value!r}" for name, value in config.items())
        raise ModelFolderError(
            f"{where}/{WEIGHTS_FILE} does not fit the model its {CONFIG_FILE} describes "
            f"({described}): {'; '.join(problems)}"
        )


class ChestClassifier(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="chexvision",
    license="mit",
    pipeline_tag="image-classification",
    tags=["chest-x-ray", "medical-imaging", "chestx-ray14"],
):
    """A backbone from the registry plus the dual (14 findings + abnormal) or binary head.

    The constructor arguments are plain JSON values: the Hub mixin records them, so
    `from_pretrained(folder)` rebuilds the same architecture from config.json.
    """

    def __init__(
        self,
        arch: str,
        image_size: int = 256,
        in_chans: int = 1,
        head: str = "dual",
        dropout: float = 0.0,
        thresholds: list[float | None] | None = None,
        temperatures: list[float | None] | None = None,
    ) -> None:
        super().__init__()
        _validate_arguments(arch, image_size, in_chans, head, dropout)
        self.arch, self.image_size, self.in_chans, self.head = arch, image_size, in_chans, head
        self.dropout = dropout
        # Decision thresholds per labels.OUTPUTS entry, chosen on validation after training
        # (None until then, or where an output had no usable labels). A constructor argument so
        # that they travel inside config.json and come back with from_pretrained.
        self.thresholds = list(thresholds) if thresholds is not None else None
        # Temperature scaling per labels.OUTPUTS entry, fitted on validation like the thresholds
        # (None: uncalibrated). `probabilities` divides the logits by them.
        self.temperatures = list(temperatures) if temperatures is not None else None
        self.pool: nn.Module
        if is_timm_arch(arch):
            # timm pools inside the model (its own global pool, or the class token of a ViT).
            self.backbone = timm_backbones.build_backbone(arch, in_chans, image_size)
            self.num_features = timm_backbones.num_features(arch)
            self.pool = nn.Identity()
        else:
            spec = _architecture(arch)
            self.backbone = spec.build_backbone(in_chans)
            self.num_features = spec.num_features
            self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_dropout = nn.Dropout(dropout)
        self.findings_head = (
            nn.Linear(self.num_features, len(OUTPUTS) - 1) if head == "dual" else None
        )
        self.abnormal_head = nn.Linear(self.num_features, 1)

    @property
    def build_config(self) -> dict[str, Any]:
        """The constructor arguments, exactly: enough to rebuild this model with its thresholds."""
        if self.thresholds is not None and len(self.thresholds) != len(OUTPUTS):
            raise ValueError(
                f"thresholds: expected {len(OUTPUTS)} values (labels.OUTPUTS order), "
                f"got {len(self.thresholds)}"
            )
        return {
            "arch": self.arch,
            "image_size": self.image_size,
            "in_chans": self.in_chans,
            "head": self.head,
            "dropout": self.dropout,
            "thresholds": self.thresholds,
            "temperatures": self.temperatures,
        }

    def probabilities(self, logits: Tensor) -> Tensor:
        """sigmoid(logits / temperature) per output column (the temperatures fitted on
        validation; 1 where there are none). The one place logits become probabilities."""
        logits = logits.float()
        if self.temperatures is None:
            return torch.sigmoid(logits)
        columns = self.temperatures[-logits.shape[1] :]  # a binary head: the abnormal one
        scale = torch.tensor([t or 1.0 for t in columns], device=logits.device)
        return torch.sigmoid(logits / scale)

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of the logits, in column order."""
        return OUTPUTS if self.head == "dual" else (ABNORMAL,)

    @property
    def preprocessing(self) -> dict[str, Any]:
        """How images must be prepared for this model: size, channels, normalisation, outputs.

        Normalisation follows the architecture, not whether ImageNet weights were loaded: a
        torchvision backbone always uses its ImageNet statistics (a timm one those of its
        pretrained tag), so from-scratch and ImageNet-initialised runs of one architecture share
        one input pipeline.
        """
        mean, std = _normalisation(self.arch, self.in_chans)
        return {
            "image_size": self.image_size,
            "in_chans": self.in_chans,
            "mean": mean,
            "std": std,
            "outputs": list(self.output_names),
        }

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected input of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}"
            )
        pooled = self.head_dropout(torch.flatten(self.pool(self.backbone(x)), 1))
        abnormal = self.abnormal_head(pooled)
        if self.findings_head is None:
            return abnormal
        return torch.cat([self.findings_head(pooled), abnormal], dim=1)

    def cam_layer(self) -> nn.Module:
        """The module whose output is the last feature map: Grad-CAM's target (see cam_target)."""
        return self.cam_target()[0]

    def cam_target(self) -> tuple[nn.Module, Callable[[Tensor], Tensor] | None]:
        """(layer, reshape): Grad-CAM's target layer and the function turning its output into
        (B, C, h, w), None where it already is (every built-in architecture; timm CNNs). A timm
        ViT's layer gives (B, prefix + h * w, C) tokens, a Swin's (B, h, w, C)."""
        if is_timm_arch(self.arch):
            return timm_backbones.cam_target(self.backbone)
        return self.backbone.get_submodule(_architecture(self.arch).cam_layer), None

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if id(p) not in backbone_ids]

    # --- Hugging Face Hub mixin -------------------------------------------------------------
    def save_pretrained(
        self, save_directory: str | Path, *, config: dict | None = None, **kwargs: Any
    ) -> str | None:
        """Write model.safetensors, config.json and a README model card to `save_directory`.

        config.json holds the constructor arguments and `preprocessing` (and for a timm
        architecture `timm_version`); keys in `config` (for example decision thresholds) are
        added, but cannot override those.
        """
        versions = (
            {"timm_version": timm_backbones.timm_version()} if is_timm_arch(self.arch) else {}
        )
        full_config = {
            **(config or {}),
            **self.build_config,
            **versions,
            "preprocessing": self.preprocessing,
        }
        return super().save_pretrained(save_directory, config=full_config, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        **model_kwargs: Any,
    ) -> ChestClassifier:
        """Load a model folder or Hub repo, refusing one whose config.json or weights disagree
        with this package (ModelFolderError, a ValueError naming the folder, file and field)."""
        model_id = str(pretrained_model_name_or_path)
        local = Path(model_id).is_dir()
        where = model_id if local or revision is None else f"{model_id}@{revision}"
        if local:
            config_path = Path(model_id) / CONFIG_FILE
        else:
            config_path = Path(
                hf_hub_download(
                    repo_id=model_id,
                    filename=CONFIG_FILE,
                    revision=revision,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    token=token,
                    local_files_only=local_files_only,
                )
            )
        check_model_config(read_model_config(config_path, where), where)
        # The mixin reads config.json again (from the Hub's cache for a repo) to rebuild.
        return super().from_pretrained(
            model_id,
            force_download=force_download,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            revision=revision,
            **model_kwargs,
        )

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> ChestClassifier:
        """Rebuild from config.json, then load model.safetensors — and only that file.

        Replaces the mixin's loader, which defaults to strict=False (silently keeping random
        weights for missing keys), falls back to pickled pytorch_model.bin, and prints to stdout
        (which would corrupt `chexvision predict --json`).
        """
        model = cls(**model_kwargs)
        local = Path(model_id).is_dir()
        where = model_id if local or revision is None else f"{model_id}@{revision}"
        if local:
            weights = Path(model_id) / WEIGHTS_FILE
            if not weights.is_file():
                raise FileNotFoundError(
                    f"{where}: no {WEIGHTS_FILE} (pickled checkpoints are not loaded)"
                )
        else:
            weights = Path(
                hf_hub_download(
                    repo_id=model_id,
                    filename=WEIGHTS_FILE,
                    revision=revision,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    token=token,
                    local_files_only=local_files_only,
                )
            )
        check_weights(model, weights, where, strict)
        safetensors.torch.load_model(model, weights, strict=strict, device=str(map_location))
        return model.eval()


# --------------------------------------------------------------------------------------------
# Pretrained backbones from local torchvision files.
# --------------------------------------------------------------------------------------------
WEIGHT_SUFFIXES: tuple[str, ...] = (".pth", ".pt", ".safetensors")


def find_pretrained_weights(arch: str, pretrained: str | Path) -> Path:
    """Locate a local torchvision state_dict for `arch`; never downloads.

    `pretrained` is "imagenet" (torchvision's IMAGENET1K_V1 file in the torch hub cache, where
    torchvision itself would have saved it) or a path to a .pth/.pt/.safetensors file. For a
    timm architecture: "imagenet" (its tag's model.safetensors in the Hugging Face cache) or a
    path to a .safetensors file (see `timm_backbones.find_weights`).
    """
    if is_timm_arch(arch):
        check_model_name(arch)
        return timm_backbones.find_weights(arch, pretrained)
    spec = _architecture(arch)
    if spec.imagenet_weights is None:
        raise ValueError(
            f"arch {arch!r} is trained from scratch and has no pretrained weights; "
            "use pretrained=None"
        )
    if str(pretrained) == "imagenet":
        return _imagenet_weights_in_hub_cache(arch, spec.imagenet_weights)
    path = Path(pretrained).expanduser()
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"pretrained must be 'imagenet' or a path ending in {', '.join(WEIGHT_SUFFIXES)}; "
            f"got {str(pretrained)!r}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file for {arch!r} not found: {path}")
    return path


def _imagenet_weights_in_hub_cache(arch: str, weights: WeightsEnum) -> Path:
    filename = weights.url.rsplit("/", 1)[-1]
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights for {arch!r} not found: looked for {path} (the torch hub cache, "
            f"torch.hub.get_dir(); set TORCH_HOME to move it). Nothing is downloaded. Either put "
            f"torchvision's file {filename} (from {weights.url}) there, or pass "
            f"pretrained=<path to a .pth/.pt/.safetensors torchvision state_dict of {arch}>."
        )
    return path


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load_file(str(path), device="cpu")
        with warnings.catch_warnings():  # torch warns about the pickle protocol of any file
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refused a pickled object
        # torch's message suggests weights_only=False, the one thing never to do here.
        reason = next(
            (line.strip() for line in str(error).splitlines() if "Unsupported" in line),
            "it holds Python objects, not only tensors",
        )
        raise ValueError(
            f"{path}: refused to unpickle ({reason}); pass a safetensors file or a plain "
            "state_dict of tensors"
        ) from None
    except safetensors.SafetensorError as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a torchvision state_dict (names -> tensors)")
    return state


# Old torchvision DenseNet checkpoints name layers 'norm.1', 'conv.2', ...; modules can no
# longer have dots in their names, so torchvision's own loader renames them to 'norm1', 'conv2'.
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _torchvision_to_backbone_state(
    spec: _Architecture, state: dict[str, Tensor], in_chans: int
) -> dict[str, Tensor]:
    """Rename legacy keys, drop the classifier keys and convert the first conv to grey."""
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.startswith(spec.dropped_key_prefixes):
            continue
        legacy = _LEGACY_DENSENET_KEY.match(key)
        converted[legacy.group(1) + legacy.group(2) if legacy else key] = value
    first_conv_key = f"{spec.first_conv}.weight"
    first_conv = converted.get(first_conv_key)
    if in_chans == 1 and first_conv is not None and first_conv.shape[1] == 3:
        converted[first_conv_key] = _sum_rgb_weights(first_conv)
    return converted


def load_backbone_weights(model: ChestClassifier, path: str | Path) -> None:
    """Load a torchvision state_dict of `model.arch` into `model.backbone`: all of it, or fail.

    Every backbone parameter and buffer must come from the file (BatchNorm's num_batches_tracked
    may be absent: old torchvision files predate it), and every file key other than the
    replaced classifier must be used: a partial load is an error, never a silent fallback.
    """
    path = Path(path)
    if is_timm_arch(model.arch):  # timm converts and checks its own weights, as strictly
        timm_backbones.load_weights(
            model.backbone, model.arch, path, model.in_chans, model.image_size
        )
        return
    spec = _architecture(model.arch)
    state = _torchvision_to_backbone_state(spec, _read_state_dict(path), model.in_chans)
    expected = set(model.backbone.state_dict())
    missing = sorted(k for k in expected - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the {model.arch} backbone: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]} (expected a torchvision {model.arch} state_dict)"
        )
    try:
        model.backbone.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches, e.g. a resnet34 file for resnet18
        raise ValueError(f"{path} does not fit the {model.arch} backbone: {error}") from error


def build_model(
    arch: str,
    *,
    image_size: int = 256,
    in_chans: int = 1,
    head: str = "dual",
    dropout: float = 0.0,
    pretrained: str | Path | None = None,
) -> ChestClassifier:
    """Build a registered architecture, optionally starting from local pretrained weights.

    `pretrained`: None (random initialisation), "imagenet" (torchvision's file in the torch hub
    cache; for timm/<name>, timm's file in the Hugging Face cache) or a path to a torchvision
    state_dict (.pth, .pt or .safetensors; timm weights: .safetensors). The heads are always
    new. Raises FileNotFoundError, saying where it looked, when the weights are not on disk.
    """
    weights_path = find_pretrained_weights(arch, pretrained) if pretrained is not None else None
    model = ChestClassifier(arch, image_size, in_chans, head, dropout)
    if weights_path is not None:
        load_backbone_weights(model, weights_path)
    return model
