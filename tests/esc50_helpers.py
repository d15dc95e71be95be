"""Small ESC-50 layout folders copied from the shared recordings at test time (never
committed): the training tools are tested on real clips, a few at a time."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path

Row = dict[str, str]


def copy_esc50_subset(src: Path, dst: Path, pick: Callable[[list[Row]], list[Row]]) -> list[Row]:
    """Copy the rows `pick` chooses from src's meta/esc50.csv, and their audio, to dst."""
    with (src / "meta" / "esc50.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns, rows = reader.fieldnames or [], list(reader)
    keep = pick(rows)
    (dst / "audio").mkdir(parents=True)
    (dst / "meta").mkdir()
    for r in keep:
        shutil.copy(src / "audio" / r["filename"], dst / "audio" / r["filename"])
    with (dst / "meta" / "esc50.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(keep)
    return keep
