"""A tiny learnable sound dataset in ESC-50 layout: the comparison's smoke test and tests.

Three classes that any of the approaches can tell apart: steady tones, broadband noise and
click trains. Each clip is 1 s at 22,050 Hz (tiled to the contract's 5.94 s by the loader),
with random level, pitch, rate and a little background noise, so nothing is a copy of another.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

CLASSES = ("tone", "noise", "clicks")
RATE = 22050


def _clip(kind: str, rng: np.random.Generator, seconds: float = 1.0) -> np.ndarray:
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    gain = 10 ** (rng.uniform(-20, -6) / 20)
    if kind == "tone":
        f = rng.uniform(400, 1600)
        x = np.sin(2 * np.pi * f * t) + 0.3 * np.sin(2 * np.pi * 2 * f * t)
    elif kind == "noise":
        x = rng.normal(0, 0.5, n)
    else:
        x = np.zeros(n)
        period = int(RATE / rng.uniform(6, 14))
        decay = np.exp(-np.arange(200) / 30.0)
        for start in range(int(rng.integers(0, period)), n - 200, period):
            x[start : start + 200] += decay * rng.choice([-1.0, 1.0])
    x = x / (np.abs(x).max() + 1e-9) * gain
    return (x + rng.normal(0, 1e-3, n)).astype(np.float32)


def make_toy_esc50(
    root: Path, per_class_per_fold: int = 5, folds: int = 4, seed: int = 0, first_fold: int = 1
) -> Path:
    """Write root/meta/esc50.csv and root/audio/*.wav; returns root."""
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    n = 0
    for fold in range(first_fold, first_fold + folds):
        for target, kind in enumerate(CLASSES):
            for _ in range(per_class_per_fold):
                n += 1
                name = f"{fold}-{n:05d}-A-{target}.wav"
                sf.write(root / "audio" / name, _clip(kind, rng), RATE, subtype="PCM_16")
                lines.append(f"{name},{fold},{target},{kind},False,{n},A")
    (root / "meta" / "esc50.csv").write_text("\n".join(lines) + "\n")
    return root
