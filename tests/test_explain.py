"""CAMs against closed-form answers and our former Grad-CAM, overlays, box reading, and
localisation scores."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import realdata
from torch import Tensor, nn

from chexvision_lib.core.labels import FINDINGS
from chexvision_lib.explain.cam_methods import CAM_METHODS, METHODS, cam_class
from chexvision_lib.explain.gradcam import (
    ABNORMAL_INDEX,
    BBOX_COLUMNS,
    grad_cam,
    iobb_iou,
    localisation_pair_scores,
    localisation_scores,
    method_label,
    normalised_inputs,
    overlay,
    pointing_game,
    read_bbox_list,
    upsample_and_normalise,
)
from chexvision_lib.models.registry import build_model

torch.set_num_threads(2)


# --- hand-made models with known Grad-CAMs -------------------------------------------------------
class PooledLinear(nn.Module):
    """features (one fixed conv) -> global average pool -> linear: Grad-CAM in closed form.

    d y_t / d A_kij = W_tk / (h w) for every position, so alpha_k = W_tk / (h w) and
    raw CAM = ReLU(sum_k W_tk A_k) / (h w).
    """

    def __init__(self, features: nn.Conv2d, head_weight: Tensor) -> None:
        super().__init__()
        self.features = features
        self.head = nn.Linear(head_weight.shape[1], head_weight.shape[0], bias=True)
        with torch.no_grad():
            self.head.weight.copy_(head_weight)
            self.head.bias.fill_(0.3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))

    def cam_layer(self) -> nn.Module:
        return self.features


def fixed_conv(weight: Tensor, bias: Tensor, stride: int = 1) -> nn.Conv2d:
    out_channels, in_channels, k, _ = weight.shape
    conv = nn.Conv2d(in_channels, out_channels, k, stride=stride, padding=k // 2)
    with torch.no_grad():
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
    return conv


def known_answer_model() -> PooledLinear:
    # 1x1 conv: channel k = a_k * pixel + b_k, so A is known in closed form from the input.
    conv = fixed_conv(torch.tensor([1.0, -2.0, 0.5]).view(3, 1, 1, 1), torch.tensor([0, 0.1, -0.2]))
    head_weight = torch.tensor([[1.0, 0.5, -1.0], [-0.5, 2.0, 1.5]])
    return PooledLinear(conv, head_weight).eval()


def hook_counts(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {
        name: (
            len(module._forward_hooks),
            len(module._forward_pre_hooks),
            len(module._backward_hooks),
            len(module._backward_pre_hooks),
        )
        for name, module in model.named_modules()
    }


def test_grad_cam_matches_closed_form() -> None:
    model = known_answer_model()
    x = torch.randn(2, 1, 5, 7, generator=torch.Generator().manual_seed(0))
    result = grad_cam(model, x, [0, 1])

    a = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
    b = torch.tensor([0, 0.1, -0.2]).view(1, 3, 1, 1)
    feature_map = a * x + b  # (2, 3, 5, 7)
    weights = model.head.weight.detach()[[0, 1]]  # per image: its target's row
    expected = torch.relu((weights[:, :, None, None] * feature_map).sum(1)) / (5 * 7)
    np.testing.assert_allclose(result.raw, expected.numpy(), atol=1e-6)
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_allclose(result.scores, logits[[0, 1], [0, 1]].numpy(), atol=1e-6)
    assert result.maps.shape == (2, 5, 7)
    assert result.maps.min() == 0.0 and result.maps.max() == pytest.approx(1.0)


def test_grad_cam_one_target_for_all_images_and_channels_last() -> None:
    model = known_answer_model()
    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    per_image = grad_cam(model, x, [1, 1, 1])
    shared = grad_cam(model, x.contiguous(memory_format=torch.channels_last), 1)
    np.testing.assert_allclose(shared.raw, per_image.raw, atol=1e-6)
    np.testing.assert_allclose(shared.maps, per_image.maps, atol=1e-6)


class InPlaceAfterFeatures(PooledLinear):
    """Like PooledLinear, but an in-place ReLU rewrites the feature map (as DenseNet's do)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu_(self.features(x)).mean(dim=(2, 3)))


def test_grad_cam_is_not_fooled_by_in_place_ops_after_the_layer() -> None:
    base = known_answer_model()
    model = InPlaceAfterFeatures(base.features, base.head.weight.detach()).eval()
    x = torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(2))
    result = grad_cam(model, x, 1)
    with torch.no_grad():
        feature_map = base.features(x)  # the layer's output, before the in-place ReLU
    # d y / d A_kij = W_1k [A_kij > 0] / (h w): the ReLU gates the gradient, not the activation.
    gradient = base.head.weight.detach()[1][None, :, None, None] * (feature_map > 0) / 25
    alpha = gradient.mean(dim=(2, 3), keepdim=True)
    expected = torch.relu((alpha * feature_map).sum(dim=1))
    np.testing.assert_allclose(result.raw, expected.numpy(), atol=1e-6)


def test_grad_cam_peak_lies_in_bright_square() -> None:
    # The logit is the mean response of a smoothing conv (stride 2, so the map is upsampled):
    # the CAM is that response, which is largest on the bright square.
    conv = fixed_conv(torch.full((1, 1, 3, 3), 1 / 9), torch.zeros(1), stride=2)
    model = PooledLinear(conv, torch.ones(1, 1)).eval()
    image = torch.zeros(1, 1, 32, 32)
    image[..., 18:26, 4:12] = 1.0
    result = grad_cam(model, image, 0)
    assert result.raw.shape == (1, 16, 16)
    row, col = np.unravel_index(np.argmax(result.maps[0]), (32, 32))
    assert 18 <= row < 26 and 4 <= col < 12
    assert result.maps[0, :10, 20:].max() == 0.0  # far from the square: nothing


def test_grad_cam_leaves_no_hooks_grads_or_mode_change_and_runs_under_no_grad() -> None:
    model = known_answer_model().train()
    before = hook_counts(model)
    x = torch.randn(2, 1, 4, 4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        result = grad_cam(model, x, 0)
    assert result.raw.dtype == np.float32  # the pass ran in float32 despite autocast
    assert hook_counts(model) == before
    assert all(p.grad is None for p in model.parameters())
    assert model.training and all(m.training for m in model.modules())
    with torch.inference_mode():
        in_inference_mode = grad_cam(model, torch.randn(1, 1, 4, 4), 0)
    assert in_inference_mode.raw.shape == (1, 4, 4)


def test_grad_cam_removes_hook_when_forward_fails() -> None:
    model = known_answer_model()
    before = hook_counts(model)
    with pytest.raises(RuntimeError):
        grad_cam(model, torch.randn(1, 2, 4, 4), 0)  # two channels: the conv refuses
    assert hook_counts(model) == before


@pytest.mark.parametrize("arch", ["densenet121", "resnet18"])
def test_grad_cam_on_registered_backbones(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, image_size=64).eval()
    before = hook_counts(model)
    x = torch.randn(2, 1, 64, 64).contiguous(memory_format=torch.channels_last)
    result = grad_cam(model, x, [FINDINGS.index("Effusion"), ABNORMAL_INDEX])
    assert result.raw.shape == (2, 2, 2) and result.maps.shape == (2, 64, 64)
    assert np.isfinite(result.maps).all() and result.maps.min() >= 0 and result.maps.max() <= 1
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_allclose(result.scores, logits[[0, 1], [2, 14]].numpy(), atol=1e-4)
    assert hook_counts(model) == before
    assert all(p.grad is None for p in model.parameters())
    assert not any(m.training for m in model.modules())


def test_grad_cam_binary_head_accepts_abnormal_index() -> None:
    torch.manual_seed(0)
    model = build_model("seresnet_small", image_size=64, head="binary").eval()
    x = torch.randn(2, 1, 64, 64)
    by_outputs_index = grad_cam(model, x, ABNORMAL_INDEX)
    by_head_index = grad_cam(model, x, [0, 0])
    np.testing.assert_allclose(by_outputs_index.raw, by_head_index.raw)
    with torch.no_grad():
        np.testing.assert_allclose(by_head_index.scores, model(x)[:, 0].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match=r"targets for a binary-head model must be 0 or 14"):
        grad_cam(model, x, 3)


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (15, r"targets must be output indices in \[0, 14\] \(labels.OUTPUTS order\); got 15"),
        ([0, -1], r"targets must be output indices in \[0, 14\] .*; got -1"),
        ([0, 1, 2], r"targets must be one index or 2"),
        ([0.5, 1], r"targets must be integer"),
    ],
)
def test_grad_cam_rejects_bad_targets(targets: object, message: str) -> None:
    conv = fixed_conv(torch.ones(3, 1, 1, 1), torch.zeros(3))
    fifteen_outputs = PooledLinear(conv, torch.randn(15, 3)).eval()
    with pytest.raises(ValueError, match=message):
        grad_cam(fifteen_outputs, torch.randn(2, 1, 4, 4), targets)  # type: ignore[arg-type]


# --- the library's CAMs through our wrapper ------------------------------------------------------
def reference_grad_cam(
    model: nn.Module, x: Tensor, indices: list[int], layer: nn.Module
) -> tuple[np.ndarray, np.ndarray]:
    """Our Grad-CAM before pytorch-grad-cam computed it (one hook + autograd.grad), kept here as
    the reference the library must reproduce: (raw (B, h, w), maps (B, H, W))."""
    captured: list[Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: Tensor) -> Tensor:
        captured.append(output)
        return output.clone()

    handle = layer.register_forward_hook(keep)
    try:
        inputs = x.detach().clone().float().requires_grad_(True)
        logits = model(inputs)
        scores = logits.gather(1, torch.tensor(indices)[:, None])[:, 0]
        (gradient,) = torch.autograd.grad(scores.sum(), captured[-1])
        weights = gradient.mean(dim=(2, 3), keepdim=True)
        raw = torch.relu((weights * captured[-1]).sum(dim=1)).detach()
    finally:
        handle.remove()
    return raw.numpy(), upsample_and_normalise(raw, tuple(x.shape[-2:])).numpy()


@pytest.mark.parametrize(
    ("arch", "head", "seed"),
    # seed 3: an untrained binary head's Grad-CAM is often all zero (ReLU of a negative sum)
    [("densenet121", "dual", 0), ("resnet18", "dual", 0), ("seresnet_small", "binary", 3)],
)
def test_library_grad_cam_equals_our_former_implementation(arch: str, head: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = build_model(arch, image_size=64, head=head).eval()
    x = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(5))
    targets = [ABNORMAL_INDEX] * 3 if head == "binary" else [FINDINGS.index("Effusion"), 0, 14]
    heads = [0] * 3 if head == "binary" else targets
    expected_raw, expected_maps = reference_grad_cam(model, x, heads, model.cam_layer())
    result = grad_cam(model, x.contiguous(memory_format=torch.channels_last), targets)
    assert result.method == "gradcam"
    scale = np.abs(expected_raw).max()
    assert scale > 0
    np.testing.assert_allclose(result.raw / scale, expected_raw / scale, atol=1e-5)
    np.testing.assert_allclose(result.maps, expected_maps, atol=1e-5)
    assert np.corrcoef(result.raw.ravel(), expected_raw.ravel())[0, 1] > 0.99999


def test_every_offered_method_exists_in_the_library_and_runs() -> None:
    import pytorch_grad_cam

    torch.manual_seed(0)
    model = build_model("seresnet_small", image_size=64).train()
    before = hook_counts(model)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        model.eval()
        logits = model(x)
        model.train()
    for name in CAM_METHODS:
        assert cam_class(name) is getattr(pytorch_grad_cam, METHODS[name].library_class)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = grad_cam(model, x, [2, ABNORMAL_INDEX], method=name)
        assert result.method == name
        assert result.raw.shape == (2, 2, 2) and result.raw.dtype == np.float32
        assert result.maps.shape == (2, 64, 64)
        assert np.isfinite(result.maps).all() and 0 <= result.maps.min() <= result.maps.max() <= 1
        assert (result.raw >= 0).all()
        np.testing.assert_allclose(result.scores, logits[[0, 1], [2, 14]].numpy(), atol=1e-4)
        assert hook_counts(model) == before
        assert model.training and all(m.training for m in model.modules())
        assert all(p.grad is None and p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match=r"unknown CAM method 'gradcam\+\+\+'; expected one of"):
        grad_cam(model, x, 0, method="gradcam+++")


def test_library_target_is_the_chosen_logit() -> None:
    # The known-answer model's two outputs have different closed-form maps: the library's
    # ClassifierOutputTarget must explain the logit we name, for every method using a target.
    model = known_answer_model()
    x = torch.randn(2, 1, 5, 7, generator=torch.Generator().manual_seed(7))
    for name in ("gradcam", "hirescam", "gradcam++", "layercam"):
        first = grad_cam(model, x, [0, 1], method=name)
        swapped = grad_cam(model, x, [1, 0], method=name)
        assert not np.allclose(first.raw[0], swapped.raw[0])
        np.testing.assert_allclose(first.raw[0], grad_cam(model, x[:1], 0, method=name).raw[0])


def test_grad_cam_keeps_the_callers_gradients_and_frozen_parameters() -> None:
    model = known_answer_model()
    model.head.weight.grad = torch.full_like(model.head.weight, 3.0)
    model.features.weight.requires_grad_(False)
    grad_cam(model, torch.randn(2, 1, 4, 4), 1)
    assert torch.equal(model.head.weight.grad, torch.full_like(model.head.weight, 3.0))
    assert model.head.bias.grad is None and model.features.weight.grad is None
    assert not model.features.weight.requires_grad and model.head.weight.requires_grad
    model.requires_grad_(False)  # every parameter frozen: the input still carries the graph
    assert grad_cam(model, torch.randn(1, 1, 4, 4), 0).raw.shape == (1, 4, 4)


class NotUsingFeatures(PooledLinear):
    def forward(self, x: Tensor) -> Tensor:
        self.features(x)
        return self.head(x.mean(dim=(2, 3)).expand(-1, 3))


def test_grad_cam_names_a_layer_that_did_not_run_or_does_not_matter() -> None:
    model = known_answer_model()
    with pytest.raises(ValueError, match="layer Linear did not run in the forward pass"):
        grad_cam(model, torch.randn(1, 1, 4, 4), 0, layer=nn.Linear(1, 1))
    unused = NotUsingFeatures(model.features, model.head.weight.detach()).eval()
    with pytest.raises(ValueError, match="the logits do not depend on layer Conv2d"):
        grad_cam(unused, torch.randn(1, 1, 4, 4), 0)
    assert hook_counts(unused) == hook_counts(known_answer_model())


def test_app_scorer_offers_the_methods_by_name() -> None:
    from PIL import Image

    from chexvision_lib.serving.app import ImageScorer

    torch.manual_seed(0)
    scorer = ImageScorer(build_model("seresnet_small", image_size=32))
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40), np.uint8)).save(
        buffer, format="PNG"
    )
    default = scorer.analyse(buffer.getvalue(), "x.png", "Effusion")
    eigen = scorer.analyse(buffer.getvalue(), "x.png", "Effusion", "eigencam")
    assert default.cam_method == "gradcam" and eigen.cam_method == "eigencam"
    assert eigen.cam_overlay.shape == (32, 32, 3)
    with pytest.raises(ValueError, match="unknown CAM method 'nope'"):
        scorer.analyse(buffer.getvalue(), "x.png", "Effusion", "nope")


# --- overlays ------------------------------------------------------------------------------------
def test_overlay_blends_grey_and_colormap() -> None:
    grey = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))
    heat = np.linspace(0, 1, grey.size).reshape(grey.shape)
    blended = overlay(grey, heat)
    assert blended.shape == (8, 16, 3) and blended.dtype == np.uint8
    np.testing.assert_array_equal(overlay(grey, heat, alpha=0.0), np.repeat(grey[..., None], 3, 2))
    jet_of_one = overlay(grey, np.ones(grey.shape), alpha=1.0)[0, 0]
    np.testing.assert_array_equal(jet_of_one, [128, 0, 0])  # jet's top colour, dark red
    with pytest.raises(ValueError, match="cam_map shape"):
        overlay(grey, heat[:4])
    with pytest.raises(ValueError, match="unknown colormap"):
        overlay(grey, heat, colormap="no-such-map")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        overlay(grey, heat * 2)


# --- pointing game and IoBB / IoU on hand-made maps -------------------------------------------
def four_by_four_map() -> np.ndarray:
    # Each cell of a 4x4 map covers 256 x 256 px of a 1024 px original.
    heat = np.full((4, 4), 0.1)
    heat[1, 1], heat[1, 2] = 1.0, 0.6
    return heat


def test_pointing_game_scales_peak_to_original_pixels() -> None:
    heat = four_by_four_map()  # peak cell (row 1, col 1): centre (384, 384) in 1024 px
    assert pointing_game(heat, [300, 300, 100, 100], 1024)
    assert not pointing_game(heat, [0, 0, 300, 300], 1024)
    assert pointing_game(heat, [[0, 0, 10, 10], [384, 384, 5, 5]], 1024)  # any box; border counts
    # A 2000 x 1000 (width x height) original: the peak's centre is (750, 375).
    assert pointing_game(heat, [700, 350, 100, 50], (2000, 1000))
    assert not pointing_game(heat, [700, 350, 100, 50], 1024)
    assert not pointing_game(np.zeros((4, 4)), [0, 0, 1024, 1024], 1024)  # a dead map: a miss


def test_pointing_game_on_a_fine_map() -> None:
    heat = np.zeros((32, 32))
    heat[11, 13] = 1.0  # 32 px cells: centre (13.5 * 32, 11.5 * 32) = (432, 368)
    assert pointing_game(heat, [420, 360, 20, 20], 1024)
    assert not pointing_game(heat, [433, 360, 20, 20], 1024)
    assert not pointing_game(heat, [420, 369, 20, 20], 1024)
    # Ties go to the first maximum in row-major order: the top-left cell of a plateau.
    plateau = np.kron(four_by_four_map(), np.ones((8, 8)))
    assert pointing_game(plateau, [256, 256, 20, 20], 1024)


def test_pointing_game_takes_the_peak_from_the_raw_map_not_the_upsampled_one() -> None:
    # An interior peak of 1.0 among 0.5s and an edge cell 1.5 % lower. Bilinear upsampling blends
    # the peak with its neighbours at every output pixel (at best 0.969 here) but keeps the edge
    # cell's 0.985 undiluted over its outer half, so the upsampled map's argmax is the corner.
    raw = np.full((4, 4), 0.5, dtype=np.float32)
    raw[1, 1], raw[3, 3] = 1.0, 0.985
    upsampled = upsample_and_normalise(torch.from_numpy(raw)[None], (128, 128))[0].numpy()
    row, col = np.unravel_index(np.argmax(upsampled), upsampled.shape)
    assert row >= 112 and col >= 112  # the bias this test guards against
    around_peak = [300, 300, 170, 170]  # holds the peak cell's centre (384, 384) in 1024 px
    assert pointing_game(raw, around_peak, 1024)
    assert not pointing_game(upsampled, around_peak, 1024)


def test_iobb_iou_known_answers() -> None:
    heat = four_by_four_map()
    # threshold 0.5: mask = cells (1, 1) and (1, 2) = x 256..768, y 256..512: 131072 px.
    assert iobb_iou(heat, [256, 256, 256, 256], 1024, 0.5) == pytest.approx((0.5, 0.5))
    assert iobb_iou(heat, [256, 256, 512, 512], 1024, 0.5) == pytest.approx((1.0, 0.5))
    assert iobb_iou(heat, [256, 256, 128, 256], 1024, 0.5) == pytest.approx((0.25, 0.25))
    assert iobb_iou(heat, [0, 0, 100, 100], 1024, 0.5) == (0.0, 0.0)
    # threshold 0.1 keeps every cell: IoBB = box area / image area, IoU the same.
    assert iobb_iou(heat, [0, 0, 512, 512], 1024, 0.1) == pytest.approx((0.25, 0.25))
    # threshold 1.0 keeps the peak cell only.
    assert iobb_iou(heat, [256, 256, 512, 512], 1024, 1.0) == pytest.approx((1.0, 0.25))
    # Two overlapping boxes count as their union (x 256..640, y 256..512 = 98304 px).
    union_boxes = [[256, 256, 256, 256], [384, 256, 256, 256]]
    assert iobb_iou(heat, union_boxes, 1024, 0.5) == pytest.approx((0.75, 0.75))
    assert iobb_iou(np.zeros((4, 4)), [0, 0, 512, 512], 1024, 0.5) == (0.0, 0.0)


def test_iobb_iou_does_not_depend_on_map_resolution_and_scales_axes_separately() -> None:
    heat = four_by_four_map()
    fine = np.kron(heat, np.ones((16, 16)))  # 64 x 64, the same regions
    for box in ([256, 256, 256, 256], [300, 200, 333, 111], [0, 0, 1024, 1024]):
        assert iobb_iou(fine, box, 1024, 0.5) == pytest.approx(iobb_iou(heat, box, 1024, 0.5))
    # 2000 x 1000 original: mask = x 500..1500, y 250..500; the box covers its left half.
    assert iobb_iou(heat, [500, 250, 500, 250], (2000, 1000), 0.5) == pytest.approx((0.5, 0.5))
    with pytest.raises(ValueError, match="thresholds"):
        iobb_iou(heat, [0, 0, 1, 1], 1024, 1.5)
    with pytest.raises(ValueError, match="positive w, h"):
        iobb_iou(heat, [0, 0, 0, 10], 1024, 0.5)


# --- BBox_List_2017.csv ---------------------------------------------------------------------------
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"


def write_bbox_list(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join([BBOX_HEADER, *rows]) + "\n", encoding="utf-8")
    return path


def test_read_bbox_list_handles_header_quirk_and_infiltrate(tmp_path: Path) -> None:
    path = write_bbox_list(
        tmp_path / "BBox_List_2017.csv",
        [
            "00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.78,79.19",
            "00000003_000.png,Infiltrate,10,20,30,40,,,",
            "",
            "00000003_000.png,Nodule,1.5,2.5,3.5,4.5",
        ],
    )
    boxes = read_bbox_list(path)
    assert list(boxes.columns) == list(BBOX_COLUMNS)
    assert boxes["finding"].tolist() == ["Atelectasis", "Infiltration", "Nodule"]
    assert boxes.loc[1, ["x", "y", "w", "h"]].tolist() == [10.0, 20.0, 30.0, 40.0]
    assert boxes["x"].dtype == np.float64 and boxes.loc[0, "image_id"] == "00013118_008.png"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("00000001_000.png,Mass,1,2,three,4", r"line 3: box must be four numbers"),
        ("00000001_000.png,Tumour,1,2,3,4", r"line 3: unknown finding 'Tumour'"),
        ("00000001_000.png,Mass,1,2,3", r"line 3: expected 'image,finding,x,y,w,h'"),
        ("00000001_000.png,Mass,1,2,-3,4", r"line 3: box needs finite x, y and positive w, h"),
    ],
)
def test_read_bbox_list_names_file_and_line_of_bad_rows(
    tmp_path: Path, row: str, message: str
) -> None:
    path = write_bbox_list(tmp_path / "boxes.csv", ["00000002_000.png,Mass,1,2,3,4", row])
    with pytest.raises(ValueError, match=message) as error:
        read_bbox_list(path)
    assert "boxes.csv" in str(error.value)


def test_read_bbox_list_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text("Image Index,Finding Labels,Follow-up #\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"Data_Entry_2017.csv: line 1 must be the NIH header"):
        read_bbox_list(path)


def test_read_bbox_list_reads_the_real_file() -> None:
    boxes = read_bbox_list(realdata("nih", "BBox_List_2017.csv.gz"))
    assert len(boxes) == 984
    assert boxes["finding"].value_counts()["Infiltration"] == 123
    assert set(boxes["finding"]) <= set(FINDINGS) and boxes["finding"].nunique() == 8


# --- localisation over a set of images ------------------------------------------------------------
def tiny_boxed_set() -> tuple[np.ndarray, list[str], pd.DataFrame]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 80, 80), dtype=np.uint8)  # resized to 64 for the model
    ids = ["a.png", "b.png", "c.png"]
    boxes = pd.DataFrame(
        [
            ("a.png", "Effusion", 100.0, 600.0, 300.0, 300.0),
            ("a.png", "Infiltration", 500.0, 100.0, 200.0, 400.0),
            ("b.png", "Effusion", 600.0, 600.0, 300.0, 300.0),
            ("b.png", "Effusion", 50.0, 50.0, 100.0, 100.0),  # a second box: their union counts
            ("c.png", "Mass", 10.0, 10.0, 50.0, 50.0),  # finding not asked for
            ("z.png", "Effusion", 10.0, 10.0, 50.0, 50.0),  # image not given
        ],
        columns=list(BBOX_COLUMNS),
    )
    return images, ids, boxes


def test_localisation_scores_end_to_end_with_random_control() -> None:
    torch.manual_seed(0)
    model = build_model("seresnet_small", image_size=64).train()
    images, ids, boxes = tiny_boxed_set()
    findings = ["Effusion", "Infiltrate", "Pneumonia"]
    scores = localisation_scores(model, images, ids, findings, boxes, 1024)

    metrics = ["pointing_game"] + [
        f"{name}@{t}" for t in ("0.1", "0.25", "0.5") for name in ("mean_iobb", "mean_iou")
    ]
    metrics += [f"iobb_accuracy@{t}" for t in ("0.1", "0.25", "0.5")]
    assert set(["method", "finding", "n", *metrics]) == set(scores.columns)
    assert scores["method"].tolist() == ["grad_cam"] * 4 + ["random"] * 4
    assert scores["finding"].tolist() == ["Effusion", "Infiltration", "Pneumonia", "all"] * 2
    assert scores["n"].tolist() == [2, 1, 0, 3] * 2
    pneumonia = scores[scores["finding"] == "Pneumonia"]
    assert pneumonia[metrics].isna().all().all()
    others = scores[scores["n"] > 0][metrics]
    assert ((others >= 0) & (others <= 1)).all().all()
    assert model.training and all(m.training for m in model.modules())  # modes restored
    assert all(p.grad is None for p in model.parameters())


def test_localisation_pair_scores_are_consistent_and_seeded() -> None:
    torch.manual_seed(0)
    model = build_model("seresnet_small", image_size=64, head="binary").eval()
    images, ids, boxes = tiny_boxed_set()
    args = (model, images, ids, ["Effusion", "Infiltration"], boxes, [1024, 1024, (1024, 1024)])
    pairs = localisation_pair_scores(*args, seed=3, batch_size=2)
    assert pairs[["method", "image_id", "finding"]].values.tolist() == [
        ["grad_cam", "a.png", "Effusion"],
        ["grad_cam", "a.png", "Infiltration"],
        ["grad_cam", "b.png", "Effusion"],
        ["random", "a.png", "Effusion"],
        ["random", "a.png", "Infiltration"],
        ["random", "b.png", "Effusion"],
    ]
    assert set(pairs["output"]) == {"Abnormal"}  # a binary head explains through its one logit
    assert pairs.loc[pairs["method"] == "random", "score"].isna().all()
    # The random control does not depend on batching; a different seed changes it.
    again = localisation_pair_scores(*args, seed=3, batch_size=16)
    pd.testing.assert_frame_equal(pairs, again, atol=1e-5)
    other_seed = localisation_pair_scores(*args, seed=4, batch_size=2)
    assert not other_seed[other_seed["method"] == "random"].equals(
        pairs[pairs["method"] == "random"]
    )
    only_cam = localisation_scores(*args, random_control=False)
    assert only_cam["method"].tolist() == ["grad_cam"] * 3


def test_localisation_rejects_mismatched_inputs() -> None:
    model = build_model("seresnet_small", image_size=64).eval()
    images, ids, boxes = tiny_boxed_set()
    with pytest.raises(ValueError, match="original_sizes must be one int for all images"):
        localisation_scores(model, images, ids, ["Effusion"], boxes, [1024, 1024])
    with pytest.raises(ValueError, match="image_ids has 2 entries for 3 images"):
        localisation_scores(model, images, ids[:2], ["Effusion"], boxes, 1024)
    with pytest.raises(ValueError, match="unknown finding 'Tumour'"):
        localisation_scores(model, images, ids, ["Tumour"], boxes, 1024)
    with pytest.raises(ValueError, match="images_uint8 must be a uint8 array"):
        localisation_scores(model, images.astype(float), ids, ["Effusion"], boxes, 1024)


def test_localisation_scores_the_pointing_game_on_the_raw_map() -> None:
    torch.manual_seed(0)
    model = build_model("seresnet_small", image_size=64).eval()
    images, ids, boxes = tiny_boxed_set()
    pairs = localisation_pair_scores(model, images, ids, ["Effusion"], boxes, 1024)
    cam_rows = pairs[pairs["method"] == "grad_cam"]
    inputs = normalised_inputs(images[[0, 1]], model.preprocessing)  # a.png, b.png: Effusion
    raw = grad_cam(model, inputs, FINDINGS.index("Effusion")).raw
    for k, image_id in enumerate(["a.png", "b.png"]):
        image_boxes = boxes[(boxes["image_id"] == image_id) & (boxes["finding"] == "Effusion")]
        expected = pointing_game(raw[k], image_boxes[["x", "y", "w", "h"]].to_numpy(), 1024)
        assert cam_rows.loc[cam_rows["image_id"] == image_id, "pointing_game"].item() == expected


def test_localisation_warns_about_boxes_outside_the_image() -> None:
    model = build_model("seresnet_small", image_size=64).eval()
    images, ids, _ = tiny_boxed_set()
    boxes = pd.DataFrame(
        [
            ("a.png", "Effusion", 100.0, 100.0, 300.0, 300.0),
            ("a.png", "Effusion", 900.0, 100.0, 300.0, 300.0),  # past the right edge
            ("b.png", "Effusion", 1100.0, 10.0, 50.0, 50.0),  # wholly outside
        ],
        columns=list(BBOX_COLUMNS),
    )
    message = r"2 of 3 boxes lie outside their image \(1 wholly\), e\.g\. a\.png Effusion"
    with pytest.warns(UserWarning, match=message):
        scores = localisation_scores(model, images, ids, ["Effusion"], boxes, 1024)
    assert scores.attrs["boxes_outside_image"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same boxes in a 2048 px image: all inside
        inside = localisation_pair_scores(model, images, ids, ["Effusion"], boxes, 2048)
    assert inside.attrs["boxes_outside_image"] == 0


def test_localisation_with_another_cam_method_names_its_rows() -> None:
    torch.manual_seed(0)
    model = build_model("seresnet_small", image_size=64).eval()
    images, ids, boxes = tiny_boxed_set()
    args = (model, images, ids, ["Effusion", "Infiltration"], boxes, 1024)
    assert method_label("gradcam") == "grad_cam" and method_label("scorecam") == "scorecam"
    plus = localisation_scores(*args, cam_method="gradcam++", progress=True)
    assert plus["method"].tolist() == ["gradcam++"] * 3 + ["random"] * 3
    default = localisation_scores(*args)
    # The control depends on the seed and the map's resolution only, not on the method.
    pd.testing.assert_frame_equal(
        plus[plus["method"] == "random"].reset_index(drop=True),
        default[default["method"] == "random"].reset_index(drop=True),
    )
    with pytest.raises(ValueError, match="unknown CAM method"):
        localisation_scores(*args, cam_method="gradcam2")
