"""The training loss: class-weighted binary cross-entropy over the labels that are known."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def positive_weights(labels: np.ndarray) -> torch.Tensor:
    """neg/pos per output over known labels of the training split (1 where a class is absent)."""
    known = labels >= 0
    positives = ((labels == 1) & known).sum(axis=0)
    negatives = ((labels == 0) & known).sum(axis=0)
    weights = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def masked_bce(
    logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor
) -> torch.Tensor:
    """Weighted BCE over the known (>= 0) labels; a binary head's one logit meets the last label."""
    if logits.shape[1] == 1:
        labels, pos_weight = labels[:, -1:], pos_weight[-1:]
    known = (labels >= 0).float()
    losses = F.binary_cross_entropy_with_logits(
        logits.float(), labels.clamp(min=0), pos_weight=pos_weight, reduction="none"
    )
    return (losses * known).sum() / known.sum().clamp(min=1.0)


def bce_from_probs(probs: np.ndarray, labels: np.ndarray, pos_weight: np.ndarray) -> float:
    """The training loss, from stored probabilities (validation loss for history.csv)."""
    known = (labels >= 0) & ~np.isnan(probs)
    p = np.clip(np.nan_to_num(probs), 1e-7, 1 - 1e-7)
    y = labels.clip(min=0)
    losses = -(pos_weight * y * np.log(p) + (1 - y) * np.log(1 - p))
    return float((losses * known).sum() / max(known.sum(), 1))
