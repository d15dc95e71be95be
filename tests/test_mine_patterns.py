"""`claudio-train mine-patterns` on real ESC-50 recordings: the clips are the segments the
daemon's clap check would classify, labelled with their recording's class, in its fold."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from claudio_daemon.detect.settings import ClapSettings
from tests.esc50_helpers import copy_esc50_subset
from training.cli import app
from training.datasets import load_dataset
from training.mine_patterns import MAX_COUNT, detected_patterns
from training.synth_claps import load_22k, single_claps

RATE = 22050
#: Recordings whose transients the detector takes for claps in most replays (fold 1 at
#: 16 kHz, fold 4 at 44.1 kHz), a clapping recording (never mined) and backgrounds.
SOURCES = {
    "esc50-16k-folds123": (
        "1-45645-A-31.flac",  # mouse_click
        "1-41615-A-34.flac",  # can_opening
        "1-17367-A-10.flac",  # rain
        "1-104089-A-22.flac",  # clapping
    ),
    "esc50-fold4-dev": (
        "4-188003-A-34.wav",  # can_opening
        "4-204115-A-39.wav",  # glass_breaking
        "4-163264-A-10.wav",  # rain
    ),
}
LATE = ("4-204115-A-39.wav",)


def _subset(src: Path, dst: Path, names: tuple[str, ...]) -> None:
    rows = copy_esc50_subset(src, dst, lambda rows: [r for r in rows if r["filename"] in names])
    assert len(rows) == len(names), f"{src}: missing some of {names}"


def _inputs(shared: Path, root: Path, leave_out: tuple[str, ...] = ()) -> list[Path]:
    out = []
    for name, files in SOURCES.items():
        _subset(shared / name, root / name, tuple(f for f in files if f not in leave_out))
        out.append(root / name)
    return out


def _mine(inputs: list[Path], out: Path, *extra: object) -> str:
    res = CliRunner().invoke(
        app, ["mine-patterns", *map(str, inputs), "--out", str(out), *map(str, extra)]
    )
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.fixture(scope="module")
def inputs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _inputs(shared_data, tmp_path_factory.mktemp("esc"))


@pytest.fixture(scope="module")
def mined(inputs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mined") / "out"
    summary = _mine(inputs, out, "--seed", 3, "--replays", 2)
    assert "wrote" in summary and "replays held a pattern" in summary
    return out


def _rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "meta" / "esc50.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_the_segment_is_what_the_clap_check_receives(shared_data: Path) -> None:
    # Three real claps at known places over faint noise: one pattern, cut 0.3 s before
    # the first clap to 0.3 s after the last, with the clap times inside it.
    clapping = load_22k(shared_data / "esc50-16k-folds123" / "audio" / "2-76408-A-22.flac")
    claps = single_claps(clapping, "2-76408-A-22.flac")
    assert len(claps) >= 3
    rng = np.random.default_rng(0)
    audio = rng.standard_normal(6 * RATE) * 1e-4
    onsets = [2 * RATE, 2 * RATE + int(0.45 * RATE), 2 * RATE + int(1.0 * RATE)]
    for at, clap in zip(onsets, claps, strict=False):
        audio[at : at + len(clap.audio)] += clap.audio / np.max(np.abs(clap.audio)) * 0.3
    pre = int(0.02 * RATE)  # a cut starts 20 ms before its onset

    (pattern,) = detected_patterns(audio.astype(np.float32))
    assert pattern.count == 3
    truth = np.array(onsets) + pre
    got = np.array(pattern.clap_samples) + pattern.start
    assert np.all(np.abs(got - truth) < 0.01 * RATE)
    assert pattern.start == got[0] - int(0.3 * RATE)
    assert pattern.start + len(pattern.audio) == pytest.approx(got[-1] + 0.3 * RATE, abs=2)
    # Exactly the stream's audio at that place (the listener's own ring).
    np.testing.assert_allclose(
        pattern.audio, audio[pattern.start : pattern.start + len(pattern.audio)], atol=1e-6
    )

    assert detected_patterns(audio.astype(np.float32), min_count=4) == []
    # The hook works whatever the user's settings say about the classifier.
    off = ClapSettings(confirm_with_classifier=False)
    assert len(detected_patterns(audio.astype(np.float32), off)) == 1


def test_mined_clips_are_labelled_negatives_in_their_folds(mined: Path, inputs) -> None:
    sources = {r["filename"]: r for folder in inputs for r in _rows(folder)}
    rows = _rows(mined)
    recipes = {c["filename"]: c for c in json.loads(
        (mined / "meta" / "mined_patterns.json").read_text())["clips"]}  # fmt: skip
    assert rows and set(recipes) == {r["filename"] for r in rows}
    assert {p.name for p in (mined / "audio").iterdir()} == set(recipes)
    for r in rows:
        recipe = recipes[r["filename"]]
        src = sources[recipe["source"]]
        # The recording's class, fold and source id: a mined clip is a piece of it.
        assert (r["category"], r["target"], r["fold"]) == (
            src["category"], src["target"], src["fold"]
        )  # fmt: skip
        assert r["src_file"] == src["src_file"]
        assert src["category"] != "clapping"
        if recipe["background"] is not None:
            assert sources[recipe["background"]]["fold"] == r["fold"]
        assert 2 <= recipe["count"] <= MAX_COUNT == 4
        assert len(recipe["clap_samples"]) == recipe["count"]
        audio, rate = sf.read(mined / "audio" / r["filename"], dtype="float32")
        assert rate == RATE and audio.ndim == 1
        assert len(audio) == pytest.approx(recipe["clap_samples"][-1] + 0.3 * RATE, abs=0.02 * RATE)
        assert 0.0 < np.max(np.abs(audio)) < 1.0
    # At most --max-per-recording (2) clips from one replay.
    per_replay: dict[tuple[str, int], int] = {}
    for c in recipes.values():
        key = (c["source"], c["replay"])
        per_replay[key] = per_replay.get(key, 0) + 1
    assert max(per_replay.values()) <= 2
    # Both folds and several classes yield clips (these recordings were picked for it).
    assert {r["fold"] for r in rows} == {"1", "4"}
    categories = {r["category"] for r in rows}
    assert len(categories) >= 3 and "mouse_click" in categories
    manifest = load_dataset(mined)
    assert len(manifest.items) == len(rows)


def test_a_recordings_clips_do_not_depend_on_the_others(mined: Path, shared_data, tmp_path):
    again = tmp_path / "again"
    _mine(_inputs(shared_data, tmp_path / "in", leave_out=LATE), again, "--seed", 3)
    first = json.loads((mined / "meta" / "mined_patterns.json").read_text())["clips"]
    second = json.loads((again / "meta" / "mined_patterns.json").read_text())["clips"]

    def by_source(clips, folder):
        return {
            (c["source"], c["replay"], tuple(c["clap_samples"])): (
                folder / "audio" / c["filename"]
            ).read_bytes()
            for c in clips
            if c["source"] not in LATE
        }

    kept = by_source(first, mined)
    assert kept and by_source(second, again) == kept
    assert any(c["source"] in LATE for c in first)


def test_same_seed_same_files_other_seed_other_clips(mined: Path, inputs, tmp_path) -> None:
    _mine(inputs, tmp_path / "same", "--seed", 3)
    assert _files(tmp_path / "same") == _files(mined)
    _mine(inputs, tmp_path / "other", "--seed", 4)
    assert (
        _files(tmp_path / "other")["meta/mined_patterns.json"]
        != _files(mined)["meta/mined_patterns.json"]
    )


def test_bad_arguments_and_nothing_to_mine_are_clear_errors(shared_data, tmp_path) -> None:
    only_claps = tmp_path / "claps"
    _subset(shared_data / "esc50-16k-folds123", only_claps, ("1-104089-A-22.flac",))
    runner = CliRunner()
    res = runner.invoke(app, ["mine-patterns", str(only_claps), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "no clap pattern" in res.stderr
    res = runner.invoke(
        app, ["mine-patterns", str(only_claps), "--out", str(tmp_path / "o2"), "--replays", "0"]
    )
    assert res.exit_code == 2 and "replays" in res.stderr
