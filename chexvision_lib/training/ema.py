"""Weight EMA: an exponential moving average of the weights, kept beside them as they train.

The torchvision references' recipe (references/classification): `torch.optim.swa_utils.
AveragedModel` with an EMA update, the batch-norm statistics averaged with the weights
(`use_buffers=True`, so the averaged weights are evaluated with statistics of the same average),
updated every `every` optimiser steps, and while the learning rate warms up it follows the weights
rather than averaging them (the warm-up's early weights are far from anything worth keeping).

`decay` is per optimiser step whatever `every` is: an update every `every` steps uses
decay ** every, so the average's horizon (about 1 / (1 - decay) steps) stays where it was and
`every` only trades the average's granularity for its cost. The cost on a GPU is one host sync
per update (AveragedModel copies its update counter to the device), which is why `every` exists.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from chexvision_lib.models.registry import ChestClassifier


class WeightEMA:
    """The averaged copy of `model`; `update()` after every optimiser step."""

    def __init__(self, model: ChestClassifier, decay: float, every: int = 1, follow_steps: int = 0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {decay}")
        if every < 1:
            raise ValueError(f"ema_every must be at least 1, got {every}")
        self.source = model
        self.every = every
        self.follow_steps = follow_steps  # steps during which the average copies the weights
        self.steps = 0  # optimiser steps seen
        self.averaged = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(decay**every), use_buffers=True
        )
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> ChestClassifier:
        """The averaged weights, as a model that validates, predicts and saves like any other."""
        return self.averaged.module

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        if self.steps % self.every:
            return
        self.averaged.update_parameters(self.source)
        if self.steps < self.follow_steps:
            # AveragedModel copies the weights while it has averaged nothing: the first update
            # at or after step follow_steps copies too, and the ones after it average.
            self.averaged.n_averaged.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {"averaged": self.averaged.state_dict(), "steps": self.steps}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.averaged.load_state_dict(saved["averaged"])
        self.steps = int(saved["steps"])
