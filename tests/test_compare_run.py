"""`claudio-train compare` end to end on a tiny learnable dataset: every approach runs for a
moment (networks 2 epochs, federated 2 rounds of 2 of 4 clients on Flower's simulation
runtime), the table has its columns, and each approach beats chance on held-out clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from training.compare.cli import register
from training.compare.table import COLUMNS
from training.compare.toy import CLASSES, make_toy_esc50
from training.metrics import mean_average_precision


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """claudio-train (test copy)."""

    register(app)
    return app


def _chance_map(targets: np.ndarray, draws: int = 500, quantile: float = 0.95) -> float:
    """The mAP that random scores exceed only (1 - quantile) of the time on these clips."""
    rng = np.random.default_rng(0)
    maps = [mean_average_precision(targets, rng.random(targets.shape)) for _ in range(draws)]
    return float(np.quantile(maps, quantile))


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return make_toy_esc50(tmp_path_factory.mktemp("toy"), per_class_per_fold=4)


def _compare_args(toy: Path, cache: Path, out: Path) -> list[str]:
    return [
        "compare",
        str(toy),
        "--cache", str(cache),
        "--out", str(out),
        "--val-fold", "3",
        "--test-fold", "4",
        "--epochs", "2",
        "--batch-size", "8",
        "--rounds", "2",
        "--clients", "4",
        "--clients-per-round", "2",
        "--local-epochs", "2",
        "--fed-model", "simple_cnn",
        "--workers", "0",
        "--device", "cpu",
        "--infer-repeats", "2",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def compared(toy, tmp_path_factory) -> tuple[Path, Path, object]:
    work = tmp_path_factory.mktemp("compare")
    cache, out = work / "cache", work / "out"
    result = CliRunner().invoke(_app(), _compare_args(toy, cache, out))
    return cache, out, result


def test_compare_writes_the_table(compared) -> None:
    _, out, result = compared
    assert result.exit_code == 0, result.output + repr(result.exception)
    doc = json.loads((out / "results.json").read_text())
    assert doc["columns"] == list(COLUMNS)
    approaches = [row["approach"] for row in doc["rows"]]
    assert approaches == [
        "xgboost",
        "xgboost_top15",
        "simple_cnn",
        "resnet18",
        "se_resnet18",
        "ast",
        "federated",
    ]
    for row in doc["rows"]:
        assert set(COLUMNS) <= set(row)
        for key in ("precision", "recall", "f1", "map"):
            assert 0.0 <= row[key] <= 1.0, (row["approach"], key)
        assert isinstance(row["params"], int) and row["params"] > 0
        assert row["train_time_s"] > 0 and row["infer_ms_per_clip"] > 0
    meta = doc["meta"]
    assert (meta["n_train"], meta["n_val"], meta["n_test"]) == (24, 12, 12)
    assert meta["scored_folds"] == ["4"] and meta["train_folds"] == ["1", "2"]
    assert [nr["approach"] for nr in doc["not_reproduced"]] == ["clap"]
    xgb_top = doc["rows"][1]
    assert xgb_top["n_features"] == 15 and len(doc["rows"][0]["importance"]) == 36
    md = (out / "results.md").read_text()
    assert md.startswith("| approach | precision | recall | F1 | mAP |")
    assert "| clap | - |" in md and "not reproducible" in md
    assert "claudio-train compare" in md  # the exact command is recorded
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "federated" in result.output and "results.md" in result.output


def test_every_approach_beats_chance(compared) -> None:
    cache_dir, out, result = compared
    assert result.exit_code == 0, result.output
    from training.cache import Cache

    cache = Cache.open(cache_dir)
    targets = cache.targets[cache.indices_for_folds(["4"])]
    chance = _chance_map(targets)
    rows = json.loads((out / "results.json").read_text())["rows"]
    for row in rows:
        assert row["map"] > chance, (row["approach"], row["map"], chance)
        assert row["accuracy"] > 1.0 / len(CLASSES), (row["approach"], row["accuracy"])


def test_a_federated_rerun_trains_the_same_clients_to_the_same_model(
    compared, toy, tmp_path
) -> None:
    # Flower's simulated node ids are new each run; the server samples clients by their
    # partition ids instead, so the same seed gives the same rounds, losses and weights.
    cache_dir, out, result = compared
    assert result.exit_code == 0, result.output
    again = tmp_path / "again"
    args = _compare_args(toy, cache_dir, again) + ["--approach", "federated"]
    rerun = CliRunner().invoke(_app(), args)
    assert rerun.exit_code == 0, rerun.output + repr(rerun.exception)
    first = json.loads((out / "runs" / "federated" / "history.json").read_text())
    second = json.loads((again / "runs" / "federated" / "history.json").read_text())
    assert second == first
    rows = [
        next(r for r in json.loads((d / "results.json").read_text())["rows"]
             if r["approach"] == "federated")
        for d in (out, again)
    ]  # fmt: skip
    assert rows[1]["map"] == rows[0]["map"] and rows[1]["accuracy"] == rows[0]["accuracy"]


def test_federated_checkpoint_is_a_normal_training_checkpoint(compared) -> None:
    cache_dir, out, result = compared
    assert result.exit_code == 0, result.output
    from training.evaluate import evaluate

    run = out / "runs" / "federated"
    history = json.loads((run / "history.json").read_text())
    assert [h["round"] for h in history] == [1, 2]
    assert all("train_loss" in h and "val_map" in h for h in history)
    metrics = evaluate(run / "best.pt", cache_dir, folds=("4",)).metrics
    row = next(r for r in json.loads((out / "results.json").read_text())["rows"]
               if r["approach"] == "federated")  # fmt: skip
    assert metrics["map"] == pytest.approx(row["map"], abs=1e-6)


def test_bad_requests_fail_with_one_clear_line(compared, tmp_path) -> None:
    cache_dir, _, result = compared
    assert result.exit_code == 0
    runner = CliRunner()
    bad = runner.invoke(
        _app(), ["compare", "--cache", str(cache_dir), "--approach", "clap", "--test-fold", "4"]
    )
    assert bad.exit_code == 2 and "unknown approach" in bad.output
    none = runner.invoke(_app(), ["compare", "--cache", str(cache_dir), "--out", str(tmp_path)])
    assert none.exit_code == 2 and "nothing to score on" in none.output
    missing = runner.invoke(_app(), ["compare", "--cache", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "precache" in missing.output


def test_several_dataset_folders_make_one_cache(tmp_path) -> None:
    from training.cache import Cache
    from training.compare.run import prepare_cache

    a = make_toy_esc50(tmp_path / "a", per_class_per_fold=1, folds=2)
    b = make_toy_esc50(tmp_path / "b", per_class_per_fold=1, folds=1, first_fold=3)
    report = prepare_cache([a, b], tmp_path / "cache", workers=0)
    assert report.n_items == 9 and not report.skipped
    cache = Cache.open(tmp_path / "cache")
    assert sorted(cache.folds) == ["1", "2", "3"] and cache.labels == CLASSES
