"""Users' own recordings (claps, doorbell, dog), in one of two simple layouts.

1. One sub-folder per label:    root/clap/*.wav, root/doorbell/*.flac, ...  (single-label)
2. A table at root/labels.csv:  file,labels[,fold]   with `file` relative to root and
   several labels separated by ";" or "," (quote the field when using commas).

Recordings may be WAV, FLAC or OGG at any rate and channel count; they are converted when
the cache is built.
"""

from __future__ import annotations

import logging
from pathlib import Path

from training.datasets.base import (
    AUDIO_SUFFIXES,
    DatasetError,
    Item,
    Manifest,
    Problems,
    read_csv_rows,
)

__all__ = ["LABELS_CSV", "find_audio", "load_folder"]

log = logging.getLogger(__name__)

LABELS_CSV = "labels.csv"


def find_audio(folder: Path) -> list[Path]:
    """Audio files below `folder` (recursively, hidden entries skipped), in sorted order."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES:
            found.append(path)
    return found


def split_labels(text: str) -> tuple[str, ...]:
    sep = ";" if ";" in text else ","
    return tuple(dict.fromkeys(lab.strip() for lab in text.split(sep) if lab.strip()))


def _load_csv(root: Path) -> Manifest:
    csv_path = root / LABELS_CSV
    problems = Problems()
    items: list[Item] = []
    vocab: dict[str, None] = {}
    for line, row in read_csv_rows(csv_path, ["file", "labels"], problems):
        name = row["file"]
        if not name:
            problems.add(csv_path, line, "empty file name", "file")
            continue
        labels = split_labels(row["labels"])
        if not labels:
            problems.add(csv_path, line, "empty label", "labels")
            continue
        path = root / name
        if not path.is_file():
            problems.add(csv_path, line, f"audio file {path} not found", "file")
            continue
        items.append(Item(path, labels, row.get("fold", "")))
        vocab.update(dict.fromkeys(labels))
    problems.raise_if_any(str(csv_path))
    if not items:
        raise DatasetError(f"{csv_path}: no recordings listed")
    multi = any(len(item.labels) > 1 for item in items)
    return Manifest(tuple(items), tuple(sorted(vocab)), root.name or "folder", multi_label=multi)


def _load_subfolders(root: Path) -> Manifest:
    items: list[Item] = []
    labels: list[str] = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = find_audio(sub)
        if not files:
            log.info("%s: no .wav/.flac/.ogg files, not used as a label", sub)
            continue
        labels.append(sub.name)
        items.extend(Item(path, (sub.name,), "") for path in files)
    if not items:
        raise DatasetError(
            f"{root}: no {LABELS_CSV} and no label sub-folders with "
            f"{'/'.join(AUDIO_SUFFIXES)} files"
        )
    return Manifest(tuple(items), tuple(labels), root.name or "folder", multi_label=False)


def load_folder(root: str | Path) -> Manifest:
    """labels.csv if present, otherwise one sub-folder per label."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: folder not found")
    if (root / LABELS_CSV).is_file():
        return _load_csv(root)
    return _load_subfolders(root)
