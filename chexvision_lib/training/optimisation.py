"""Optimiser and learning-rate schedule: two parameter groups (heads, backbone) so a pretrained
backbone can be frozen first and then trained at a lower rate."""

from __future__ import annotations

import math

import torch

from chexvision_lib.models.registry import ChestClassifier
from chexvision_lib.training.config import TrainConfig


def lr_lambda(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def make_optimizer(model: ChestClassifier, config: TrainConfig, device: torch.device):
    # Two groups so the two-phase schedule can run the backbone at a lower rate once unfrozen.
    backbone_lr = config.lr * (config.unfreeze_lr_factor if config.freeze_epochs else 1.0)
    groups = [
        {"params": model.head_parameters(), "lr": config.lr, "name": "head"},
        {"params": model.backbone_parameters(), "lr": backbone_lr, "name": "backbone"},
    ]
    fused = config.fused_optimizer and device.type == "cuda"
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            fused=fused,
        )
    adam = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return adam(groups, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def set_backbone_frozen(model: ChestClassifier, frozen: bool) -> None:
    """Frozen means frozen: no gradients AND batch-norm statistics kept (eval mode)."""
    for parameter in model.backbone_parameters():
        parameter.requires_grad_(not frozen)
    if frozen:
        model.backbone.eval()
