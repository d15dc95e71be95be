"""Decode every recording once and keep its log-mel, so an epoch reads no audio at all.

The cache holds the UN-normalised, clamped dB log-mel of each clip (never an augmented one),
because normalisation statistics come from the training split only (see stats.py) and
augmentations must differ every epoch. Files that cannot be decoded are logged by name,
left out, and listed in the report and in index.json: nothing is dropped silently.

Layout of cache_dir:
    mels.npy     float32 [N, n_mels, n_frames]  (read back as a read-only memmap)
    targets.npy  float32 [N, C] multi-hot in the vocabulary's order
    index.json   labels, items, front end, dataset name, source rates, skipped, fingerprint
    stats.json   written later by `training.stats.compute_stats`
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from claudio_daemon.features.frontend import FrontEndConfig
from training.audio import AudioLoadError, fit_length, load_audio, resample
from training.datasets.base import DatasetError, Item, Manifest
from training.frontend import LogMel

__all__ = ["Cache", "CacheError", "CacheReport", "precache"]

log = logging.getLogger(__name__)

MELS = "mels.npy"
TARGETS = "targets.npy"
INDEX = "index.json"
STATS = "stats.json"
PARTIAL = "mels.partial.npy"
INDEX_VERSION = 1


class CacheError(ValueError):
    """The cache folder is missing, incomplete or inconsistent; re-run precache."""


@dataclass
class CacheReport:
    cache_dir: Path
    n_items: int
    #: (recording, reason) for every file left out of the cache.
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    #: True when an existing complete cache matched and nothing was recomputed.
    reused: bool = False


def cache_frontend(cfg: FrontEndConfig) -> FrontEndConfig:
    """The config the cache is computed with: statistics reset, since the mels are raw dB."""
    return FrontEndConfig(**{**asdict(cfg), "mean": 0.0, "std": 1.0})


def fingerprint(manifest: Manifest, cfg: FrontEndConfig) -> str:
    """Hash of everything the cached arrays depend on: front end, labels, files (size, mtime)."""
    h = hashlib.sha256()
    h.update(cache_frontend(cfg).to_json().encode())
    head = {"name": manifest.name, "labels": list(manifest.labels), "multi": manifest.multi_label}
    h.update(json.dumps(head, sort_keys=True).encode())
    for item in manifest.items:
        try:
            st = item.path.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"{item.path}\0{'|'.join(item.labels)}\0{item.fold}\0{stamp}\n".encode())
    return h.hexdigest()


class _Decode(Dataset):
    """Decoding in DataLoader workers: returns (i, clip or None, source rate, failure reason)."""

    def __init__(self, paths: Sequence[Path], cfg: FrontEndConfig) -> None:
        self.paths = list(paths)
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, int, str]:
        path = self.paths[i]
        try:
            audio, rate = load_audio(path)
            clip = fit_length(resample(audio, rate, self.cfg.sample_rate), self.cfg.clip_samples)
        except AudioLoadError as exc:
            return i, None, 0, exc.reason
        except (OSError, RuntimeError, ValueError, MemoryError) as exc:
            return i, None, 0, f"{type(exc).__name__}: {exc}"
        return i, clip, rate, ""


def _as_list(batch: list) -> list:
    return batch


def _remove(cache_dir: Path, *names: str) -> None:
    for name in names:
        (cache_dir / name).unlink(missing_ok=True)


def _read_index(cache_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((cache_dir / INDEX).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def precache(
    manifest: Manifest,
    cache_dir: str | Path,
    cfg: FrontEndConfig,
    workers: int = 2,
    progress: bool = True,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> CacheReport:
    """Write the log-mel cache for `manifest`; a no-op when a matching complete cache exists.

    `workers` decode in parallel (DataLoader worker processes); the mel itself is computed in
    batches in this process on `device`, so a GPU can be used for large datasets.
    """
    cache_dir = Path(cache_dir)
    cfg = cache_frontend(cfg)
    if not manifest.items:
        raise DatasetError(f"{manifest.name}: the manifest has no recordings to cache")
    fp = fingerprint(manifest, cfg)
    old = _read_index(cache_dir)
    if (
        old is not None
        and old.get("complete")
        and old.get("fingerprint") == fp
        and (cache_dir / MELS).is_file()
        and (cache_dir / TARGETS).is_file()
    ):
        skipped = [(Path(s["path"]), s["reason"]) for s in old.get("skipped", [])]
        log.info("cache %s is up to date (%d clips), nothing to do", cache_dir, len(old["items"]))
        return CacheReport(cache_dir, len(old["items"]), skipped, reused=True)

    cache_dir.mkdir(parents=True, exist_ok=True)
    # Drop the index (and stale statistics) first, so an interrupted run is never "complete".
    _remove(cache_dir, INDEX, STATS, MELS, TARGETS, PARTIAL)
    n = len(manifest.items)
    log.info("caching %d clips of %s into %s", n, manifest.name, cache_dir)
    mels = np.lib.format.open_memmap(
        cache_dir / PARTIAL, mode="w+", dtype=np.float32, shape=(n, cfg.n_mels, cfg.n_frames)
    )
    ok = np.zeros(n, dtype=bool)
    rates = np.zeros(n, dtype=np.int64)
    reasons: dict[int, str] = {}
    logmel = LogMel(cfg, normalise=False).to(device)
    loader = DataLoader(
        _Decode([item.path for item in manifest.items], cfg),
        batch_size=batch_size,
        num_workers=max(0, int(workers)),
        collate_fn=_as_list,
    )
    with (
        torch.inference_mode(),
        tqdm(total=n, unit="clip", desc="precache", disable=not progress) as bar,
    ):
        for batch in loader:
            good = [(i, clip) for i, clip, _, _ in batch if clip is not None]
            for i, clip, rate, reason in batch:
                if clip is None:
                    reasons[i] = reason
                    log.warning("skipping %s: %s", manifest.items[i].path, reason)
                else:
                    rates[i] = rate
            if good:
                idx = np.array([i for i, _ in good])
                wave = torch.from_numpy(np.stack([clip for _, clip in good])).to(device)
                mels[idx] = logmel(wave)[:, 0].cpu().numpy()
                ok[idx] = True
            bar.update(len(batch))
    mels.flush()
    del mels

    kept = np.flatnonzero(ok)
    if kept.size == 0:
        _remove(cache_dir, PARTIAL)
        raise DatasetError(f"{manifest.name}: none of the {n} recordings could be decoded")
    if kept.size == n:
        os.replace(cache_dir / PARTIAL, cache_dir / MELS)
    else:
        _compact(cache_dir, kept, cfg)

    items = [manifest.items[i] for i in kept]
    index_of = {label: c for c, label in enumerate(manifest.labels)}
    targets = np.zeros((len(items), len(manifest.labels)), dtype=np.float32)
    for row, item in enumerate(items):
        targets[row, [index_of[lab] for lab in item.labels]] = 1.0
    np.save(cache_dir / TARGETS, targets)

    skipped = [(manifest.items[i].path, reasons[i]) for i in sorted(reasons)]
    index = {
        "version": INDEX_VERSION,
        "complete": True,
        "fingerprint": fp,
        "dataset": manifest.name,
        "multi_label": manifest.multi_label,
        "labels": list(manifest.labels),
        "frontend": json.loads(cfg.to_json()),
        "items": [
            {"path": str(item.path), "labels": list(item.labels), "fold": item.fold}
            for item in items
        ],
        "source_rates": [int(rates[i]) for i in kept],
        "skipped": [{"path": str(p), "reason": r} for p, r in skipped],
    }
    tmp = cache_dir / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, cache_dir / INDEX)
    if skipped:
        log.warning("cached %d clips, skipped %d unreadable files", len(items), len(skipped))
    return CacheReport(cache_dir, len(items), skipped, reused=False)


def _compact(cache_dir: Path, kept: np.ndarray, cfg: FrontEndConfig, chunk: int = 256) -> None:
    """Copy the decodable rows into the final array, chunk by chunk (FSD50K is gigabytes)."""
    src = np.load(cache_dir / PARTIAL, mmap_mode="r")
    dst = np.lib.format.open_memmap(
        cache_dir / MELS, mode="w+", dtype=np.float32, shape=(kept.size, cfg.n_mels, cfg.n_frames)
    )
    for start in range(0, kept.size, chunk):
        rows = kept[start : start + chunk]
        dst[start : start + rows.size] = src[rows]
    dst.flush()
    del dst, src
    _remove(cache_dir, PARTIAL)


@dataclass
class Cache:
    """A finished cache opened for reading; `mels` is a read-only memmap opened on first use.

    The memmap is dropped when pickled, so DataLoader workers (fork or spawn) each open the
    file themselves instead of copying gigabytes through a pipe.
    """

    cache_dir: Path
    labels: tuple[str, ...]
    items: tuple[Item, ...]
    targets: np.ndarray
    frontend: FrontEndConfig
    multi_label: bool
    source_rates: np.ndarray
    dataset: str
    skipped: tuple[tuple[Path, str], ...] = ()
    _mels: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, cache_dir: str | Path) -> Cache:
        cache_dir = Path(cache_dir)
        index = _read_index(cache_dir)
        if index is None or not index.get("complete"):
            raise CacheError(f"{cache_dir}: no complete cache here ({INDEX} missing); run precache")
        try:
            frontend = FrontEndConfig.from_json(json.dumps(index["frontend"]))
            labels = tuple(index["labels"])
            items = tuple(
                Item(Path(it["path"]), tuple(it["labels"]), str(it["fold"]))
                for it in index["items"]
            )
            rates = np.asarray(index["source_rates"], dtype=np.int64)
            skipped = tuple((Path(s["path"]), s["reason"]) for s in index.get("skipped", []))
            dataset, multi = str(index["dataset"]), bool(index["multi_label"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError(f"{cache_dir / INDEX}: malformed ({exc}); run precache again") from exc
        stats_path = cache_dir / STATS
        if stats_path.is_file():
            try:
                stats = json.loads(stats_path.read_text())
                frontend = frontend.with_stats(float(stats["mean"]), float(stats["std"]))
            except (OSError, KeyError, TypeError, ValueError) as exc:
                raise CacheError(
                    f"{stats_path}: malformed ({exc}); run compute_stats again"
                ) from exc
        try:
            targets = np.load(cache_dir / TARGETS)
            shape = np.load(cache_dir / MELS, mmap_mode="r").shape
        except (OSError, ValueError) as exc:
            raise CacheError(
                f"{cache_dir}: cannot read cached arrays ({exc}); run precache"
            ) from exc
        expected = (len(items), frontend.n_mels, frontend.n_frames)
        if (
            shape != expected
            or targets.shape != (len(items), len(labels))
            or len(rates) != len(items)
        ):
            raise CacheError(
                f"{cache_dir}: arrays do not match {INDEX} (mels {shape}, expected {expected}; "
                f"targets {targets.shape}); run precache again"
            )
        return cls(cache_dir, labels, items, targets, frontend, multi, rates, dataset, skipped)

    @property
    def mels(self) -> np.ndarray:
        if self._mels is None:
            self._mels = np.load(self.cache_dir / MELS, mmap_mode="r")
        return self._mels

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_mels"] = None
        return state

    def __len__(self) -> int:
        return len(self.items)

    @property
    def folds(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(item.fold for item in self.items))

    def folds_of(self, indices: Iterable[int]) -> tuple[str, ...]:
        """The folds these rows belong to, each once, in first-seen order."""
        return tuple(dict.fromkeys(self.items[int(i)].fold for i in indices))

    def indices_for_folds(self, folds: Iterable[str]) -> np.ndarray:
        """Row numbers of the items in these folds, ascending."""
        wanted = {str(f) for f in folds}
        return np.array(
            [i for i, item in enumerate(self.items) if item.fold in wanted], dtype=np.int64
        )
