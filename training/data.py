"""From the cache to training batches: normalised inputs, multi-hot targets, fold splits."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from training.augment import AugmentConfig, augment_example
from training.cache import Cache

__all__ = ["CachedDataset", "pos_weights", "split_indices"]


class CachedDataset(Dataset):
    """Rows `indices` of a cache as (x [1, n_mels, n_frames] normalised, y [C]) float32.

    Augmentation (if any) runs in dB before normalisation. Its randomness comes from
    (seed, epoch, row), so results do not depend on the number of DataLoader workers or the
    order of reading; call `set_epoch(e)` at the start of each epoch (before iterating the
    DataLoader, whose non-persistent workers copy the dataset then) to get fresh draws.
    The memmap is opened lazily in each worker (Cache drops it when pickled).
    """

    def __init__(
        self,
        cache: Cache,
        indices: Sequence[int] | np.ndarray,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(cache)):
            raise IndexError(f"indices must lie in 0..{len(cache) - 1}")
        self.augment = augment if augment is not None and augment.enabled else None
        self.seed = int(seed)
        self.epoch = 0
        self.mean = float(cache.frontend.mean)
        self.std = float(cache.frontend.std)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.indices.size)

    def generator_for(self, row: int) -> torch.Generator:
        digest = hashlib.blake2b(f"{self.seed}:{self.epoch}:{row}".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.indices[i])
        db = torch.from_numpy(np.array(self.cache.mels[row], dtype=np.float32)).unsqueeze(0)
        if self.augment is not None:
            db = augment_example(db, self.augment, self.generator_for(row), self.cache.frontend)
        x = ((db - self.mean) / self.std).to(torch.float32)
        y = torch.from_numpy(np.array(self.cache.targets[row], dtype=np.float32))
        return x, y


def pos_weights(targets: np.ndarray, clip: tuple[float, float] = (1.0, 10.0)) -> np.ndarray:
    """BCE positive weights (N - pos) / pos per class, clipped; absent classes get the maximum.

    Rare labels would otherwise be swamped by negatives; the clip keeps a class with three
    examples from dominating the loss.
    """
    targets = np.asarray(targets, dtype=np.float64)
    n = targets.shape[0]
    pos = targets.sum(axis=0)
    weights = np.full(pos.shape, clip[1], dtype=np.float64)
    np.divide(n - pos, pos, out=weights, where=pos > 0)
    return np.clip(weights, clip[0], clip[1]).astype(np.float32)


def split_indices(
    cache: Cache, val_folds: Iterable[str], test_folds: Iterable[str] = ()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) row numbers by fold; train is every fold not named."""
    val = {str(f) for f in val_folds}
    test = {str(f) for f in test_folds}
    if val & test:
        raise ValueError(f"folds {sorted(val & test)} are both validation and test")
    known = set(cache.folds)
    unknown = (val | test) - known
    if unknown:
        raise ValueError(f"folds {sorted(unknown)} are not in the cache (it has {sorted(known)})")
    train = np.array(
        [i for i, item in enumerate(cache.items) if item.fold not in val | test], dtype=np.int64
    )
    if train.size == 0:
        raise ValueError("no training clips left after taking out validation and test folds")
    return train, cache.indices_for_folds(val), cache.indices_for_folds(test)
