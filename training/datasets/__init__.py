"""Dataset loaders: metadata in, a checked `Manifest` out (no audio decoded here)."""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import DatasetError, Item, Manifest
from training.datasets.esc50 import META as ESC50_META
from training.datasets.esc50 import load_esc50
from training.datasets.folder import LABELS_CSV, find_audio, load_folder
from training.datasets.fsd50k import GROUND_TRUTH, load_fsd50k

__all__ = [
    "DatasetError",
    "Item",
    "Manifest",
    "detect_layout",
    "load_dataset",
    "load_esc50",
    "load_folder",
    "load_fsd50k",
]

LAYOUTS = ("auto", "fsd50k", "esc50", "folder")


def detect_layout(root: str | Path) -> str:
    """Which loader fits the files at root: "fsd50k", "esc50" or "folder"."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    if (root / GROUND_TRUTH / "vocabulary.csv").is_file():
        return "fsd50k"
    if (root / ESC50_META).is_file():
        return "esc50"
    if (root / LABELS_CSV).is_file():
        return "folder"
    subs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if any(find_audio(p) for p in subs):
        return "folder"
    raise DatasetError(
        f"{root}: no known dataset layout. Expected one of: "
        f"{GROUND_TRUTH}/vocabulary.csv (FSD50K), {ESC50_META} (ESC-50), "
        f"{LABELS_CSV} (file,labels[,fold]), or one sub-folder of .wav/.flac/.ogg files per label"
    )


def load_dataset(root: str | Path, layout: str = "auto", split: str = "dev") -> Manifest:
    """Load a dataset; `split` ("dev"/"eval") only matters for FSD50K."""
    if layout not in LAYOUTS:
        raise DatasetError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "fsd50k":
        return load_fsd50k(root, split)
    if layout == "esc50":
        return load_esc50(root)
    return load_folder(root)
