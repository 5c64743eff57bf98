"""timm backbones: any `timm.list_models()` name as an architecture, written `timm/<name>`.

`timm/convnext_tiny` is timm's convnext_tiny built with `num_classes=0` (timm's own pooling, no
classifier) and `in_chans` input channels; `registry.ChestClassifier` puts our heads on it, so
training, saving and loading are the same as for the built-in architectures. A pretrained tag
may follow the name (`timm/convnext_tiny.fb_in22k_ft_in1k`, which is also its Hub repo): it picks
the normalisation and the ImageNet weights; without one, timm's default tag is used.

Transformers (timm's `fixed_input_size` models: ViT, DeiT, Swin, ...) are built for the requested
image size (`img_size`), so their position embeddings fit it. Which sizes a model takes is found
by building it on the meta device (no memory, no compute) and running an empty batch through it.

Pretrained weights come only from local files: the Hugging Face cache (timm's weights are the Hub
repos `timm/<name>.<tag>`, file model.safetensors) or a safetensors file; nothing downloads.
timm converts them (its checkpoint filter resamples position embeddings, and `adapt_input_conv`
sums the RGB filters of the first convolution for one grey channel) and loads them strictly.

timm is imported inside the functions: the built-in architectures never pay for it.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

PREFIX = "timm/"
WEIGHTS_FILENAME = "model.safetensors"  # what every timm/<name>.<tag> Hub repo holds
# The same floor as the built-in architectures: 32 px, the total stride of five stride-2 stages.
MIN_IMAGE_SIZE = 32

ReshapeTransform = Callable[[Tensor], Tensor]


def is_timm_arch(arch: object) -> bool:
    """Whether `arch` is written as a timm architecture (timm/<name>); says nothing of validity."""
    return isinstance(arch, str) and arch.startswith(PREFIX)


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise ImportError("timm/ architectures need timm: pip install timm") from None
    return timm


def timm_version() -> str:
    return str(_timm().__version__)


def _timm_name(arch: str) -> str:
    return arch[len(PREFIX) :]


@functools.cache
def _model_names() -> frozenset[str]:
    return frozenset(_timm().list_models())


def check_timm_arch(arch: str, parameter: str = "arch") -> None:
    """ValueError naming `parameter` unless `arch` is timm/<a timm.list_models() name>[.<tag>]."""
    name = _timm_name(arch)
    base, _, tag = name.partition(".")
    names = _model_names()
    if base not in names:
        close = difflib.get_close_matches(base, sorted(names), n=5, cutoff=0.6)
        hint = (
            f"close names: {', '.join(PREFIX + c for c in close)}"
            if close
            else "see timm.list_models()"
        )
        raise ValueError(
            f"{parameter}: {arch!r} is not a timm model ({base!r} is not in timm.list_models() "
            f"of timm {timm_version()}); {hint}"
        )
    if tag:
        tags = [n.partition(".")[2] for n in _timm().list_pretrained(f"{base}.*")]
        if tag not in tags:
            offered = ", ".join(tags) if tags else "none: it has no pretrained weights"
            raise ValueError(
                f"{parameter}: {arch!r} names an unknown pretrained tag {tag!r} of timm model "
                f"{base!r}; its tags: {offered}"
            )


@functools.cache
def _pretrained_cfg(arch: str) -> Any:
    """timm's PretrainedCfg of the name's tag (timm's default tag when it has none)."""
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(_timm_name(arch))
    return cfg if cfg is not None else timm.models.PretrainedCfg()


def normalisation(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per RGB channel that the tag's weights were trained with (timm's pretrained
    config; ImageNet's statistics for most, 0.5 / 0.5 for many ViTs)."""
    cfg = _pretrained_cfg(arch)
    return tuple(float(m) for m in cfg.mean), tuple(float(s) for s in cfg.std)


def normalisation_name(arch: str) -> str:
    """How messages name that normalisation."""
    cfg = _pretrained_cfg(arch)
    return f"timm {cfg.architecture}.{cfg.tag}" if cfg.tag else "timm"


# --------------------------------------------------------------------------------------------
# Building, on the meta device to learn a model's shape and the sizes it takes.
# --------------------------------------------------------------------------------------------
@functools.cache
def _takes_img_size(arch: str) -> bool:
    """Whether the model is built for one input size that we choose (timm's fixed_input_size
    models whose constructor accepts img_size: their position embeddings are sized by it)."""
    cfg = _pretrained_cfg(arch)
    if not cfg.fixed_input_size:
        return False
    try:
        with torch.device("meta"):
            _timm().create_model(_timm_name(arch), num_classes=0, img_size=cfg.input_size[-1])
    except TypeError as error:
        if "img_size" in str(error):
            return False  # built for its pretrained size only; a forward at others fails
        raise
    return True


def _create(arch: str, in_chans: int, image_size: int, **kwargs: Any) -> nn.Module:
    size = {"img_size": image_size} if _takes_img_size(arch) else {}
    return _timm().create_model(_timm_name(arch), in_chans=in_chans, **size, **kwargs)


def build_backbone(arch: str, in_chans: int, image_size: int) -> nn.Module:
    """The timm model without classifier: (B, in_chans, S, S) -> pooled features (B, C)."""
    return _create(arch, in_chans, image_size, pretrained=False, num_classes=0)


@functools.lru_cache(maxsize=32)
def _meta_model(arch: str, in_chans: int, image_size: int | None) -> nn.Module:
    """The model built without weights, in eval mode (batch norm on a batch of one).

    `image_size` None: a model whose shape does not depend on it. Models that cannot be built on
    the meta device (an initialisation reading values) are built on the CPU instead.
    """
    size = image_size if image_size is not None else _pretrained_cfg(arch).input_size[-1]
    try:
        with torch.device("meta"):
            model = _create(arch, in_chans, size, num_classes=0)
    except (NotImplementedError, RuntimeError) as error:
        if "meta" not in str(error):
            raise
        model = _create(arch, in_chans, size, num_classes=0)
    return model.eval()


def _is_token_model(model: nn.Module) -> bool:
    """ViT-style: a sequence of blocks over (B, prefix tokens + h * w patch tokens, C)."""
    return hasattr(model, "num_prefix_tokens") and isinstance(
        getattr(model, "blocks", None), nn.Sequential | nn.ModuleList
    )


@dataclass(frozen=True)
class _Shape:
    num_features: int  # C of the pooled features
    reduction: int  # total stride of the last feature map
    patch: int | None  # ViT-style models: image sizes must be multiples of this


@functools.cache
def _shape(arch: str) -> _Shape:
    natural = _pretrained_cfg(arch).input_size[-1]
    model = _meta_model(arch, 1, natural if _takes_img_size(arch) else None)
    problem = _forward_problem(model, 1, natural)
    if problem is not None:
        raise ValueError(f"{arch} does not run at its own input size {natural} px: {problem}")
    # What the pooled output holds: the pre-logits width where timm's head has one, else the
    # feature map's channels.
    features = getattr(model, "head_hidden_size", None) or model.num_features
    info = getattr(model, "feature_info", None) or [{}]
    reduction = int(info[-1].get("reduction", MIN_IMAGE_SIZE))
    return _Shape(int(features), reduction, reduction if _is_token_model(model) else None)


def num_features(arch: str) -> int:
    return _shape(arch).num_features


@functools.lru_cache(maxsize=256)
def _size_problem(arch: str, in_chans: int, image_size: int) -> str | None:
    """Why the model cannot take (B, in_chans, image_size, image_size); None when it can."""
    patch = _shape(arch).patch
    if patch is not None and image_size % patch:
        below, above = image_size // patch * patch, (image_size // patch + 1) * patch
        return (
            f"it cuts the image into {patch} x {patch} px patches, so the size must be a multiple "
            f"of {patch} (e.g. {below or above} or {above})"
        )
    model = _meta_model(arch, in_chans, image_size if _takes_img_size(arch) else None)
    return _forward_problem(model, in_chans, image_size)


def _forward_problem(model: nn.Module, in_chans: int, image_size: int) -> str | None:
    """What `model` raises on a batch of one (B, in_chans, image_size, image_size); None if
    nothing, or if only the meta device cannot run it (building for real will tell)."""
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, image_size, image_size, device=device))
    except Exception as error:  # whatever the model raises on an input it cannot take
        if device.type == "meta" and "meta" in str(error):
            return None
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"its forward pass fails ({type(error).__name__}: {reason[:200]})"
    return None


@functools.cache
def min_image_size(arch: str) -> int:
    """Smallest image size the model takes: >= 32 px and its total stride, a multiple of its
    patch size for ViT-style models (found by trying sizes on the meta device)."""
    shape = _shape(arch)
    step = shape.patch or (shape.reduction if _takes_img_size(arch) else 1)
    start = math.ceil(max(MIN_IMAGE_SIZE, shape.reduction) / step) * step
    natural = _pretrained_cfg(arch).input_size[-1]
    candidates = list(range(start, max(start, natural) + 1, step))
    lo, hi = 0, len(candidates) - 1
    # Binary search, assuming that a model that takes a size takes every larger candidate.
    while lo < hi:
        mid = (lo + hi) // 2
        if _size_problem(arch, 1, candidates[mid]) is None:
            hi = mid
        else:
            lo = mid + 1
    return candidates[lo]


def check_image_size(arch: str, image_size: int, in_chans: int) -> None:
    """ValueError naming the size and the model when the model cannot take `image_size`."""
    minimum = min_image_size(arch)
    if image_size < minimum:
        raise ValueError(
            f"image_size {image_size} is too small for {arch}: it takes at least {minimum} px"
        )
    problem = _size_problem(arch, in_chans, image_size)
    if problem is not None:
        raise ValueError(f"image_size {image_size} does not fit {arch}: {problem}")


# --------------------------------------------------------------------------------------------
# Grad-CAM's target layer.
# --------------------------------------------------------------------------------------------
def _tokens_to_map(tokens: Tensor, num_prefix_tokens: int) -> Tensor:
    """(B, prefix + h * w, C) -> (B, C, h, w): drop the class/register/distillation tokens."""
    patches = tokens[:, num_prefix_tokens:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
    return patches.reshape(len(patches), side, side, patches.shape[2]).permute(0, 3, 1, 2)


def _channels_last_to_first(features: Tensor) -> Tensor:
    """(B, h, w, C) -> (B, C, h, w)."""
    return features.permute(0, 3, 1, 2)


def cam_target(backbone: nn.Module) -> tuple[nn.Module, ReshapeTransform | None]:
    """(module, reshape): the module whose output Grad-CAM explains, and the function that turns
    that output into (B, C, h, w), or None when it already is.

    ViT-style models: the last block's norm1, whose tokens feed the last attention (the recipe
    of pytorch-grad-cam for ViTs); the prefix tokens are dropped. Other models: the last stage of
    timm's feature_info (the last convolutional stage of a CNN), permuted where timm keeps it
    channels-last (Swin: (B, h, w, C)).
    """
    if _is_token_model(backbone):
        block = backbone.blocks[-1]
        reshape = functools.partial(_tokens_to_map, num_prefix_tokens=backbone.num_prefix_tokens)
        return getattr(block, "norm1", block), reshape
    info = getattr(backbone, "feature_info", None)
    if not info:
        raise ValueError(
            f"no Grad-CAM layer known for {type(backbone).__name__} (timm gives no feature_info); "
            "pass layer=<the module giving the last feature map>"
        )
    module = backbone.get_submodule(info[-1]["module"])
    if getattr(backbone, "output_fmt", "NCHW") == "NHWC":
        return module, _channels_last_to_first
    return module, None


# --------------------------------------------------------------------------------------------
# Pretrained weights, from local files only.
# --------------------------------------------------------------------------------------------
def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder as the environment names it now (HF_HUB_CACHE, else
    HF_HOME/hub): the library reads them once, at import, and a notebook may set them later."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def find_weights(arch: str, pretrained: str | Path) -> Path:
    """The local safetensors file of `pretrained` for `arch`; never downloads.

    "imagenet": the tag's model.safetensors in the Hugging Face cache. Otherwise a path to a
    .safetensors file of timm weights, or a folder holding model.safetensors (a Kaggle Models
    mount, a downloaded repo).
    """
    if str(pretrained) == "imagenet":
        return _weights_in_hub_cache(arch)
    path = Path(pretrained).expanduser()
    if path.is_dir() and (path / WEIGHTS_FILENAME).is_file():
        path = path / WEIGHTS_FILENAME
    if path.suffix != ".safetensors":
        raise ValueError(
            f"pretrained for {arch} must be 'imagenet' or a path to a .safetensors file of timm "
            f"weights (or a folder holding {WEIGHTS_FILENAME}); got {str(pretrained)!r}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file for {arch} not found: {path}")
    return path


def _weights_in_hub_cache(arch: str) -> Path:
    from huggingface_hub import try_to_load_from_cache

    cfg = _pretrained_cfg(arch)
    repo = cfg.hf_hub_id
    if not repo:
        raise ValueError(
            f"{arch}: timm has no Hugging Face Hub weights for {cfg.architecture}.{cfg.tag}; "
            "pass pretrained=<path to a .safetensors file of its weights>"
        )
    cache = hub_cache_dir()
    found = try_to_load_from_cache(repo, WEIGHTS_FILENAME, cache_dir=cache)
    if isinstance(found, str) and Path(found).is_file():
        return Path(found)
    raise FileNotFoundError(
        f"ImageNet weights for {arch} not found: looked for {WEIGHTS_FILENAME} of the Hub repo "
        f"{repo} in the Hugging Face cache {cache / ('models--' + repo.replace('/', '--'))} "
        "(set HF_HUB_CACHE or HF_HOME to use another cache). Nothing is downloaded. Get it on a "
        f"machine with network with `hf download {repo} {WEIGHTS_FILENAME}` (huggingface_hub's "
        "CLI, `huggingface-cli download` before 0.34; it fills that cache), or pass "
        "pretrained=<path to that file>."
    )


def _classifier_rows(state: dict[str, Tensor], cfg: Any) -> int:
    """How many classes the file's classifier has (0 when the file has none)."""
    classifiers = (cfg.classifier,) if isinstance(cfg.classifier, str) else cfg.classifier or ()
    for name in classifiers:
        weight = state.get(f"{name}.weight")
        if weight is not None:
            return int(weight.shape[0])
    return 0


def load_weights(
    backbone: nn.Module, arch: str, path: Path, in_chans: int, image_size: int
) -> None:
    """Load timm weights from a safetensors file into `backbone`: all of them, or ValueError.

    timm builds the model with the file's classifier and loads the file strictly, through the
    model's checkpoint filter (position embeddings resampled for image_size) and, for one grey
    channel, `adapt_input_conv` (RGB filters summed); then the classifier goes and the rest is
    copied into `backbone`, again strictly.
    """
    try:
        state = safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, OSError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    classes = _classifier_rows(state, _pretrained_cfg(arch))
    # The file's own class count keeps timm's load strict (a different one drops the
    # classifier and lets every other missing key pass too); label_offset would cut it.
    overlay = {"state_dict": state, "num_classes": classes, "label_offset": 0}
    try:
        loaded = _create(
            arch,
            in_chans,
            image_size,
            pretrained=True,
            num_classes=classes,
            pretrained_cfg_overlay=overlay,
        )
        loaded.reset_classifier(0)
        backbone.load_state_dict(loaded.state_dict(), strict=True)
    except (RuntimeError, KeyError, ValueError) as error:
        raise ValueError(
            f"{path} does not fit the {arch} backbone: {_load_problems(error)} (expected timm "
            f"weights of {_timm_name(arch).partition('.')[0]})"
        ) from None


def _load_problems(error: Exception) -> str:
    """torch's load_state_dict error, its key lists shortened to counts and a few names."""
    text = str(error)
    problems = []
    for kind, label in (("Missing", "missing"), ("Unexpected", "unexpected")):
        found = re.search(rf'{kind} key\(s\) in state_dict: ((?:"[^"]*"(?:, )?)+)', text)
        if found:
            keys = re.findall(r'"([^"]*)"', found.group(1))
            problems.append(f"{len(keys)} {label} keys {keys[:5]}")
    reshaped = re.findall(r"size mismatch for ([\w.]+)", text)
    if reshaped:
        problems.append(f"{len(reshaped)} tensors of another shape {reshaped[:5]}")
    return "; ".join(problems) or " ".join(text.split())[:300]
