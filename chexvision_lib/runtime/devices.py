"""Where tensors run: the device a name asks for, and the autocast dtype an AMP setting means."""

from __future__ import annotations

import torch


# --- set-up helpers -----------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for, but CUDA is not available")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32. T4s have no fast bf16, so CUDA defaults to fp16."""
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else None
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("amp: fp16 needs a CUDA device; use 'bf16' or 'off' on the CPU")
        return torch.float16
    return torch.bfloat16 if amp == "bf16" else None
