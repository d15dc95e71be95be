"""Loss: BCE with logits and per-class positive weights.

One loss serves both kinds of data: multi-label FSD50K and single-label ESC-50 (one-hot
targets). The daemon applies a sigmoid per label, so training with per-label BCE keeps
its thresholds meaningful. Rare labels get up-weighted positives, clipped so a label
seen twice cannot dominate the gradient.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.data import pos_weights


class WeightedBCE(nn.Module):
    def __init__(self, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight if pos_weight is not None else None)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pw = self.pos_weight
        if pw is not None:
            pw = pw.to(device=logits.device, dtype=logits.dtype)
        return nn.functional.binary_cross_entropy_with_logits(
            logits, targets.to(logits.dtype), pos_weight=pw
        )


def make_criterion(
    train_targets: np.ndarray | None, clip: tuple[float, float] | None = (1.0, 10.0)
) -> WeightedBCE:
    """BCE weighted from the training targets' label frequencies; plain BCE when `clip`
    is None (no re-weighting) or no targets are given."""
    if train_targets is None or clip is None:
        return WeightedBCE(None)
    lo, hi = clip
    if not 0 < lo <= hi:
        raise ValueError(f"pos_weight clip must satisfy 0 < low <= high, got {clip}")
    w = pos_weights(np.asarray(train_targets), clip=(lo, hi))
    return WeightedBCE(torch.as_tensor(np.asarray(w), dtype=torch.float32))
