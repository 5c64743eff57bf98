"""The class-activation-map methods offered by name (`chexvision report --cam-method`, the app).

The maps are computed by pytorch-grad-cam (PyPI `grad-cam`, import `pytorch_grad_cam`); this module
only names its classes, so a command-line parser can list the choices without importing torch.
`gradcam.grad_cam(..., method=NAME)` runs one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CamMethod:
    name: str  # what `--cam-method` and the app accept
    library_class: str  # the class in pytorch_grad_cam
    display_name: str  # how figures and the page name it
    uses_target: bool = True  # False: class-agnostic, the same map for every output
    images_per_pass: int | None = None  # how many images one library call may take (None: all)


_METHODS = (
    CamMethod("gradcam", "GradCAM", "Grad-CAM"),
    CamMethod("gradcam++", "GradCAMPlusPlus", "Grad-CAM++"),
    CamMethod("xgradcam", "XGradCAM", "XGrad-CAM"),
    CamMethod("hirescam", "HiResCAM", "HiResCAM"),
    CamMethod("layercam", "LayerCAM", "LayerCAM"),
    CamMethod("eigengradcam", "EigenGradCAM", "EigenGrad-CAM"),
    CamMethod("eigencam", "EigenCAM", "Eigen-CAM", uses_target=False),
    # One forward pass per feature-map channel and image (1024 for DenseNet-121): slow, and the
    # library stacks every channel's masked copy of an image at once, so one image per call.
    CamMethod("scorecam", "ScoreCAM", "Score-CAM", images_per_pass=1),
)
METHODS: dict[str, CamMethod] = {method.name: method for method in _METHODS}
CAM_METHODS: tuple[str, ...] = tuple(METHODS)
DEFAULT_CAM_METHOD = "gradcam"


def cam_method(name: str) -> CamMethod:
    """The method called `name`, or ValueError listing the names offered."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown CAM method {name!r}; expected one of {', '.join(CAM_METHODS)}"
        ) from None


def display_name(name: str) -> str:
    return cam_method(name).display_name


def cam_class(name: str) -> Any:
    """The pytorch_grad_cam class of method `name` (imports the library, and with it torch)."""
    method = cam_method(name)
    try:
        import pytorch_grad_cam
    except ImportError:
        raise ImportError(
            "CAM maps need pytorch-grad-cam: pip install grad-cam (see requirements.txt)"
        ) from None
    return getattr(pytorch_grad_cam, method.library_class)
