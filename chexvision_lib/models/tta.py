"""Test-time augmentation (TTA): score each image as a few views and merge them.

The views are ttach transforms (the `ttach` package, installed with grad-cam and bundled for
Kaggle) over the normalised (B, C, H, W) batch the model takes:
    none         the batch as it is (1 view): exactly the plain prediction
    hflip        the batch and its left-right mirror (2 views; ttach HorizontalFlip)
    crops        the four corner crops and the centre crop of CROP_FRACTION of each side, each
                 resized back to H x W bilinearly (5 views; ttach FiveCrops + Resize). The side
                 kept (90%) is an area of 81%, inside the 75-100% the training augmentation's
                 random resized crop draws, so every crop is an input the model has seen.
    hflip+crops  the five crops of the batch and of its mirror (10 views)
A mirrored chest X-ray has its heart on the right; models train without flips by default
(TrainConfig.hflip), so for them `hflip` views are inputs they never saw: `crops` is the set that
stays in the training distribution.

Merge rule: the mean of the views' logits, then the model's probabilities (its temperatures) once.
The temperatures were fitted on one forward pass's logits and `ChestClassifier.probabilities` is
the one place logits become probabilities; averaging logits keeps both true, and keeps the
calibration report of metrics.json exact (it undoes the temperatures on the stored probabilities,
which is only the raw model's output when they are sigmoid(logit / T) of one logit vector).

Thresholds and temperatures stored with a model were chosen on validation predictions WITHOUT TTA
(`tta_record` says so wherever TTA results are written). Averaged logits are less spread than a
single view's (views that disagree cancel), so the sensitivity and specificity at a stored
threshold are not those it was chosen for, and the temperatures slightly over-soften. AUCs are
threshold-free and compare fairly with and without TTA.

Nothing here imports torch at import time, so a command-line parser can list TTA_CHOICES.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

# Name -> number of views (checked by the tests against what tta_views yields).
TTA_VIEWS = {"none": 1, "hflip": 2, "crops": 5, "hflip+crops": 10}
TTA_CHOICES = tuple(TTA_VIEWS)
# The side of each crop of `crops`, as a fraction of the input's side.
CROP_FRACTION = 0.9
MERGE_RULE = "mean of the views' logits, then the model's temperatures once"
THRESHOLD_NOTE = (
    "the stored thresholds and temperatures were chosen on validation predictions without "
    "test-time augmentation; the metrics at them are therefore not those they were chosen for "
    "(AUCs are threshold-free and compare fairly)"
)
# For argparse (hence "%%"): the --tta help of `chexvision evaluate` and `chexvision predict`.
TTA_HELP = (
    "test-time augmentation: none; hflip (image + mirror); crops (4 corner + centre crops of 90%% "
    "of the side, resized back); hflip+crops (all 10). Logits are averaged over the views; the "
    "stored thresholds were chosen without TTA"
)


def check_tta(tta: object) -> str:
    """`tta` if it names a view set, else a ValueError naming the parameter and the choices."""
    if not isinstance(tta, str) or tta not in TTA_VIEWS:
        raise ValueError(f"tta must be one of {', '.join(TTA_CHOICES)}; got {tta!r}")
    return tta


def crop_side(size: int) -> int:
    """The side of a `crops` crop of a `size`-pixel side: CROP_FRACTION of it, rounded."""
    return max(1, round(CROP_FRACTION * size))


def _transforms(tta: str, height: int, width: int) -> Any:
    """The ttach Compose of a view set (not for "none"): its product of transforms is the views."""
    import ttach

    transforms = []
    if "hflip" in tta:
        transforms.append(ttach.HorizontalFlip())
    if "crops" in tta:
        # ttach's Resize defaults to nearest; bilinear (align_corners=False) is how
        # data.batches.normalise resizes, so a crop is resized the way the image was.
        transforms += [
            ttach.FiveCrops(crop_side(height), crop_side(width)),
            ttach.Resize([(height, width)], interpolation="bilinear", align_corners=False),
        ]
    return ttach.Compose(transforms)


def tta_views(x: Tensor, tta: str) -> Iterator[Tensor]:
    """The views of a normalised (B, C, H, W) batch, each (B, C, H, W), one at a time (10 views
    of a large batch need not be held at once). "none" yields `x` itself; "hflip" yields `x`
    first, then its mirror."""
    check_tta(tta)
    if tta == "none":
        yield x
        return
    for transformer in _transforms(tta, x.shape[-2], x.shape[-1]):
        yield transformer.augment_image(x)


def merged_logits(forward: Callable[[Tensor], Tensor], x: Tensor, tta: str) -> Tensor:
    """The mean over `tta`'s views of forward(view), in float32 (a half-precision forward's
    logits are not summed in half precision). "none": forward(x) as it is."""
    if check_tta(tta) == "none":
        return forward(x)
    total = None
    for view in tta_views(x, tta):
        logits = forward(view).float()
        total = logits if total is None else total + logits
    return total / TTA_VIEWS[tta]


def tta_record(tta: str, trained_with_hflip: bool | None = None) -> dict[str, Any]:
    """What to write beside TTA results: the view set, how it was merged, what it means for the
    stored thresholds, and (when known) whether mirrored views are inputs the model trained on."""
    record: dict[str, Any] = {
        "name": check_tta(tta),
        "views": TTA_VIEWS[tta],
        "crop_fraction": CROP_FRACTION if "crops" in tta else None,
        "merge": MERGE_RULE,
        "thresholds": THRESHOLD_NOTE,
    }
    if "hflip" in tta and trained_with_hflip is not None:
        record["trained_with_hflip"] = trained_with_hflip
    return record
