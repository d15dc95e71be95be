"""`claudio-train synth-claps` on a few real ESC-50 recordings: the clips it writes are a
loadable ESC-50 folder, shaped like the segment the daemon classifies, and reproducible."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from tests.esc50_helpers import copy_esc50_subset
from training.cli import app
from training.datasets import load_dataset, load_datasets
from training.synth_claps import read_recordings

#: Clapping recordings with isolated claps (fold 2 and 3), one fold-4 recording at 44.1 kHz.
CLAPPING = {
    "esc50-16k-folds123": ("2-76408-A-22.flac", "3-197435-A-22.flac"),
    "esc50-fold4-dev": ("4-189836-A-22.wav",),
}
BACKGROUND = ("rain", "clock_tick")
PER_FOLD = 4
RATE = 22050


def _subset(src: Path, dst: Path, clapping: tuple[str, ...]) -> dict[str, str]:
    """Copy the clapping recordings and one rain and one clock_tick recording per fold."""

    def pick(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        folds = {r["fold"] for r in rows if r["filename"] in clapping}
        keep, seen = [], set()
        for r in sorted(rows, key=lambda r: r["filename"]):
            bg = (r["fold"], r["category"])
            if r["filename"] in clapping or (
                r["fold"] in folds and r["category"] in BACKGROUND and bg not in seen
            ):
                keep.append(r)
                seen.add(bg)
        return keep

    keep = copy_esc50_subset(src, dst, pick)
    return {r["filename"]: r["fold"] for r in keep}


@pytest.fixture(scope="module")
def inputs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("esc")
    roots, fold_of = [], {}
    for name, clapping in CLAPPING.items():
        roots.append(root / name)
        fold_of.update(_subset(shared_data / name, root / name, clapping))
    return roots, fold_of


def _run(*args: object) -> object:
    return CliRunner().invoke(app, ["synth-claps", *map(str, args)])


def _synth(inputs, out: Path, seed: int, *extra: str) -> None:
    res = _run(*inputs[0], "--out", out, "--per-fold", PER_FOLD, "--seed", seed, *extra)
    assert res.exit_code == 0, res.output
    assert f"fold 2: {PER_FOLD} clips" in res.stdout


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def synth(inputs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "claps"
    _synth(inputs, out, seed=7)
    return out


def test_clips_are_the_segment_the_daemon_classifies(synth: Path, inputs) -> None:
    _, fold_of = inputs
    with (synth / "meta" / "esc50.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == [
            "filename", "fold", "target", "category", "esc10", "src_file", "take"
        ]  # fmt: skip
        rows = list(reader)
    clips = json.loads((synth / "meta" / "synth_claps.json").read_text())["clips"]
    recipes = {r["filename"]: r for r in clips}
    assert {r["filename"] for r in rows} == {p.name for p in (synth / "audio").iterdir()}
    assert set(recipes) == {r["filename"] for r in rows}
    # A label of their own, numbered after every target of the inputs (clock_tick is 38).
    assert {r["category"] for r in rows} == {"clap_pattern"}
    assert {r["target"] for r in rows} == {"39"}

    folds = [r["fold"] for r in rows]
    assert {"2", "3"} <= set(folds) <= {"2", "3", "4"}
    assert all(folds.count(f) == PER_FOLD for f in set(folds))
    for r in rows:
        recipe = recipes[r["filename"]]
        # Claps and background come from the clip's own fold, so folds stay honest.
        assert {fold_of[c] for c in recipe["claps"]} == {r["fold"]}
        if recipe["background"] is not None:
            assert fold_of[recipe["background"]] == r["fold"]

        audio, rate = sf.read(synth / "audio" / r["filename"], dtype="float32")
        assert rate == RATE and audio.ndim == 1
        n = len(recipe["claps"])
        assert 1 <= n <= 4 and len(recipe["gaps_s"]) == n - 1
        # 0.3 s before the first onset, the gaps, the last clap's 0.22 s, 0.3 s after it.
        seconds = len(audio) / RATE
        assert 0.6 + 0.22 - 1e-3 <= seconds <= 0.6 + 0.22 + 3 * 0.7 + 1e-3
        assert seconds == pytest.approx(0.82 + sum(recipe["gaps_s"]), abs=n / RATE)
        assert 0.05 < np.max(np.abs(audio)) < 1.0  # audible, never clipped

    manifest = load_dataset(synth)
    assert manifest.labels == ("clap_pattern",) and len(manifest.items) == len(rows)
    # Merged after the recordings, the new label becomes the last output.
    merged = load_datasets([*inputs[0], synth])
    assert merged.labels == ("rain", "clapping", "clock_tick", "clap_pattern")


def test_clips_can_be_listed_under_an_existing_label(synth: Path, inputs, tmp_path) -> None:
    _synth(inputs, tmp_path / "as-clapping", 7, "--label", "clapping")
    with (tmp_path / "as-clapping" / "meta" / "esc50.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["category"], r["target"]) for r in rows} == {("clapping", "22")}

    # Only the listing differs (names carry the target): the same seed, the same audio.
    def audio(out: Path) -> list[bytes]:
        return [v for k, v in sorted(_files(out).items()) if k.startswith("audio/")]

    assert audio(tmp_path / "as-clapping") == audio(synth)
    res = _run(*inputs[0], "--out", tmp_path / "blank", "--label", " ")
    assert res.exit_code == 2 and "label must be a non-empty name" in res.stderr
    assert not (tmp_path / "blank").exists()


def test_same_seed_same_files_other_seed_other_files(synth: Path, inputs, tmp_path) -> None:
    first = _files(synth)
    _synth(inputs, tmp_path / "same", seed=7)
    assert _files(tmp_path / "same") == first
    _synth(inputs, tmp_path / "other", seed=8)
    other = _files(tmp_path / "other")
    assert other.keys() == first.keys()
    assert other["meta/synth_claps.json"] != first["meta/synth_claps.json"]
    clips = [k for k in other if k.startswith("audio/")]
    assert all(other[k] != first[k] for k in clips)


def test_metadata_is_read_like_precache_reads_it(inputs, tmp_path) -> None:
    """synth-claps (and mine-patterns) read meta/esc50.csv as the dataset loader does: an
    Excel BOM was refused as 'missing columns', and a bad target was a bare int() error."""
    src = inputs[0][0]
    data = tmp_path / "esc"
    shutil.copytree(src, data)
    meta = data / "meta" / "esc50.csv"
    meta.write_bytes(b"\xef\xbb\xbf" + meta.read_bytes())
    assert read_recordings([data])[0] == [
        replace(r, path=data / r.path.relative_to(src)) for r in read_recordings([src])[0]
    ]
    lines = meta.read_text(encoding="utf-8-sig").splitlines()
    for n, col, value in ((3, 2, "x"), (4, 0, "")):  # lines 4 and 5: target, filename
        fields = lines[n].split(",")
        fields[col] = value
        lines[n] = ",".join(fields)
    meta.write_text("\n".join(lines) + "\n")
    for command in ("synth-claps", "mine-patterns"):
        res = CliRunner().invoke(app, [command, str(data), "--out", str(tmp_path / command)])
        assert res.exit_code == 2, res.output
        assert f"{meta}:4: column 'target': target 'x' is not an integer" in res.stderr
        assert f"{meta}:5: column 'filename': empty value" in res.stderr


def test_refuses_a_non_empty_out_folder_without_force(inputs, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    res = _run(*inputs[0], "--out", out, "--per-fold", 1)
    assert res.exit_code == 2
    assert "not empty" in res.stderr and "--force" in res.stderr
    assert (out / "notes.txt").read_text() == "keep me"
    res = _run(*inputs[0], "--out", out, "--per-fold", 1, "--force")
    assert res.exit_code == 0, res.output
    assert not (out / "notes.txt").exists() and (out / "meta" / "esc50.csv").is_file()
    # An input folder is never a place to write into, even with --force.
    res = _run(*inputs[0], "--out", inputs[0][0], "--force")
    assert res.exit_code == 2 and "overlap" in res.stderr
