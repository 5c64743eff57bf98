"""Explain a model's predictions: CAM maps, overlays, and localisation scores against boxes.

Grad-CAM (Selvaraju et al. 2017) weights each channel k of a convolutional feature map A by the
spatial mean of the target logit's gradient, alpha_k = mean_ij d y / d A_kij, and keeps the positive
part of the weighted sum, ReLU(sum_k alpha_k A_k). The maps are computed by pytorch-grad-cam
(PyPI `grad-cam`), which also offers Grad-CAM++, Score-CAM, Eigen-CAM and others by name (see
`cam_methods`); `grad_cam` wraps it for our models: OUTPUTS indices as targets (the binary head
included), float32 whatever the caller's autocast, no parameter's `.grad`, hook or train/eval
mode changed by the call. The localisation scoring and the random-map control are our own.

Localisation is scored against NIH's `BBox_List_2017.csv` boxes (984 boxes, 8 findings), whose
coordinates are pixels of the 1024 x 1024 PNG files of the release. Our cache squashes every image
to a square without keeping the aspect ratio (see `image_io`), so a map of any resolution covers
the whole original image and maps to it by scaling each axis on its own.

Two scores, each also computed for a random-map control so a reader can see what chance gives:
- pointing game (Zhang et al. 2016): a hit when the map's peak lies inside a box of the finding;
  the peak is the maximal cell of the map at its own (feature-map) resolution, see `pointing_game`;
- IoBB and IoU at map thresholds: the map is binarised at `threshold * max` and compared with the
  union of the finding's boxes (see `iobb_iou` for how this differs from Wang et al. 2017).
"""

from __future__ import annotations

import csv
import gzip
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chexvision_lib.core.labels import ABNORMAL, OUTPUTS, canonical_finding
from chexvision_lib.explain import cam_methods
from chexvision_lib.explain.cam_methods import DEFAULT_CAM_METHOD, display_name

# The labels.OUTPUTS index of "Abnormal": a binary-head model's only output answers to it too.
ABNORMAL_INDEX = OUTPUTS.index(ABNORMAL)
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.1, 0.25, 0.5)
# A localisation counts as correct when IoBB exceeds this (the middle T(IoBB) of Wang et al.).
IOBB_ACCEPT = 0.5
BBOX_COLUMNS: tuple[str, ...] = ("image_id", "finding", "x", "y", "w", "h")
GRAD_CAM = "grad_cam"
RANDOM_CONTROL = "random"
ALL_FINDINGS = "all"

Size = int | tuple[int, int]  # an original image size: side of a square, or (width, height)
# Turns a CAM layer's output into (B, C, h, w) (a ViT's tokens, a Swin's channels-last maps).
Reshape = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------------------------
# CAM maps (pytorch-grad-cam)
# --------------------------------------------------------------------------------------------
@dataclass
class CamResult:
    """A CAM of a batch; arrays are float32 numpy."""

    raw: np.ndarray  # (B, h, w): the method's map at the feature map's resolution, ReLU'd
    maps: np.ndarray  # (B, H, W) in [0, 1]: raw upsampled bilinearly to the input, min-max scaled
    scores: np.ndarray  # (B,): the target logits
    method: str = DEFAULT_CAM_METHOD  # a cam_methods name


def grad_cam(
    model: nn.Module,
    x: Tensor,
    targets: Sequence[int] | int,
    layer: nn.Module | None = None,
    *,
    method: str = DEFAULT_CAM_METHOD,
) -> CamResult:
    """The CAM `method` (default Grad-CAM) of `targets` for the batch `x` (normalised float
    (B, C, H, W), any memory format), computed by pytorch-grad-cam.

    `targets`: one output index (labels.OUTPUTS order) for every image, or one per image. For a
    binary-head model, whose only output is "Abnormal", both 0 and 14 (the OUTPUTS index of
    "Abnormal") select it, so callers can always use OUTPUTS indices. Each image is explained
    through its target's logit (the library's ClassifierOutputTarget: the raw logit, not the
    sigmoid, whose gradient would fade as the probability nears 0 or 1).
    `layer`: the module whose output is the feature map; defaults to the model's `cam_target()`
    layer (with its reshape: a ViT's tokens or a Swin's (B, h, w, C) output made (B, C, h, w)),
    else its `cam_layer()`. If the layer runs more than once in a forward pass, the library uses
    its first call.
    `method`: a name in `cam_methods.CAM_METHODS` ("gradcam", "gradcam++", "scorecam", ...).
    `raw` is the library's per-layer map (for Grad-CAM sum_k alpha_k A_k) after ReLU, at the
    feature map's resolution; `maps` upsamples it with `upsample_and_normalise`.

    The pass runs in float32 with autocast disabled, whatever the caller's autocast or no_grad
    context: models trained under AMP keep float32 weights, and float16 gradients of one logit
    through a deep network can underflow (training avoids that with loss scaling, which this pass
    does not have). The model must hold float32 weights.
    The library puts the model in eval mode (dropout off, batch-norm running statistics) for the
    pass; every module's train/eval mode is restored afterwards, and so are the parameters'
    `requires_grad` and `.grad` (the library's backward pass would otherwise write them). No hook
    outlives the call.
    """
    spec = cam_methods.cam_method(method)
    layer, reshape = _cam_target(model, layer)
    num_outputs = len(model.output_names) if hasattr(model, "output_names") else None
    if num_outputs is not None:  # a ChestClassifier: check targets before any compute
        indices = _target_indices(targets, len(x), num_outputs)
    modes = [(module, module.training) for module in model.modules()]
    parameters = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        # inference_mode(False) + enable_grad: work even when called under no_grad/inference_mode.
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(device_type=x.device.type, enabled=False),
        ):
            model.eval()
            # `clone` keeps the memory format (channels_last stays channels_last).
            inputs = x.detach().clone().float()
            if num_outputs is None:  # any other module: one image tells how many outputs
                with torch.no_grad():
                    num_outputs = _check_logits(model(inputs[:1]), 1).shape[1]
                indices = _target_indices(targets, len(x), num_outputs)
            # Gradients are needed for the feature map only: frozen parameters spare the
            # backward pass their gradients, and an input that requires grad keeps the graph.
            for parameter, _, _ in parameters:
                parameter.requires_grad_(False)
            inputs.requires_grad_(True)
            step = spec.images_per_pass or len(x)
            parts = [
                _library_cam(
                    spec.name, model, (layer, reshape), inputs[i : i + step], indices[i : i + step]
                )
                for i in range(0, len(x), step)
            ]
    finally:
        for parameter, requires_grad, grad in parameters:
            parameter.requires_grad_(requires_grad)
            parameter.grad = grad
        for module, training in modes:
            module.training = training
    raw = np.concatenate([part[0] for part in parts])
    scores = np.concatenate([part[1] for part in parts])
    maps = upsample_and_normalise(torch.from_numpy(raw), tuple(x.shape[-2:]))
    return CamResult(raw=raw, maps=maps.numpy(), scores=scores, method=spec.name)


def _library_cam(
    method: str,
    model: nn.Module,
    target: tuple[nn.Module, Reshape | None],
    inputs: Tensor,
    indices: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """(raw (B, h, w), target logits (B,)) of one pytorch-grad-cam call on `target`, a layer
    and the reshape making its output (B, C, h, w) (None: it already is)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer, reshape = target
    # Constructing the method registers the library's hooks on the layer (and calls eval()); the
    # library applies `reshape` to the layer's output and to its gradient.
    cam = cam_methods.cam_class(method)(
        model=model, target_layers=[layer], reshape_transform=reshape
    )
    ran: list[bool] = []

    def check_feature_map(_module: nn.Module, _inputs: Any, output: Any) -> None:
        ran.append(True)
        if isinstance(output, Tensor) and reshape is not None:
            output = reshape(output.detach())
        if not isinstance(output, Tensor) or output.ndim != 4:
            raise ValueError(
                f"layer {type(layer).__name__} must output a (B, C, h, w) tensor for a CAM"
                + (" after its reshape" if reshape is not None else "")
            )

    def hand_on_a_copy(_module: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
        # The library keeps `output` (on the CPU, without copying it); the rest of the network
        # gets a copy, so an in-place op after the layer (DenseNet-style ReLU(inplace=True))
        # cannot overwrite the activation the map is made of.
        return output.clone()

    layer_maps: list[np.ndarray] = []
    library_cam_image = cam.get_cam_image

    def keep_layer_map(*args: Any, **kwargs: Any) -> np.ndarray:
        # The library scales its maps to [0, 1] at the input's size; the map before that, at
        # the feature map's resolution, is what the pointing game and the control need.
        layer_map = library_cam_image(*args, **kwargs)
        layer_maps.append(layer_map)
        return layer_map

    cam.get_cam_image = keep_layer_map
    handles = [
        layer.register_forward_hook(check_feature_map, prepend=True),  # before the library's
        layer.register_forward_hook(hand_on_a_copy),  # after them
    ]
    try:
        try:
            cam(inputs, targets=[ClassifierOutputTarget(int(i)) for i in indices])
        except (AttributeError, IndexError, TypeError):
            # What the library raises when it has no activation or gradient to work with.
            if not ran:
                raise ValueError(
                    f"layer {type(layer).__name__} did not run in the forward pass"
                ) from None
            if cam.uses_gradients and not cam.activations_and_grads.gradients:
                raise ValueError(
                    f"the logits do not depend on layer {type(layer).__name__}"
                ) from None
            raise
        logits = _check_logits(cam.outputs, len(inputs))
        index = torch.tensor(list(indices), device=logits.device)[:, None]
        scores = logits.detach().gather(1, index)[:, 0].float().cpu().numpy()
    finally:
        for handle in handles:
            handle.remove()
        cam.activations_and_grads.release()
    raw = np.maximum(np.asarray(layer_maps[0], dtype=np.float32), 0)
    return raw, scores


def _check_logits(logits: Any, batch_size: int) -> Tensor:
    if not isinstance(logits, Tensor) or logits.ndim != 2 or len(logits) != batch_size:
        raise ValueError("the model must return logits of shape (B, outputs)")
    return logits


def _cam_target(model: nn.Module, layer: nn.Module | None) -> tuple[nn.Module, Reshape | None]:
    """The layer to explain and its reshape: `layer` as given, else the model's own choice."""
    if layer is not None:
        return layer, None
    if hasattr(model, "cam_target"):
        return model.cam_target()
    if not hasattr(model, "cam_layer"):
        raise ValueError(
            f"{type(model).__name__} has no cam_target() or cam_layer(); pass layer=<the "
            "feature-map module>"
        )
    return model.cam_layer(), None


def _target_indices(targets: Sequence[int] | int, batch_size: int, num_outputs: int) -> list[int]:
    """One valid output index per image, or ValueError naming `targets` and what is accepted."""
    if isinstance(targets, (Tensor, np.ndarray)):
        targets = targets.tolist()
    values = [targets] * batch_size if isinstance(targets, (int, np.integer)) else list(targets)
    if len(values) != batch_size:
        raise ValueError(
            f"targets must be one index or {batch_size} (one per image), got {len(values)}"
        )
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"targets must be integer output indices, got {values!r}")
    if num_outputs == 1:  # binary head: its one output is "Abnormal", OUTPUTS index 14
        bad = [int(v) for v in values if v not in (0, ABNORMAL_INDEX)]
        if bad:
            raise ValueError(
                f"targets for a binary-head model must be 0 or {ABNORMAL_INDEX} (the "
                f"labels.OUTPUTS index of {ABNORMAL!r}); got {bad[0]}"
            )
        return [0] * batch_size
    bad = [int(v) for v in values if not 0 <= v < num_outputs]
    if bad:
        raise ValueError(
            f"targets must be output indices in [0, {num_outputs - 1}] (labels.OUTPUTS order); "
            f"got {bad[0]}"
        )
    return [int(v) for v in values]


def upsample_and_normalise(raw: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, h, w) -> (B, H, W) float32: bilinear upsampling, then per-image min-max to [0, 1].

    A constant map has no range to scale: all-zero stays zero, a constant positive map becomes ones.
    """
    maps = F.interpolate(raw[:, None].float(), size=size, mode="bilinear", align_corners=False)[
        :, 0
    ]
    flat = maps.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - low
    scaled = (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny)
    return torch.where(span > 0, scaled, (maps > 0).float())


# --------------------------------------------------------------------------------------------
# Overlays
# --------------------------------------------------------------------------------------------
def overlay(
    grey_uint8: np.ndarray, cam_map: np.ndarray, alpha: float = 0.4, colormap: str = "jet"
) -> np.ndarray:
    """Blend a [0, 1] map, coloured with a matplotlib colormap, over a grey image.

    Returns (H, W, 3) uint8 RGB = round(255 * ((1 - alpha) * grey / 255 + alpha * colour(map))).
    `colormap` is any name in `matplotlib.colormaps` ("jet" as in most Grad-CAM figures;
    "inferno"/"viridis" are perceptually uniform). Both arrays must have the same (H, W): resize
    the map (e.g. `upsample_and_normalise`) or the image first.
    """
    grey = np.asarray(grey_uint8)
    heat = np.asarray(cam_map, dtype=np.float64)
    if grey.dtype != np.uint8 or grey.ndim != 2:
        raise ValueError(f"grey_uint8 must be a 2-D uint8 array, got {grey.dtype} {grey.shape}")
    if heat.shape != grey.shape:
        raise ValueError(f"cam_map shape {heat.shape} must equal grey_uint8 shape {grey.shape}")
    if not (np.isfinite(heat).all() and heat.min() >= -1e-6 and heat.max() <= 1 + 1e-6):
        raise ValueError("cam_map must hold finite values in [0, 1] (CamResult.maps does)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    colours = _colormap(colormap)(np.clip(heat, 0.0, 1.0))[..., :3]
    blended = (1.0 - alpha) * grey[..., None] / 255.0 + alpha * colours
    return np.clip(np.round(blended * 255.0), 0, 255).astype(np.uint8)


def _colormap(name: str) -> Any:
    # Imported here: the rest of the module (and training code importing it) needs no matplotlib.
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(
            f"unknown colormap {name!r}; expected a name in matplotlib.colormaps, e.g. jet, inferno"
        ) from None


# --------------------------------------------------------------------------------------------
# NIH boxes
# --------------------------------------------------------------------------------------------
def read_bbox_list(path: str | Path) -> pd.DataFrame:
    """Read NIH's BBox_List_2017.csv (or .csv.gz) -> columns image_id, finding, x, y, w, h.

    The header `Image Index,Finding Label,Bbox [x,y,w,h],,,` splits "Bbox [x,y,w,h]" into four
    fields, so the file is read by position: image, finding, x, y, w, h, then only empty fields.
    Findings are canonical (`Infiltrate` -> `Infiltration`). Coordinates are pixels of the image
    file the box was drawn on (1024 x 1024 for NIH). Bad rows raise ValueError naming file and line.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows or [f.strip() for f in rows[0][:2]] != ["Image Index", "Finding Label"]:
        first = ",".join(rows[0]) if rows else "<empty file>"
        raise ValueError(
            f"{path}: line 1 must be the NIH header 'Image Index,Finding Label,Bbox [x,y,w,h],,,'; "
            f"got {first!r}"
        )
    records = [
        _bbox_record(path, line_number, fields)
        for line_number, fields in enumerate(rows[1:], start=2)
        if any(f.strip() for f in fields)
    ]
    frame = pd.DataFrame(records, columns=list(BBOX_COLUMNS))
    return frame.astype(
        {"image_id": str, "finding": str, "x": float, "y": float, "w": float, "h": float}
    )


def _bbox_record(path: Path, line_number: int, fields: list[str]) -> tuple[Any, ...]:
    where = f"{path}: line {line_number}"
    if len(fields) < 6 or any(f.strip() for f in fields[6:]):
        raise ValueError(f"{where}: expected 'image,finding,x,y,w,h', got {','.join(fields)!r}")
    image_id = fields[0].strip()
    if not image_id:
        raise ValueError(f"{where}: empty Image Index")
    try:
        finding = canonical_finding(fields[1])
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    try:
        x, y, w, h = (float(f) for f in fields[2:6])
    except ValueError:
        raise ValueError(
            f"{where}: box must be four numbers x,y,w,h, got {fields[2:6]!r}"
        ) from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"{where}: box needs finite x, y and positive w, h; got {x, y, w, h}")
    return image_id, finding, x, y, w, h


# --------------------------------------------------------------------------------------------
# Scores for one map. Maps and original images cover the same field of view, so map cell
# (r, c) of an (h, w) map is the original rectangle [c W/w, (c+1) W/w) x [r H/h, (r+1) H/h).
# --------------------------------------------------------------------------------------------
def _width_height(original_size: Size) -> tuple[int, int]:
    if isinstance(original_size, (int, np.integer)):
        width = height = int(original_size)
    else:
        width, height = (int(v) for v in original_size)
    if width <= 0 or height <= 0:
        raise ValueError(
            f"original_size must be positive: a side or (width, height), got {original_size!r}"
        )
    return width, height


def _boxes_array(boxes_xywh: Any) -> np.ndarray:
    boxes = np.asarray(boxes_xywh, dtype=np.float64)
    boxes = boxes[None] if boxes.ndim == 1 else boxes
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise ValueError(
            f"boxes_xywh must be one box (x, y, w, h) or an array (K, 4), got {boxes.shape}"
        )
    if not np.isfinite(boxes).all() or (boxes[:, 2:] <= 0).any():
        raise ValueError(f"boxes_xywh need finite x, y and positive w, h; got {boxes.tolist()}")
    return boxes


def _map_array(cam_map: Any) -> np.ndarray:
    heat = np.asarray(cam_map, dtype=np.float64)
    if heat.ndim != 2 or heat.size == 0 or not np.isfinite(heat).all():
        raise ValueError(f"cam_map must be a finite 2-D array, got shape {heat.shape}")
    return heat


def pointing_game(cam_map: np.ndarray, boxes_xywh: Any, original_size: Size) -> bool:
    """True when the map's peak lies inside any of the boxes (borders included).

    The peak is the first maximal cell (numpy argmax order), placed at that cell's centre in the
    original image's pixel coordinates: ((c + 0.5) W / w, (r + 0.5) H / h) for an (h, w) map.
    Give it the raw map at the feature map's resolution (`CamResult.raw`), as
    `localisation_pair_scores` does, not the upsampled one: bilinear upsampling keeps an edge
    cell's value undiluted over the outer half of the cell (the image border clamps it), while
    an interior peak is blended with its lower neighbours at every output pixel, so in the
    upsampled map an edge cell within 1-2 % of the true peak takes the argmax.
    A map with no positive value points nowhere and is a miss (a dead CAM earns no hit).
    `original_size`: the size of the image the boxes refer to, an int for a square (1024 for NIH)
    or (width, height).
    """
    heat = _map_array(cam_map)
    boxes = _boxes_array(boxes_xywh)
    width, height = _width_height(original_size)
    if not heat.max() > 0:
        return False
    row, col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    px = (col + 0.5) * width / heat.shape[1]
    py = (row + 0.5) * height / heat.shape[0]
    x, y, w, h = boxes.T
    return bool(np.any((x <= px) & (px <= x + w) & (y <= py) & (py <= y + h)))


def iobb_iou(
    cam_map: np.ndarray, boxes_xywh: Any, original_size: Size, threshold: float
) -> tuple[float, float]:
    """(IoBB, IoU) of the map binarised at `threshold * max(map)` against the union of the boxes.

    Mask M = {map >= threshold * max} (empty when the map is all zero); B = the boxes' union. Both
    are measured in original pixels: an original pixel is in M when the map cell containing its
    centre is, and in B when its centre lies in a box.
    IoBB = |M & B| / |M|: the share of the highlighted region inside the boxes. IoU = |M & B| /
    |M | B|. Both are 0 for an empty mask.
    Wang et al. (2017) instead draw bounding boxes around the mask's connected components and
    divide by the detected box's area, and their T(IoBB) is the IoBB a detection must exceed (at one
    fixed map threshold). Our IoBB uses the mask itself, so it is well defined for scattered maps
    and never rewards a box's empty corners; numbers are comparable in spirit, not digit for digit.
    """
    heat = _map_array(cam_map)
    coverage = _BoxCoverage.of(heat.shape, _boxes_array(boxes_xywh), _width_height(original_size))
    (iobb,), (iou,) = _iobb_iou_at(heat, coverage, [_threshold(threshold)])
    return iobb, iou


def _threshold(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"thresholds must be fractions of the map's maximum in [0, 1], got {value!r}"
        )
    return float(value)


@dataclass(frozen=True)
class _BoxCoverage:
    """How many original pixels of each map cell lie in the boxes, and in the cell at all."""

    in_boxes: np.ndarray  # (h, w) pixel counts inside the boxes' union
    in_cell: np.ndarray  # (h, w) pixel counts of each cell

    @classmethod
    def of(
        cls, map_shape: tuple[int, ...], boxes: np.ndarray, size: tuple[int, int]
    ) -> _BoxCoverage:
        rows, cols = map_shape
        width, height = size
        row_cell = _cell_of_pixel(height, rows)
        col_cell = _cell_of_pixel(width, cols)
        in_cell = np.outer(
            np.bincount(row_cell, minlength=rows), np.bincount(col_cell, minlength=cols)
        )
        # Rasterise the union only over the boxes' bounding rectangle: boxes are small, images not.
        r0, r1 = _pixel_span(boxes[:, 1].min(), (boxes[:, 1] + boxes[:, 3]).max(), height)
        c0, c1 = _pixel_span(boxes[:, 0].min(), (boxes[:, 0] + boxes[:, 2]).max(), width)
        union = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        for x, y, w, h in boxes:
            b_r0, b_r1 = _pixel_span(y, y + h, height)
            b_c0, b_c1 = _pixel_span(x, x + w, width)
            union[b_r0 - r0 : b_r1 - r0, b_c0 - c0 : b_c1 - c0] = True
        cells = row_cell[r0:r1, None] * cols + col_cell[None, c0:c1]
        in_boxes = np.bincount(cells[union], minlength=rows * cols).reshape(rows, cols)
        return cls(in_boxes=in_boxes, in_cell=in_cell)


def _cell_of_pixel(pixels: int, cells: int) -> np.ndarray:
    """For each original pixel along one axis, the index of the map cell containing its centre."""
    return np.minimum(((np.arange(pixels) + 0.5) * cells / pixels).astype(np.int64), cells - 1)


def _pixel_span(start: float, stop: float, pixels: int) -> tuple[int, int]:
    """Half-open range of pixels whose centres i + 0.5 lie in [start, stop], within the image."""
    first = max(math.ceil(start - 0.5), 0)
    last = min(math.floor(stop - 0.5), pixels - 1)
    return first, max(last + 1, first)


def _iobb_iou_at(
    heat: np.ndarray, coverage: _BoxCoverage, thresholds: Sequence[float]
) -> tuple[list[float], list[float]]:
    peak = heat.max()
    box_area = coverage.in_boxes.sum()
    iobbs, ious = [], []
    for threshold in thresholds:
        mask = heat >= threshold * peak if peak > 0 else np.zeros(heat.shape, dtype=bool)
        mask_area = coverage.in_cell[mask].sum()
        overlap = coverage.in_boxes[mask].sum()
        union = mask_area + box_area - overlap
        iobbs.append(float(overlap / mask_area) if mask_area else 0.0)
        ious.append(float(overlap / union) if union else 0.0)
    return iobbs, ious


# --------------------------------------------------------------------------------------------
# Localisation over a set of boxed images
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Pair:
    """One (image, finding) with its boxes: the unit the scores average over."""

    image_index: int  # row of images_uint8
    image_id: str
    finding: str
    boxes: np.ndarray  # (K, 4) x, y, w, h in original pixels
    size: tuple[int, int]  # original (width, height)


def localisation_scores(
    model: nn.Module,
    images_uint8: np.ndarray,
    image_ids: Sequence[str],
    findings: Sequence[str],
    boxes: pd.DataFrame,
    original_sizes: Any,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    random_control: bool = True,
    seed: int = 0,
    batch_size: int = 16,
    cam_method: str = DEFAULT_CAM_METHOD,
    progress: bool = False,
) -> pd.DataFrame:
    """CAM localisation scores per finding and overall, with a random-map control.

    One row per (method, finding): method `method_label(cam_method)` ("grad_cam" for Grad-CAM)
    and "random" when `random_control`, finding each of `findings` then "all" (every pair
    pooled). Columns: n (number of (image, finding) pairs), pointing_game (hit rate), and for
    each map threshold t: mean_iobb@t, mean_iou@t and iobb_accuracy@t (share of pairs with
    IoBB > 0.5). Metrics are NaN where n is 0. See `localisation_pair_scores` for the arguments
    and `iobb_iou` for the definitions; `attrs["boxes_outside_image"]` counts the boxes that lie
    partly or wholly outside their image.
    """
    pairs = localisation_pair_scores(
        model,
        images_uint8,
        image_ids,
        findings,
        boxes,
        original_sizes,
        thresholds=thresholds,
        random_control=random_control,
        seed=seed,
        batch_size=batch_size,
        cam_method=cam_method,
        progress=progress,
    )
    label = method_label(cam_method)
    methods = (label, RANDOM_CONTROL) if random_control else (label,)
    findings = [canonical_finding(f) for f in findings]
    summary = summarise_localisation(pairs, findings, thresholds, methods=methods)
    summary.attrs["boxes_outside_image"] = pairs.attrs["boxes_outside_image"]
    return summary


def method_label(cam_method: str) -> str:
    """The `method` column's name for a CAM method's rows: "grad_cam" for Grad-CAM (the name
    localisation tables have always used), the method's own name ("scorecam", ...) otherwise."""
    name = cam_methods.cam_method(cam_method).name
    return GRAD_CAM if name == DEFAULT_CAM_METHOD else name


def localisation_pair_scores(
    model: nn.Module,
    images_uint8: np.ndarray,
    image_ids: Sequence[str],
    findings: Sequence[str],
    boxes: pd.DataFrame,
    original_sizes: Any,
    *,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    random_control: bool = True,
    seed: int = 0,
    batch_size: int = 16,
    cam_method: str = DEFAULT_CAM_METHOD,
    progress: bool = False,
) -> pd.DataFrame:
    """One row per (method, image, finding): explained output, its logit, hit, IoBB and IoU.

    - `images_uint8` (N, S, S): the images as cached; they are normalised with
      `model.preprocessing` (resized to its image_size if S differs), see `normalised_inputs`.
    - `image_ids` (N,): the `Image Index` of each image, as in `boxes.image_id`.
    - `findings`: the findings to score; every (image, finding) with at least one box in `boxes`
      is a pair (NIH boxes exist for 8 findings). Aliases such as "Infiltrate" are accepted.
    - `boxes`: a `read_bbox_list` table (columns image_id, finding, x, y, w, h); several boxes of
      one finding on one image count as their union.
    - `original_sizes`: the size of the image file the boxes were drawn on, in the boxes' pixels:
      one int for all images (1024 for NIH; the image size for the synthetic set), or one per
      image, each an int (square) or (width, height). Not Data_Entry's OriginalImage[Width,Height],
      which is the size before NIH resized the films to 1024. A box that lies partly or wholly
      outside its image (wrong sizes, or boxes of other files) raises a warning with the count,
      also kept in `attrs["boxes_outside_image"]`; only its part inside the image is scored.
    - `cam_method`: a `cam_methods.CAM_METHODS` name; its rows' method is `method_label`'s.
    - `progress`: show a tqdm bar over the pairs.
    A dual-head model is explained through the finding's own logit; a binary-head model through
    its "Abnormal" logit (column `output` says which). The model runs on the device of its
    parameters; it is put in eval mode for the call and its modes are restored afterwards.
    The pointing game takes the peak from the map at its feature-map resolution (see
    `pointing_game`); IoBB and IoU use the map upsampled to the model's input.
    The random control gives each pair a smooth random map: uniform noise at the CAM's own
    feature-map resolution, upsampled and scaled exactly like the CAM, drawn from numpy's
    default_rng(seed) in pair order (so it does not depend on batch_size).
    """
    from tqdm.auto import tqdm

    spec = model.preprocessing
    label = method_label(cam_method)
    thresholds = [_threshold(t) for t in thresholds]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    images = _images_array(images_uint8)
    sizes = _original_sizes(original_sizes, len(images))
    pairs = _boxed_pairs(image_ids, len(images), findings, boxes, sizes)
    outside = _warn_boxes_outside(pairs)
    rng = np.random.default_rng(seed)
    device = next(model.parameters()).device
    rows: list[dict[str, Any]] = []
    bar = tqdm(
        total=len(pairs),
        desc=f"{display_name(cam_method)} localisation",
        unit="pair",
        disable=not progress,
    )
    with _eval_mode(model), bar:
        for chunk in _chunks(pairs, batch_size):
            x = normalised_inputs(images[[p.image_index for p in chunk]], spec, device)
            outputs = [_explained_output(p.finding, spec["outputs"]) for p in chunk]
            cams = grad_cam(model, x, [OUTPUTS.index(o) for o in outputs], method=cam_method)
            rows += _rows(label, chunk, outputs, cams.raw, cams.maps, cams.scores, thresholds)
            if random_control:
                noise = torch.from_numpy(rng.random((len(chunk), *cams.raw.shape[1:])))
                maps = upsample_and_normalise(noise, cams.maps.shape[1:]).numpy()
                nan_scores = np.full(len(chunk), np.nan)
                rows += _rows(
                    RANDOM_CONTROL, chunk, outputs, noise.numpy(), maps, nan_scores, thresholds
                )
            bar.update(len(chunk))
    columns = ["method", "image_id", "finding", "output", "score", "pointing_game"]
    columns += [f"{kind}@{t:g}" for t in thresholds for kind in ("iobb", "iou")]
    frame = pd.DataFrame(rows, columns=columns)
    # Controls after the CAM rows, each in pair order: easy to read and to compare side by side.
    frame = frame.sort_values(
        "method", key=lambda m: (m == RANDOM_CONTROL).astype(int), kind="stable"
    ).reset_index(drop=True)
    frame.attrs["boxes_outside_image"] = outside
    return frame


def _warn_boxes_outside(pairs: Sequence[_Pair]) -> int:
    """Warn about boxes that reach outside their image; return how many do."""
    outside, wholly, first = 0, 0, None
    for pair in pairs:
        width, height = pair.size
        x, y, w, h = pair.boxes.T
        partly = (x < 0) | (y < 0) | (x + w > width) | (y + h > height)
        beyond = (x >= width) | (y >= height) | (x + w <= 0) | (y + h <= 0)
        outside += int(partly.sum())
        wholly += int(beyond.sum())
        if first is None and partly.any():
            box = ", ".join(f"{v:g}" for v in pair.boxes[np.argmax(partly)])
            first = f"{pair.image_id} {pair.finding} [{box}] in a {width} x {height} image"
    if outside:
        total = sum(len(pair.boxes) for pair in pairs)
        warnings.warn(
            f"{outside} of {total} boxes lie outside their image ({wholly} wholly), e.g. {first}; "
            "boxes are in the pixels of the file they were drawn on (1024 x 1024 for NIH): check "
            "original_sizes. Only their parts inside the image are scored.",
            stacklevel=3,
        )
    return outside


def summarise_localisation(
    pairs: pd.DataFrame,
    findings: Sequence[str],
    thresholds: Sequence[float],
    *,
    methods: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per (method, finding) and per method over all pairs: n, hit rate, mean IoBB/IoU, accuracy.

    `pairs` is a `localisation_pair_scores` table; `methods` defaults to those present in it, in
    order of appearance with the random control last.
    """
    if methods is None:
        present = list(dict.fromkeys(pairs["method"]))
        methods = [m for m in present if m != RANDOM_CONTROL]
        methods += [RANDOM_CONTROL] if RANDOM_CONTROL in present else []
    rows = []
    for method in methods:
        of_method = pairs[pairs["method"] == method]
        for finding in [*findings, ALL_FINDINGS]:
            group = (
                of_method if finding == ALL_FINDINGS else of_method[of_method["finding"] == finding]
            )
            rows.append({"method": method, "finding": finding, **_summary(group, thresholds)})
    return pd.DataFrame(rows)


def _summary(group: pd.DataFrame, thresholds: Sequence[float]) -> dict[str, float]:
    def mean(values: pd.Series) -> float:
        return float(values.mean()) if len(values) else math.nan

    summary: dict[str, float] = {
        "n": len(group),
        "pointing_game": mean(group["pointing_game"].astype(float)),
    }
    for t in thresholds:
        summary[f"mean_iobb@{t:g}"] = mean(group[f"iobb@{t:g}"])
        summary[f"mean_iou@{t:g}"] = mean(group[f"iou@{t:g}"])
        summary[f"iobb_accuracy@{t:g}"] = mean((group[f"iobb@{t:g}"] > IOBB_ACCEPT).astype(float))
    return summary


def _rows(
    method: str,
    chunk: Sequence[_Pair],
    outputs: Sequence[str],
    raw: np.ndarray,
    maps: np.ndarray,
    scores: np.ndarray,
    thresholds: Sequence[float],
) -> list[dict[str, Any]]:
    """Scores of one chunk: the pointing game on the raw maps, IoBB/IoU on the upsampled ones."""
    rows = []
    for pair, output, cells, heat, score in zip(chunk, outputs, raw, maps, scores, strict=True):
        coverage = _BoxCoverage.of(heat.shape, pair.boxes, pair.size)
        iobbs, ious = _iobb_iou_at(heat.astype(np.float64), coverage, thresholds)
        row = {
            "method": method,
            "image_id": pair.image_id,
            "finding": pair.finding,
            "output": output,
            "score": float(score),
            "pointing_game": pointing_game(cells, pair.boxes, pair.size),
        }
        for t, iobb, iou in zip(thresholds, iobbs, ious, strict=True):
            row[f"iobb@{t:g}"], row[f"iou@{t:g}"] = iobb, iou
        rows.append(row)
    return rows


def normalised_inputs(
    images_uint8: np.ndarray, preprocessing: dict[str, Any], device: torch.device | str = "cpu"
) -> Tensor:
    """uint8 (B, S, S) -> float (B, in_chans, size, size): (u8 / 255 - mean) / std per channel.

    Resizes like the training data path (`batches.normalise`: antialiased bilinear) when S is not
    the model's image_size; a grey image is repeated for a three-channel model.
    """
    size = int(preprocessing["image_size"])
    mean = torch.tensor(preprocessing["mean"], dtype=torch.float32, device=device)
    std = torch.tensor(preprocessing["std"], dtype=torch.float32, device=device)
    pixels = torch.from_numpy(np.ascontiguousarray(images_uint8)).to(device)[:, None].float() / 255
    if tuple(pixels.shape[-2:]) != (size, size):
        pixels = F.interpolate(
            pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    pixels = pixels.expand(-1, int(preprocessing["in_chans"]), -1, -1)
    return (pixels - mean[None, :, None, None]) / std[None, :, None, None]


def _images_array(images_uint8: Any) -> np.ndarray:
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"images_uint8 must be a uint8 array (N, S, S), got {images.dtype} {images.shape}"
        )
    return images


def _original_sizes(original_sizes: Any, count: int) -> list[tuple[int, int]]:
    if isinstance(original_sizes, (int, np.integer)):
        return [_width_height(original_sizes)] * count
    values = (
        original_sizes.tolist() if isinstance(original_sizes, np.ndarray) else list(original_sizes)
    )
    if len(values) != count:
        raise ValueError(
            f"original_sizes must be one int for all images or one size per image ({count}), "
            f"got {len(values)} sizes"
        )
    return [_width_height(v) for v in values]


def _boxed_pairs(
    image_ids: Sequence[str],
    count: int,
    findings: Sequence[str],
    boxes: pd.DataFrame,
    sizes: Sequence[tuple[int, int]],
) -> list[_Pair]:
    """Every (image, finding) in `findings` with boxes, in image order then findings order."""
    ids = [str(i) for i in image_ids]
    if len(ids) != count:
        raise ValueError(f"image_ids has {len(ids)} entries for {count} images")
    if len(set(ids)) != len(ids):
        raise ValueError("image_ids must be unique")
    missing = [c for c in BBOX_COLUMNS if c not in boxes.columns]
    if missing:
        raise ValueError(f"boxes lacks columns {missing}; expected {list(BBOX_COLUMNS)}")
    wanted = list(dict.fromkeys(canonical_finding(f) for f in findings))
    position = {image_id: k for k, image_id in enumerate(ids)}
    table = boxes.assign(
        image_id=boxes["image_id"].astype(str), finding=boxes["finding"].map(canonical_finding)
    )
    table = table[table["image_id"].isin(position) & table["finding"].isin(wanted)]
    pairs = [
        _Pair(
            image_index=position[image_id],
            image_id=image_id,
            finding=finding,
            boxes=group[["x", "y", "w", "h"]].to_numpy(dtype=np.float64),
            size=sizes[position[image_id]],
        )
        for (image_id, finding), group in table.groupby(["image_id", "finding"], sort=False)
    ]
    return sorted(pairs, key=lambda p: (p.image_index, wanted.index(p.finding)))


def _explained_output(finding: str, outputs: Sequence[str]) -> str:
    """The model output whose Grad-CAM localises `finding`: its own, or "Abnormal" if binary."""
    if finding in outputs:
        return finding
    if ABNORMAL in outputs:
        return ABNORMAL
    raise ValueError(f"the model has neither a {finding!r} nor an {ABNORMAL!r} output")


def _chunks(pairs: Sequence[_Pair], size: int) -> Iterator[Sequence[_Pair]]:
    for start in range(0, len(pairs), size):
        yield pairs[start : start + size]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluate with dropout off and batch-norm running stats, then restore every module's mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
