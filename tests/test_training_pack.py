"""`pack-cache` / `unpack-cache` on caches of real recordings: what a GPU elsewhere trains on
must be the same cache, a byte a value, with its index, targets and statistics intact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from claudio_daemon.features.frontend import FrontEndConfig
from tests.esc50_helpers import copy_esc50_subset
from training.cache import Cache, CacheError, precache
from training.datasets import load_datasets
from training.pack import pack_caches, unpack_caches
from training.stats import compute_stats

STEP_DB = 80.0 / 255


@pytest.fixture(scope="module")
def caches(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """`base`: six 16 kHz clips; `claps`: the same six and two 44.1 kHz ones (as the
    recipe's step-2 cache holds the step-1 recordings and more), with statistics."""
    tmp = tmp_path_factory.mktemp("pack")
    real = copy_esc50_subset(
        shared_data / "esc50-16k-folds123",
        tmp / "real",
        lambda rows: [r for r in rows if r["category"] in ("clapping", "dog", "rain")][:6],
    )
    assert len(real) == 6
    copy_esc50_subset(shared_data / "esc50-fold4-dev", tmp / "more", lambda rows: rows[:2])
    cfg = FrontEndConfig()
    base, claps = tmp / "base", tmp / "claps"
    precache(load_datasets([tmp / "real"]), base, cfg, workers=0, progress=False)
    precache(load_datasets([tmp / "real", tmp / "more"]), claps, cfg, workers=0, progress=False)
    compute_stats(claps, indices=np.arange(8), folds=Cache.open(claps).folds)
    return base, claps


def test_round_trip_keeps_every_value_within_half_a_step(
    caches: tuple[Path, Path], tmp_path: Path
) -> None:
    base, claps = caches
    report = pack_caches([base, claps], tmp_path / "ship.pack")
    assert report.caches == ("base", "claps")
    # The six recordings in both caches are stored once.
    assert (report.rows, report.shared_rows) == (8, 6)
    original = sum((c / "mels.npy").stat().st_size for c in (base, claps))
    assert report.path.stat().st_size < original / 4

    out = unpack_caches(report.path, tmp_path / "there")
    assert [p.name for p in out] == ["base", "claps"]
    for src, dst in zip((base, claps), out, strict=True):
        a, b = Cache.open(src), Cache.open(dst)
        assert b.labels == a.labels and b.items == a.items and b.dataset == a.dataset
        np.testing.assert_array_equal(b.targets, a.targets)
        np.testing.assert_array_equal(b.source_rates, a.source_rates)
        assert b.frontend == a.frontend  # statistics included
        err = np.abs(np.asarray(b.mels) - np.asarray(a.mels))
        assert err.max() <= STEP_DB / 2 + 1e-4
        assert err.mean() > 0  # really quantised, not copied
        # Each clip's peak survives exactly, and nothing falls out of the 80 dB range.
        np.testing.assert_allclose(b.mels.max(axis=(1, 2)), a.mels.max(axis=(1, 2)), atol=1e-5)
        index = json.loads((dst / "index.json").read_text())
        assert index["unpacked_from"]["step_db"] == pytest.approx(STEP_DB)
        assert index["fingerprint"] != json.loads((src / "index.json").read_text())["fingerprint"]
    assert not (out[0] / "stats.json").exists()
    assert (out[1] / "stats.json").read_text() == (claps / "stats.json").read_text()


def test_rows_are_shared_only_when_equal(caches: tuple[Path, Path], tmp_path: Path) -> None:
    base, claps = caches
    changed = tmp_path / "claps"
    changed.mkdir()
    for f in claps.iterdir():
        (changed / f.name).write_bytes(f.read_bytes())
    mels = np.load(changed / "mels.npy", mmap_mode="r+")
    mels[0] -= 1.0  # the same recording, cached differently
    mels.flush()
    del mels
    report = pack_caches([base, changed], tmp_path / "ship.pack")
    assert (report.rows, report.shared_rows) == (9, 5)
    (restored,) = [p for p in unpack_caches(report.path, tmp_path / "there") if p.name == "claps"]
    first = np.asarray(Cache.open(restored).mels[0])
    np.testing.assert_allclose(first, np.load(changed / "mels.npy")[0], atol=STEP_DB / 2 + 1e-4)


def test_unpacking_keeps_what_is_already_there(caches: tuple[Path, Path], tmp_path: Path) -> None:
    base, _ = caches
    pack = pack_caches([base], tmp_path / "ship.pack").path
    there = tmp_path / "there"
    unpack_caches(pack, there)
    (there / "base" / "note.txt").write_text("mine")
    with pytest.raises(CacheError, match="not empty"):
        unpack_caches(pack, there)
    assert (there / "base" / "note.txt").read_text() == "mine"
    unpack_caches(pack, there, force=True)
    assert not (there / "base" / "note.txt").exists()
    Cache.open(there / "base")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "training.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def test_cli_errors_name_the_file(caches: tuple[Path, Path], tmp_path: Path) -> None:
    base, claps = caches
    ok = _cli("pack-cache", str(base), str(claps), "--out", str(tmp_path / "p.pack"))
    assert ok.returncode == 0, ok.stderr
    assert "8 clips (6 shared)" in ok.stdout
    ok = _cli("unpack-cache", str(tmp_path / "p.pack"), "--into", str(tmp_path / "u"))
    assert ok.returncode == 0, ok.stderr
    assert Cache.open(tmp_path / "u" / "claps").frontend == Cache.open(claps).frontend

    junk = tmp_path / "junk.pack"
    junk.write_text("not a pack")
    bad = _cli("unpack-cache", str(junk), "--into", str(tmp_path / "v"))
    assert bad.returncode == 2 and f"{junk}: not a cache pack" in bad.stderr
    twin = tmp_path / "twin" / "base"
    twin.parent.mkdir()
    twin.symlink_to(base)
    bad = _cli("pack-cache", str(base), str(twin), "--out", str(tmp_path / "q.pack"))
    assert bad.returncode == 2 and "different names" in bad.stderr
    bad = _cli("pack-cache", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.pack"))
    assert bad.returncode == 2 and "nowhere" in bad.stderr
    assert not (tmp_path / "q.pack").exists() and not (tmp_path / "r.pack").exists()
