"""scripts/crossval.sh and scripts/train_model.sh, the model card's recipe as commands, run
for real on a few real recordings with one epoch a step: a held-out fold stays out of both
statistics and its real clips are scored, a second start redoes nothing, and the model
trained on every fold is one the daemon loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from claudio_daemon.model.classifier import OnnxClassifier
from tests.conftest import ROOT
from tests.esc50_helpers import copy_esc50_subset
from training.fit import channels_last_for, load_checkpoint
from training.stats import compute_stats
from training.synth_claps import load_22k

SCRIPTS = ROOT / "scripts"
#: One recording of each per fold: claps to cut, backgrounds to lay them over, and sounds
#: whose transients the clap detector mines as hard negatives.
CLASSES = ("clapping", "rain", "clock_tick", "can_opening", "mouse_click")


def _pick(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    keep, seen = [], set()
    for r in sorted(rows, key=lambda r: r["filename"]):
        key = (r["fold"], r["category"])
        if r["fold"] != "1" and r["category"] in CLASSES and key not in seen:
            keep.append(r)
            seen.add(key)
    return keep


@pytest.fixture(scope="module")
def data(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for name in ("esc50-16k-folds123", "esc50-fold4-dev"):
        copy_esc50_subset(shared_data / name, root / name, _pick)
    return root


def _script(
    name: str, *args: str, data: Path, timeout: float = 900, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        **extra,
        "DATA": str(data),
        "BASE_EPOCHS": "1",
        "STEP2_EPOCHS": "1",
        # One clapping recording a fold holds a single clap or two: a few clips show them
        # (the recipe's 50 a fold would only make each step and the export slower).
        "SYNTH_PER_FOLD": "4",
        # Mining with an older commit needs the repository's history; the test mines with
        # the checkout it runs in.
        "MINE_COMMIT": "HEAD",
    }
    return subprocess.run(
        [str(SCRIPTS / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def work(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("crossval")
    res = _script("crossval.sh", "--work", str(work), "4", data=data)
    assert res.returncode == 0, res.stderr[-4000:]
    return work


def test_the_test_fold_is_held_out_and_scored_on_its_real_clips(work: Path) -> None:
    for cache in ("esc50-fold4", "esc50-claps-fold4"):
        stats = json.loads((work / "cache" / cache / "stats.json").read_text())
        assert stats["folds"] == ["2", "3"], cache
    run = work / "runs" / "fold4"
    for name in ("int8", "float", "base"):
        m = json.loads((run / f"{name}.json").read_text())
        assert m["n_clips"] == len(CLASSES), name  # fold 4's real recordings, nothing else
        assert 0.0 <= m["accuracy"] <= 1.0
    int8 = json.loads((run / "int8.json").read_text())
    summary = (work / "summary.md").read_text()
    assert f"| 4 | {len(CLASSES)} |" in summary
    assert f"/ {int8['accuracy']:.3f} |" in summary


def test_a_second_start_redoes_nothing(work: Path, data: Path) -> None:
    run = work / "runs" / "fold4"
    trained = [
        run / "base" / "last.pt",
        run / "claps" / "last.pt",
        run / "export" / "model.int8.onnx",
    ]
    before = [p.stat().st_mtime_ns for p in trained]
    summary = (work / "summary.md").read_text()
    res = _script("crossval.sh", "--work", str(work), "4", data=data)
    assert res.returncode == 0, res.stderr[-4000:]
    assert [p.stat().st_mtime_ns for p in trained] == before
    assert (work / "summary.md").read_text() == summary


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    res = _script("crossval.sh", "--work", str(tmp_path), data=tmp_path)
    assert res.returncode == 2 and "name the test folds" in res.stderr
    res = _script("crossval.sh", "--work", str(tmp_path), "4", data=tmp_path / "nowhere")
    assert res.returncode == 1
    assert f"{tmp_path / 'nowhere'}/esc50-16k-folds123/meta/esc50.csv not found" in res.stderr
    res = _script("train_model.sh", "--work", str(tmp_path), "--epochs", "3", data=tmp_path)
    assert res.returncode == 2 and "unknown argument '--epochs'" in res.stderr


def test_the_all_folds_model_is_one_the_daemon_loads(work: Path, data: Path) -> None:
    out = work / "shipped" / "model.onnx"
    # Same work folder: the inputs cross-validation built are reused, not rebuilt.
    inputs = [work / "cache" / "esc50-claps" / ".done", work / "data" / "mined" / ".done"]
    before = [p.stat().st_mtime_ns for p in inputs]
    res = _script(
        "train_model.sh",
        "--work",
        str(work),
        "--out",
        str(out),
        data=data,
        FIT_ARGS="--no-channels-last",
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert [p.stat().st_mtime_ns for p in inputs] == before
    assert f"wrote {out}" in res.stderr
    # FIT_ARGS reach both steps' `fit`; without them fit takes the faster layout here.
    faster = channels_last_for(torch.device("cpu"))
    for run, channels_last in (("all", False), ("fold4", faster)):
        for step in ("base", "claps"):
            config = load_checkpoint(work / "runs" / run / step / "last.pt")["config"]
            assert config["channels_last"] is channels_last, (run, step)

    clf = OnnxClassifier(out, device="cpu")
    assert clf.metadata.training_data["held_out_folds"] == []
    assert clf.metadata.training_data["train_folds"] == ["2", "3", "4"]
    assert clf.labels[-1] == "clap_pattern" and "clapping" in clf.labels
    # The recipe's clap-check operating point travels in the file (CLAP_CHECK).
    assert clf.metadata.clap_check == {"min_clap_evidence": 1.25}
    stats = json.loads((work / "cache" / "esc50-claps-all" / "stats.json").read_text())
    assert clf.frontend.mean == pytest.approx(stats["mean"])
    assert clf.frontend.std == pytest.approx(stats["std"])
    clip = next((data / "esc50-fold4-dev" / "audio").glob("*-22.wav"))  # clapping
    scores = clf.classify_audio(load_22k(clip))
    assert set(scores) == set(clf.labels)
    assert all(0.0 <= v <= 1.0 for v in scores.values())


@pytest.fixture(scope="module")
def lease(work: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What travels to a GPU machine: the packed caches of the crossval run above."""
    lease = tmp_path_factory.mktemp("lease")
    res = _script(
        "gpu_lease.sh",
        "prepare",
        "--work",
        str(work),
        "--lease",
        str(lease),
        "--no-wheels",
        data=data,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return lease


PY = str(ROOT / ".venv" / "bin" / "python")


@pytest.fixture(scope="module")
def leased(lease: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The lease trained "there" (fold 2 and the shipped model's run): its work folder and
    what came back."""
    there = tmp_path_factory.mktemp("there")
    out = tmp_path_factory.mktemp("out")
    assert (lease / "esc50.pack").is_file()
    # There: no recordings, only the pack; PYTHON names the interpreter (python3 by default).
    res = _script(
        "gpu_lease.sh",
        "train",
        "--work",
        str(there),
        "--lease",
        str(lease),
        "--out",
        str(out),
        "2",
        "all",
        data=there / "no-recordings",
        PYTHON=PY,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    return there, out


def test_a_gpu_lease_trains_from_the_packed_caches_alone(
    work: Path, leased: tuple[Path, Path], tmp_path: Path
) -> None:
    there, out = leased
    assert sorted(p.name for p in out.iterdir()) == [
        "all.int8.onnx",
        "crossval.md",
        "fold2.int8.onnx",
        "logs.tar.gz",
    ]
    # There, without the recordings, fold 2's real clips were scored from the cache.
    run2 = there / "runs" / "fold2"
    int8 = json.loads((run2 / "int8-cache.json").read_text())
    assert int8["n_clips"] == len(CLASSES)
    assert f"| 2 | {len(CLASSES)} |" in (out / "crossval.md").read_text()
    assert f"/ {int8['accuracy']:.3f} |" in (out / "crossval.md").read_text()
    fold2 = OnnxClassifier(out / "fold2.int8.onnx", device="cpu")
    assert fold2.metadata.training_data["held_out_folds"] == ["2"]
    stats = json.loads((there / "cache" / "esc50-claps-fold2" / "stats.json").read_text())
    assert stats["folds"] == ["3", "4"]
    assert fold2.frontend.mean == pytest.approx(stats["mean"])
    shipped = OnnxClassifier(out / "all.int8.onnx", device="cpu")
    assert shipped.metadata.training_data["held_out_folds"] == []
    # The unpacked cache gives the statistics of the original within its 0.3 dB steps.
    reference = tmp_path / "reference"
    shutil.copytree(work / "cache" / "esc50-claps", reference)
    mean, std = compute_stats(reference)
    assert shipped.frontend.mean == pytest.approx(mean, abs=0.2)
    assert shipped.frontend.std == pytest.approx(std, abs=0.2)
    assert shipped.frontend.mean != mean  # trained on the quantised copy, not the original


def test_a_step2_variant_reuses_the_base_and_returns_scores_only(
    lease: Path, leased: tuple[Path, Path], data: Path, tmp_path: Path
) -> None:
    """A variant (VARIANT, STEP2_ARGS) trains step 2 again on the base the lease trained
    there and scores it beside the recipe's, so variants of four folds fit in one call's 8
    files."""
    there, _ = leased
    out = tmp_path / "out"
    common = ("--work", str(there), "--lease", str(lease), "--out", str(out), "--scores-only")
    run = there / "runs" / "fold2"
    base = (run / "base" / "last.pt").stat().st_mtime_ns
    res = _script(
        "gpu_lease.sh",
        "train",
        *common,
        "2",
        data=tmp_path / "none",
        PYTHON=PY,
        VARIANT="lr2e-4",
        STEP2_ARGS="--lr 0.0002",
    )
    assert res.returncode == 0, res.stderr[-4000:]
    # --scores-only: the table and the logs, no model.
    assert sorted(p.name for p in out.iterdir()) == ["crossval-lr2e-4.md", "logs.tar.gz"]
    assert (run / "base" / "last.pt").stat().st_mtime_ns == base
    recipe = load_checkpoint(run / "claps" / "last.pt")["config"]
    variant = load_checkpoint(run / "claps-lr2e-4" / "last.pt")["config"]
    assert (recipe["lr"], variant["lr"]) == (0.0005, 0.0002)
    assert (run / "export-lr2e-4" / "model.int8.onnx").is_file()
    scored = json.loads((run / "int8-lr2e-4-cache.json").read_text())
    # Its own model's scores, beside the recipe's.
    assert scored["model"] == str(run / "export-lr2e-4" / "model.int8.onnx")
    assert (run / "int8-cache.json").is_file()
    table = (out / "crossval-lr2e-4.md").read_text()
    assert f"| 2 | {len(CLASSES)} |" in table and f"/ {scored['accuracy']:.3f} |" in table
    res = _script("gpu_lease.sh", "train", *common, "2", data=data, PYTHON=PY, VARIANT="a b")
    assert res.returncode == 2 and "VARIANT" in res.stderr
    res = _script(
        "gpu_lease.sh", "train", *common, "2", data=data, PYTHON=PY, VARIANT="v", BASE_ARGS="--lr 1"
    )
    assert res.returncode == 2 and "BASE_ARGS needs a WORK of its own" in res.stderr
