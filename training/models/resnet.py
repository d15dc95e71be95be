"""ResNet18 for one-channel log-mel input, written out so training needs no torchvision.

The block takes an optional per-block attention module so the SE variant (se_resnet.py)
reuses this exact topology; the two then differ only by that module.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

AttentionFactory = Callable[[int], nn.Module]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        attention: AttentionFactory | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.attention = attention(out_ch) if attention is not None else nn.Identity()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.attention(out)
        return self.relu(out + self.downsample(x))


class ResNet(nn.Module):
    """ResNet with BasicBlocks; `layers` (2,2,2,2) and widths 64..512 give ResNet18."""

    def __init__(
        self,
        n_classes: int,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        widths: tuple[int, ...] = (64, 128, 256, 512),
        in_channels: int = 1,
        attention: AttentionFactory | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = []
        in_ch = widths[0]
        for i, (n_blocks, width) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for b in range(n_blocks):
                stride = 2 if (b == 0 and i > 0) else 1
                blocks.append(BasicBlock(in_ch, width, stride, attention))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch, n_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Zero the last BN of each residual branch: blocks start as identities, which
        # makes the first epochs of a deep net on a small dataset noticeably steadier.
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(self.dropout(x))


def resnet18(n_classes: int, in_channels: int = 1, dropout: float = 0.0) -> ResNet:
    return ResNet(n_classes, (2, 2, 2, 2), in_channels=in_channels, dropout=dropout)
