"""What every dataset loader returns: a manifest of (file, labels, fold), checked up front.

Loaders read metadata only; no audio is decoded here. Problems in a metadata file are
collected (not stopped at the first) and reported as "file:line: column 'x': what is wrong",
so a user fixing a CSV of their own recordings sees every mistake in one run.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AUDIO_SUFFIXES", "DatasetError", "Item", "Manifest", "Problems", "read_csv_rows"]

#: File types a folder dataset may hold (all decoded by libsndfile).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")

#: How many problems one DatasetError lists before summarising the rest.
MAX_LISTED = 20


class DatasetError(ValueError):
    """Dataset metadata is missing or wrong; `problems` holds one "file:line: ..." per issue."""

    def __init__(self, message: str, problems: Iterable[str] = ()) -> None:
        self.problems = list(problems)
        super().__init__(message)


class Problems:
    """Collects "file:line: column 'c': reason" messages and raises them together."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(
        self, file: Path | str, line: int | None, reason: str, column: str | None = None
    ) -> None:
        where = f"{file}:{line}" if line is not None else f"{file}"
        col = f" column {column!r}:" if column else ""
        self.items.append(f"{where}:{col} {reason}")

    def raise_if_any(self, what: str) -> None:
        if not self.items:
            return
        shown = self.items[:MAX_LISTED]
        more = len(self.items) - len(shown)
        text = "\n".join(shown) + (f"\n... and {more} more" if more else "")
        if len(self.items) == 1:
            raise DatasetError(self.items[0], self.items)
        raise DatasetError(f"{what}: {len(self.items)} problems\n{text}", self.items)


def read_csv_rows(
    path: Path, required: Iterable[str], problems: Problems
) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) from a CSV with a header; missing columns are one problem.

    Line numbers are the file's physical lines (1 = header; a quoted multi-line row reports
    its last line), so blank lines in between do not shift them.

    A row with more fields than the header is a problem, not yielded: csv would file the
    extras under no column, so `a.wav,dog,rain` silently lost `rain` (and with a fold
    column after it, `rain` became the fold). Such rows are nearly always an unquoted
    comma-separated multi-label field.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            for col in missing:
                problems.add(path, 1, f"missing column (header has {header})", col)
            problems.raise_if_any(str(path))
        reader.fieldnames = header
        for row in reader:
            extra = row.get(None)
            if extra:
                problems.add(
                    path,
                    reader.line_num,
                    f"{len(header) + len(extra)} fields but the header has {len(header)} "
                    f"({','.join(header)}); quote multi-label fields "
                    '("dog,rain") or separate the labels with ";"',
                )
                continue
            yield reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}


@dataclass(frozen=True)
class Item:
    """One recording: where it is, which labels it carries, and which fold/split it is in."""

    path: Path
    labels: tuple[str, ...]
    #: "1".."5" for ESC-50, "train"/"val"/"eval" for FSD50K, "" or a user column for folders.
    fold: str = ""


@dataclass(frozen=True)
class Manifest:
    """A dataset's recordings and its label vocabulary (the model's output order)."""

    items: tuple[Item, ...]
    labels: tuple[str, ...]
    name: str
    multi_label: bool

    def __post_init__(self) -> None:
        if len(set(self.labels)) != len(self.labels):
            raise DatasetError(f"{self.name}: duplicate names in the label vocabulary")
        vocab = set(self.labels)
        for item in self.items:
            unknown = [lab for lab in item.labels if lab not in vocab]
            if unknown:
                raise DatasetError(f"{item.path}: labels {unknown} are not in the vocabulary")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def folds(self) -> tuple[str, ...]:
        """The distinct folds, in first-seen order."""
        return tuple(dict.fromkeys(item.fold for item in self.items))

    def subset(self, folds: Iterable[str]) -> Manifest:
        """Only the items in these folds (the vocabulary is kept, so outputs stay aligned)."""
        keep = {str(f) for f in folds}
        return Manifest(
            tuple(i for i in self.items if i.fold in keep), self.labels, self.name, self.multi_label
        )

    def exclude(self, folds: Iterable[str]) -> Manifest:
        """Every item except those in these folds."""
        drop = {str(f) for f in folds}
        return Manifest(
            tuple(i for i in self.items if i.fold not in drop),
            self.labels,
            self.name,
            self.multi_label,
        )
