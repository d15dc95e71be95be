"""ESC-50 (Piczak, 2015; CC-BY-NC): meta/esc50.csv + audio/, five folds, one label per clip.

Only the columns the manifest needs are required (filename, fold, target, category), so
subsets such as the 16 kHz FLAC copy of folds 1-3 load the same way as the original.
The vocabulary is the categories present, ordered by ESC-50's integer target.
"""

from __future__ import annotations

from pathlib import Path

from training.datasets.base import DatasetError, Item, Manifest, Problems, read_csv_rows

__all__ = ["load_esc50"]

META = Path("meta") / "esc50.csv"


def load_esc50(root: str | Path) -> Manifest:
    root = Path(root)
    csv_path = root / META
    problems = Problems()
    rows: list[tuple[Path, str, str]] = []
    targets: dict[str, int] = {}
    target_line: dict[int, tuple[str, int]] = {}
    for line, row in read_csv_rows(csv_path, ["filename", "fold", "target", "category"], problems):
        filename, fold, category = row["filename"], row["fold"], row["category"]
        if not filename:
            problems.add(csv_path, line, "empty file name", "filename")
            continue
        if not category:
            problems.add(csv_path, line, "empty label", "category")
            continue
        try:
            target = int(row["target"])
        except ValueError:
            problems.add(csv_path, line, f"target {row['target']!r} is not an integer", "target")
            continue
        if not fold:
            problems.add(csv_path, line, "empty fold", "fold")
            continue
        seen = target_line.get(target)
        if seen is not None and seen[0] != category:
            problems.add(
                csv_path,
                line,
                f"target {target} is {category!r} here but {seen[0]!r} on line {seen[1]}",
                "category",
            )
            continue
        if category in targets and targets[category] != target:
            problems.add(
                csv_path,
                line,
                f"category {category!r} has target {target} here but {targets[category]} before",
                "target",
            )
            continue
        target_line.setdefault(target, (category, line))
        targets[category] = target
        audio = root / "audio" / filename
        if not audio.is_file():
            problems.add(csv_path, line, f"audio file {audio} not found", "filename")
            continue
        rows.append((audio, category, fold))
    problems.raise_if_any(str(csv_path))
    if not rows:
        raise DatasetError(f"{csv_path}: no recordings listed")
    labels = tuple(sorted(targets, key=lambda c: targets[c]))
    items = tuple(Item(path, (category,), str(fold)) for path, category, fold in rows)
    return Manifest(items, labels, "esc50", multi_label=False)
