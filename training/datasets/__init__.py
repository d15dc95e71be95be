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


def merge_manifests(manifests: list[Manifest]) -> Manifest:
    """One dataset from several folders of the same kind (ESC-50 folds 1-3 at 16 kHz and
    fold 4 at 44.1 kHz, say). The first folder's vocabulary keeps the model's output order,
    so a model trained on it can be extended; later folders may use part of it
    (`claudio-train mine-patterns` writes a few labels) and may add labels of their own
    (`claudio-train synth-claps` writes `clap_pattern`), which come after it in the order
    they first appear."""
    if not manifests:
        raise DatasetError("no datasets to merge")
    first = manifests[0]
    if len(manifests) == 1:
        return first
    labels = list(first.labels)
    for other in manifests[1:]:
        labels += [lab for lab in other.labels if lab not in labels]
    items = tuple(item for m in manifests for item in m.items)
    paths = [item.path for item in items]
    if len(set(paths)) != len(paths):
        raise DatasetError("the same recording appears in two of the datasets")
    name = "+".join(m.name for m in manifests)
    return Manifest(items, tuple(labels), name, any(m.multi_label for m in manifests))


def load_datasets(roots: list[str | Path], layout: str = "auto", split: str = "dev") -> Manifest:
    """`load_dataset` for one or more folders, merged with `merge_manifests`."""
    return merge_manifests([load_dataset(r, layout, split) for r in roots])
