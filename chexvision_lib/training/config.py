"""`TrainConfig`: every choice a training run makes, each field documented once.

The documentation of a field is its `help` metadata: `chexvision train --help` prints it, so the
flags and the config cannot drift apart. This module imports nothing heavy (no torch), so building
the command line stays instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from chexvision_lib.training.experiment_log import check_backends


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and its one line of documentation."""
    return field(default=default, metadata={"help": help})


def field_help(cls: type, name: str) -> str:
    """The documentation of one config field ('' when it has none)."""
    return cls.__dataclass_fields__[name].metadata.get("help", "")


@dataclass(frozen=True)
class TrainConfig:
    cache: str = field(metadata={"help": "a folder written by `chexvision prepare`"})
    out: str = field(metadata={"help": "the run folder to write"})
    model: str = option(
        "seresnet", "architecture name (see `chexvision_lib.MODEL_NAMES`) or timm/<timm name>"
    )
    head: Literal["dual", "binary"] = option(
        "dual", "dual: 14 findings + abnormal; binary: one abnormal logit (Tang et al.)"
    )
    pretrained: str | None = option(
        None, "'imagenet' (torch hub cache, no download) or a weights file to start from"
    )
    init_from: str | None = option(None, "a run or model folder to fine-tune from")
    image_size: int | None = option(None, "model input size in px (default: the cache's size)")
    epochs: int = option(20, "most epochs to train")
    batch_size: int = option(
        32, "images per step per process; effective = batch_size x accum_steps x world size"
    )
    accum_steps: int = option(1, "micro-batches whose gradients are summed before a step")
    recipe: str | None = option(
        None, "a named recipe (chexvision_lib.training.recipes) whose values the others override"
    )
    optimizer: Literal["adamw", "adam", "sgd"] = option(
        "adamw", "adamw, adam (L2 weight decay; CheXNet) or sgd with momentum (Tang et al.)"
    )
    schedule: Literal["auto", "cosine", "plateau"] = option(
        "auto",
        "cosine: linear warm-up, then cosine decay per step; plateau: lr x plateau_factor when "
        "validation stops improving; auto: plateau for sgd, cosine otherwise",
    )
    lr: float = option(1e-3, "peak learning rate of the heads (and the backbone once unfrozen)")
    weight_decay: float = option(1e-4, "decoupled (adamw) or L2 (sgd) weight decay")
    momentum: float = option(0.9, "sgd only: momentum")
    warmup_epochs: float = option(1.0, "cosine only: epochs of linear warm-up before the decay")
    plateau_factor: float = option(0.1, "plateau only: lr x this when validation stops improving")
    plateau_patience: int = option(1, "plateau only: epochs without improvement before lowering lr")
    freeze_epochs: int = option(
        0, "pretrained: train only the heads for this many epochs, backbone frozen"
    )
    unfreeze_lr_factor: float = option(
        0.1, "with freeze_epochs: the backbone's lr once unfrozen, as a fraction of lr"
    )
    patience: int = option(5, "early stopping: epochs without a better validation AUC")
    ema_decay: float = option(
        0.0,
        "weight EMA decay per optimiser step (e.g. 0.9998; 0: off); each epoch validates the "
        "weights and their average, and the better of the two ships",
    )
    ema_every: int = option(
        1, "with ema_decay: average every N optimiser steps (decay ** N: the same horizon)"
    )
    dropout: float = option(0.0, "dropout before the heads")
    augment: bool = option(True, "random affine + intensity augmentation on the device")
    hflip: bool = option(False, "random horizontal flips (off: a flip puts the heart on the right)")
    amp: Literal["auto", "fp16", "bf16", "off"] = option(
        "auto", "mixed precision: auto = fp16 on CUDA, fp32 on the CPU"
    )
    channels_last: bool = option(True, "channels-last memory format (faster convolutions on GPU)")
    compile: bool = option(False, "torch.compile the model (CUDA; minutes of warm-up)")
    fused_optimizer: bool = option(
        True, "fused AdamW/SGD kernels on CUDA (no GradScaler host sync)"
    )
    cache_on_device: bool = option(False, "hold the whole training split in device memory")
    threshold_method: Literal["youden", "f1"] = option(
        "youden", "how the shipped per-output thresholds are chosen on validation"
    )
    temperature_scaling: bool = option(
        True,
        "fit one temperature per output on validation (Guo et al. 2017); predict and evaluate "
        "apply it; the thresholds are chosen on the calibrated probabilities",
    )
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    seed: int = option(0, "seed of every random draw (batches, augmentation, initialisation)")
    deterministic: bool = option(
        False, "deterministic kernels (slower); resume is then bit-exact on GPU too"
    )
    threads: int | None = option(None, "CPU threads for torch (default: torch's choice)")
    folds: int = option(
        0, "k-fold cross-validation grouped by patient over train + val (0: the cache's val split)"
    )
    fold: int = option(0, "with folds: which fold validates (the test split never changes)")
    hub_checkpoint_repo: str | None = option(
        None, "Hub repo whose 'checkpoints' branch gets model/, history.csv, last.pt each N epochs"
    )
    hub_checkpoint_every: int = option(1, "with hub_checkpoint_repo: upload every N epochs")
    log: tuple[str, ...] = option(
        (),
        "experiment logs under RUN/logs: tensorboard, mlflow (a local file store), wandb "
        "(offline); repeat the flag or separate with commas (under torchrun: --log-to)",
    )

    @property
    def lr_schedule(self) -> Literal["cosine", "plateau"]:
        if self.schedule == "auto":
            return "plateau" if self.optimizer == "sgd" else "cosine"
        return self.schedule

    def __post_init__(self) -> None:
        positive = (
            "epochs",
            "batch_size",
            "accum_steps",
            "patience",
            "plateau_patience",
            "hub_checkpoint_every",
            "ema_every",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.image_size is not None and self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        if not 0 <= self.freeze_epochs < self.epochs:
            raise ValueError(f"freeze_epochs must be in [0, epochs), got {self.freeze_epochs}")
        if self.pretrained and self.init_from:
            raise ValueError("pass either pretrained or init_from, not both")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: no EMA), got {self.ema_decay}")
        if isinstance(self.log, str):
            raise TypeError(
                f"log: expected a list of backends, e.g. ['tensorboard'], got {self.log!r}"
            )
        # A list (from JSON) becomes the tuple a saved config compares equal to on resume.
        object.__setattr__(self, "log", tuple(self.log))
        check_backends(self.log)
