"""A small Audio Spectrogram Transformer (AST-style), trained from scratch.

Attention is written with plain matmuls rather than nn.MultiheadAttention so that the
ONNX export is the same graph in eval and in tracing (no fused fast path to fall off).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        attn = self.drop(attn.softmax(dim=-1))
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out)


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer: steadier than post-norm when trained from scratch."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.1):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class AudioSpectrogramTransformer(nn.Module):
    def __init__(
        self,
        n_classes: int,
        n_mels: int = 128,
        n_frames: int = 256,
        patch: int = 16,
        dim: int = 256,
        depth: int = 4,
        heads: int = 4,
        dropout: float = 0.1,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        if n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {n_classes}")
        if n_mels % patch or n_frames % patch:
            raise ValueError(f"input {n_mels}x{n_frames} is not a multiple of patch {patch}")
        self.input_shape = (n_mels, n_frames)
        n_patches = (n_mels // patch) * (n_frames // patch)
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, dim))
        self.drop = nn.Dropout(dropout)
        self.layers = nn.Sequential(
            *[EncoderLayer(dim, heads, dropout=dropout) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, patches, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.drop(torch.cat([cls, x], dim=1) + self.pos_embed)
        x = self.norm(self.layers(x))
        return self.head(x[:, 0])


def ast(n_classes: int, **kw) -> AudioSpectrogramTransformer:
    return AudioSpectrogramTransformer(n_classes, **kw)
