"""FSD50K exactly as Zenodo distributes it (Fonseca et al., 2022; CC-BY clips).

Layout under `root`:
    FSD50K.ground_truth/vocabulary.csv   index,label,mid   (no header; 200 classes)
    FSD50K.ground_truth/dev.csv          fname,labels,mids,split   (split: train / val)
    FSD50K.ground_truth/eval.csv         fname,labels,mids
    FSD50K.dev_audio/<fname>.wav, FSD50K.eval_audio/<fname>.wav

Labels are weak and multi-label ("Electric_guitar,Guitar,Music" in one quoted field), and
the AudioSet ontology's parents are already included, so no label expansion happens here.
"""

from __future__ import annotations

import csv
from pathlib import Path

from training.datasets.base import DatasetError, Item, Manifest, Problems, read_csv_rows

__all__ = ["GROUND_TRUTH", "load_fsd50k", "read_vocabulary"]

GROUND_TRUTH = "FSD50K.ground_truth"
SPLITS = {"dev": ("dev.csv", "FSD50K.dev_audio"), "eval": ("eval.csv", "FSD50K.eval_audio")}


def read_vocabulary(path: Path) -> tuple[str, ...]:
    """Label names in index order from vocabulary.csv (index,label,mid; no header)."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (is this an FSD50K folder?)")
    problems = Problems()
    by_index: dict[int, str] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < 2:
                problems.add(path, line, f"expected index,label,mid, got {row}")
                continue
            index_text, label = row[0].strip(), row[1].strip()
            try:
                index = int(index_text)
            except ValueError:
                problems.add(path, line, f"index {index_text!r} is not an integer", "index")
                continue
            if not label:
                problems.add(path, line, "empty label", "label")
            elif index in by_index:
                problems.add(path, line, f"index {index} appears twice", "index")
            elif label in by_index.values():
                problems.add(path, line, f"label {label!r} appears twice", "label")
            else:
                by_index[index] = label
    if not by_index and not problems.items:
        problems.add(path, None, "no labels found")
    problems.raise_if_any(str(path))
    return tuple(by_index[i] for i in sorted(by_index))


def load_fsd50k(root: str | Path, split: str = "dev") -> Manifest:
    """The dev split (folds "train"/"val") or the eval split (fold "eval") as a Manifest."""
    root = Path(root)
    if split not in SPLITS:
        raise DatasetError(f"FSD50K split must be 'dev' or 'eval', got {split!r}")
    gt = root / GROUND_TRUTH
    vocabulary = read_vocabulary(gt / "vocabulary.csv")
    known = set(vocabulary)
    csv_name, audio_dir = SPLITS[split]
    csv_path = gt / csv_name
    required = ["fname", "labels"] + (["split"] if split == "dev" else [])
    problems = Problems()
    items: list[Item] = []
    for line, row in read_csv_rows(csv_path, required, problems):
        fname = row["fname"]
        if not fname:
            problems.add(csv_path, line, "empty file name", "fname")
            continue
        labels = tuple(lab.strip() for lab in row["labels"].split(",") if lab.strip())
        if not labels:
            problems.add(csv_path, line, "empty label", "labels")
            continue
        unknown = [lab for lab in labels if lab not in known]
        if unknown:
            names = ", ".join(repr(u) for u in unknown)
            problems.add(csv_path, line, f"unknown label {names} (not in vocabulary.csv)", "labels")
            continue
        if split == "dev":
            fold = row["split"]
            if fold not in ("train", "val"):
                problems.add(csv_path, line, f"split must be train or val, got {fold!r}", "split")
                continue
        else:
            fold = "eval"
        audio = root / audio_dir / f"{fname}.wav"
        if not audio.is_file():
            problems.add(csv_path, line, f"audio file {audio} not found", "fname")
            continue
        items.append(Item(audio, tuple(dict.fromkeys(labels)), fold))
    problems.raise_if_any(str(csv_path))
    if not items:
        raise DatasetError(f"{csv_path}: no recordings listed")
    return Manifest(tuple(items), vocabulary, "fsd50k", multi_label=True)
