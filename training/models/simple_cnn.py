"""A small baseline CNN: quick to train, handy for tests and as a sanity floor."""

from __future__ import annotations

import torch
from torch import nn


def _block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SimpleCNN(nn.Module):
    def __init__(
        self,
        n_classes: int,
        in_channels: int = 1,
        widths: tuple[int, ...] = (32, 64, 128),
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        chans = (in_channels, *widths)
        pairs = zip(chans[:-1], chans[1:], strict=True)
        self.features = nn.Sequential(*[_block(a, b) for a, b in pairs])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.pool(self.features(x)), 1)
        return self.fc(self.dropout(x))


def simple_cnn(n_classes: int, in_channels: int = 1, dropout: float = 0.3) -> SimpleCNN:
    return SimpleCNN(n_classes, in_channels=in_channels, dropout=dropout)
