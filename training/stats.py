"""Normalisation scalars (one mean, one std over all mel bins and frames) from the cache.

A separate streaming pass over the memmap: chunks of clips, float64 accumulators merged with
Chan's parallel update, so FSD50K's ~7 GB of mels never has to fit in memory and the sum of
squares cannot cancel catastrophically. Pass only the TRAINING indices: statistics that saw
validation or test clips would leak them into the model's input scaling.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.cache import MELS, STATS

__all__ = ["compute_stats", "read_stats", "running_stats", "stats_folds"]


def running_stats(
    mels: np.ndarray, indices: np.ndarray | None, chunk: int = 128
) -> tuple[float, float, int]:
    """(mean, population std, clips used) over mels[indices], read chunk by chunk."""
    count = 0
    mean = 0.0
    m2 = 0.0
    total = len(mels) if indices is None else len(indices)
    for start in range(0, total, chunk):
        if indices is None:
            block = np.asarray(mels[start : start + chunk], dtype=np.float64)
        else:
            block = np.asarray(mels[indices[start : start + chunk]], dtype=np.float64)
        n_b = block.size
        if n_b == 0:
            continue
        mean_b = float(block.mean())
        m2_b = float(np.square(block - mean_b).sum())
        delta = mean_b - mean
        new_count = count + n_b
        mean += delta * n_b / new_count
        m2 += m2_b + delta * delta * count * n_b / new_count
        count = new_count
    if count == 0:
        raise ValueError("no clips selected for statistics")
    return mean, math.sqrt(m2 / count), total


def compute_stats(
    cache_dir: str | Path,
    indices: Sequence[int] | np.ndarray | None = None,
    chunk: int = 128,
    folds: Sequence[str] | None = None,
) -> tuple[float, float]:
    """Compute and write stats.json {"mean", "std", "n_items"[, "folds"]}; returns
    (mean, std).

    `Cache.open` then returns a front end carrying these scalars (cfg.with_stats), which is
    what the exported model's metadata and the daemon use. `folds`, the folds of the clips
    used, is recorded so that `fit` can refuse statistics that saw a held-out fold.
    """
    cache_dir = Path(cache_dir)
    mels = np.load(cache_dir / MELS, mmap_mode="r")
    idx = None
    if indices is not None:
        idx = np.unique(np.asarray(indices, dtype=np.int64))
        if idx.size and (idx[0] < 0 or idx[-1] >= len(mels)):
            raise IndexError(f"indices must lie in 0..{len(mels) - 1}")
    mean, std, n_items = running_stats(mels, idx, chunk)
    if not std > 0:
        raise ValueError(f"{cache_dir}: the selected log-mels are constant (std 0)")
    tmp = cache_dir / (STATS + ".tmp")
    record: dict[str, object] = {"mean": mean, "std": std, "n_items": n_items}
    if folds is not None:
        record["folds"] = sorted({str(f) for f in folds})
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, cache_dir / STATS)
    return mean, std


def read_stats(cache_dir: str | Path) -> dict[str, Any] | None:
    """A cache's stats.json as written by `compute_stats`, or None when it is missing or
    unreadable (callers that need it, like `Cache.open`, report that themselves)."""
    try:
        record = json.loads((Path(cache_dir) / STATS).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def stats_folds(cache_dir: str | Path) -> tuple[str, ...] | None:
    """The folds a cache's stats.json was computed on (its training folds), or None when
    there is no stats.json or it predates recording them."""
    folds = (read_stats(cache_dir) or {}).get("folds")
    return tuple(str(f) for f in folds) if folds else None
