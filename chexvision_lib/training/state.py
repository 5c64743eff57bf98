"""`TrainState`: everything a run changes as it trains, saved and restored as one object.

The checkpoint is `TrainState.state_dict()` plus the config, and resuming is
`TrainState.load_state_dict(checkpoint)`: the fields are listed once, so saving and resuming cannot
drift apart (the open_clip / torchvision references discipline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from chexvision_lib.models.registry import ChestClassifier
from chexvision_lib.training.ema import WeightEMA

# The counters and early-stopping memory, saved by value.
PROGRESS_FIELDS = (
    "epoch",
    "step",
    "best",
    "best_epoch",
    "best_weights",
    "bad_epochs",
    "stopped_early",
)


@dataclass
class TrainState:
    model: ChestClassifier
    optimizer: torch.optim.Optimizer
    # The cosine schedule steps `scheduler` every optimiser step; the plateau schedule steps
    # `plateau` once per epoch on the validation monitor. Exactly one of the two is set.
    scheduler: torch.optim.lr_scheduler.LambdaLR | None
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None
    scaler: torch.amp.GradScaler
    ema: WeightEMA | None = None  # the weights' moving average (ema_decay > 0)
    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    best: float = -math.inf  # best validation monitor so far
    best_epoch: int = -1  # the epoch (from 1) whose weights are in model/
    best_weights: str = "raw"  # which of that epoch's weights: "raw" or their average, "ema"
    bad_epochs: int = 0  # epochs since the best one
    stopped_early: bool = False  # patience ran out: the run is finished
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "plateau": self.plateau.state_dict() if self.plateau else None,
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "progress": {name: getattr(self, name) for name in PROGRESS_FIELDS},
            "history": self.history,
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        if self.plateau is not None:
            self.plateau.load_state_dict(saved["plateau"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        for name in PROGRESS_FIELDS:
            setattr(self, name, saved["progress"][name])
        self.history = list(saved["history"])

    def record_epoch(self, row: dict[str, Any], patience: int) -> bool:
        """Append the epoch's history row and update early stopping on its `monitor` (the better
        of its raw and averaged weights', named by `monitor_weights`); True if it is the best."""
        self.history.append(row)
        self.epoch = row["epoch"]
        improved = row["monitor"] > self.best
        if improved:
            self.best, self.best_epoch, self.bad_epochs = row["monitor"], self.epoch, 0
            self.best_weights = row["monitor_weights"]
        else:
            self.bad_epochs += 1
        self.stopped_early = self.bad_epochs >= patience
        return improved
