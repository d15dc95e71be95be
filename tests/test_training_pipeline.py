"""End to end on a generated ESC-50-layout dataset: precache -> stats -> fit -> evaluate ->
export, through the Python API and the `claudio-train` CLI; resume; error messages."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from claudio_daemon.features.frontend import FrontEndConfig
from claudio_daemon.model.metadata import ModelMetadata
from training.augment import AugmentConfig
from training.cache import Cache, precache
from training.cli import app
from training.datasets import load_dataset
from training.evaluate import EvaluationError, evaluate
from training.export import export_onnx
from training.fit import (
    FitConfig,
    autocast_for,
    channels_last_for,
    cpu_bf16_supported,
    fit,
    load_checkpoint,
    lr_factor,
)
from training.models import create_model
from training.stats import compute_stats

ROOT = Path(__file__).resolve().parents[1]

KINDS = ("tone", "noise", "clapping")


def _sound(kind: str, sr: int, rng: np.random.Generator) -> np.ndarray:
    n = sr  # one second; the loader tiles it to the 5.94 s clip
    t = np.arange(n) / sr
    if kind == "tone":
        return 0.3 * np.sin(2 * np.pi * rng.uniform(400, 1500) * t)
    if kind == "noise":
        return 0.1 * rng.standard_normal(n)
    x = np.zeros(n)
    for start in rng.integers(0, n - 300, size=5):  # sharp decaying bursts, like claps
        x[start : start + 300] += rng.standard_normal(300) * np.exp(-np.arange(300) / 40)
    return 0.5 * x


def make_esc50(root: Path, folds: int = 3, per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True)
    (root / "meta").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, folds + 1):
        for target, kind in enumerate(KINDS):
            for k in range(per_class):
                sr = 16000 if k % 2 else 22050  # two source rates, as in the real data
                name = f"{fold}-{kind}-{k}.wav"
                sf.write(root / "audio" / name, _sound(kind, sr, rng).astype(np.float32), sr)
                rows.append(f"{name},{fold},{target},{kind},False,{k},A")
    (root / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_esc50(tmp_path_factory.mktemp("esc") / "esc50")


@pytest.fixture(scope="module")
def cache_dir(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cache")
    precache(load_dataset(dataset), out, FrontEndConfig(), workers=0, progress=False)
    cache = Cache.open(out)
    compute_stats(out, indices=cache.indices_for_folds(["1", "2"]))
    return out


def _cfg(out: Path, **kw) -> FitConfig:
    base = dict(
        model="simple_cnn",
        epochs=2,
        batch_size=4,
        lr=3e-3,
        val_folds=("3",),
        workers=0,
        out_dir=str(out),
        quiet=True,
        augment=AugmentConfig(mixup_alpha=0.2),
    )
    return FitConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    return fit(cache_dir, _cfg(tmp_path_factory.mktemp("run")))


def test_fit_writes_checkpoints_and_history(trained, cache_dir: Path) -> None:
    assert trained.best_checkpoint.is_file() and trained.last_checkpoint.is_file()
    history = json.loads((trained.last_checkpoint.parent / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["step"] == trained.steps == 2 * 3  # 12 training clips / batch 4
    for key in ("train_loss", "val_loss", "val_map", "val_accuracy"):
        assert np.isfinite(history[-1][key]), key
    ckpt = load_checkpoint(trained.last_checkpoint)
    assert ckpt["labels"] == list(KINDS)
    assert ckpt["step"] == 6 and ckpt["epoch"] == 1
    assert {"optimizer", "scheduler", "scaler", "config", "frontend"} <= set(ckpt)
    fe = FrontEndConfig.from_json(ckpt["frontend"])
    assert fe == Cache.open(cache_dir).frontend and fe.std != 1.0
    assert ckpt["training_data"]["n_clips"] == 12
    assert "CC BY-NC" in ckpt["training_data"]["licence"]


def test_the_logged_validation_is_what_evaluate_measures(trained, cache_dir: Path) -> None:
    """Training autocasts (bf16 on a CPU that has it, fp16 on CUDA); validation used to as
    well, so the logged val loss and mAP, and with them early stopping and best.pt, were
    measured on another model than the one exported and run. (On a CPU without bf16 there
    is no autocast and both sides agree either way.)"""
    from torch.utils.data import DataLoader

    from training.data import CachedDataset
    from training.fit import build_model_from_checkpoint, predict_logits

    history = json.loads((trained.last_checkpoint.parent / "history.json").read_text())
    cache = Cache.open(cache_dir)
    held_out = cache.indices_for_folds(["3"])
    model = build_model_from_checkpoint(load_checkpoint(trained.last_checkpoint))
    loader = DataLoader(CachedDataset(cache, held_out, augment=None), batch_size=4)
    logits, targets = predict_logits(model, loader, torch.device("cpu"))
    loss = torch.nn.BCEWithLogitsLoss()(torch.from_numpy(logits), torch.from_numpy(targets))
    assert history[-1]["val_loss"] == pytest.approx(float(loss), rel=1e-5)


def test_resume_continues_exactly(cache_dir: Path, tmp_path: Path, trained) -> None:
    out = tmp_path / "run"
    first = fit(cache_dir, _cfg(out, max_steps=4))  # stops one batch into epoch 2
    assert first.steps == 4
    assert load_checkpoint(first.last_checkpoint)["partial"]["batches_done"] == 1
    second = fit(cache_dir, _cfg(out, resume=True))
    assert second.steps == 6
    assert [h["epoch"] for h in second.history] == [1, 2]
    # The interrupted and resumed run ends exactly where the unbroken one did (same
    # dropout, mixup and augmentation draws, same schedule, same epoch loss).
    a = load_checkpoint(trained.last_checkpoint)
    b = load_checkpoint(second.last_checkpoint)
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    assert a["history"][-1]["train_loss"] == pytest.approx(b["history"][-1]["train_loss"])
    assert a["history"][-1]["val_map"] == b["history"][-1]["val_map"]


def test_resume_keeps_the_runs_epochs_and_patience(
    cache_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`fit --resume` without --epochs/--patience took the CLI defaults (30, 10): a 2-epoch
    run went on for 28 more epochs on another LR schedule. Given ones differ and say so."""
    out = tmp_path / "run"
    fit(cache_dir, _cfg(out, max_steps=4, patience=0))  # cut short in epoch 2 of 2
    shutil.copytree(out, tmp_path / "run2")
    res = CliRunner().invoke(
        app, ["fit", "--cache", str(cache_dir), "--out", str(out), "--resume", "--workers", "0"]
    )
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(out / "last.pt")
    assert (ckpt["config"]["epochs"], ckpt["config"]["patience"]) == (2, 0)
    assert [h["epoch"] for h in ckpt["history"]] == [1, 2] and ckpt["step"] == 6
    with caplog.at_level(logging.WARNING, logger="training.fit"):
        more = fit(cache_dir, _cfg(tmp_path / "run2", resume=True, epochs=3, patience=None))
    assert [h["epoch"] for h in more.history] == [1, 2, 3]
    assert "resuming with epochs 3; the run was started with 2" in caplog.text
    assert "patience" not in caplog.text


def test_max_steps_caps_and_resume_needs_a_run(cache_dir: Path, tmp_path: Path) -> None:
    res = fit(cache_dir, _cfg(tmp_path / "a", epochs=5, max_steps=2, val_folds=()))
    assert res.steps == 2
    with pytest.raises(FileExistsError, match="--resume"):
        fit(cache_dir, _cfg(tmp_path / "a"))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        fit(cache_dir, _cfg(tmp_path / "b", resume=True))
    with pytest.raises(ValueError, match="not in the cache"):
        fit(cache_dir, _cfg(tmp_path / "c", val_folds=("9",)))
    with pytest.raises(ValueError, match="scheduler"):
        fit(cache_dir, _cfg(tmp_path / "d", scheduler="step"))


def test_channels_last_trains_the_same_model_and_old_runs_resume_in_nchw(
    cache_dir: Path, tmp_path: Path, trained
) -> None:
    cl = fit(cache_dir, _cfg(tmp_path / "cl", channels_last=True))
    ckpt = load_checkpoint(cl.last_checkpoint)
    assert ckpt["config"]["channels_last"] is True
    # (A convolution with one input channel is both layouts at once: take a deeper one.)
    conv = next(k for k, v in ckpt["model"].items() if v.ndim == 4 and v.shape[1] > 1)
    assert ckpt["model"][conv].is_contiguous(memory_format=torch.channels_last)
    # The same run in NCHW order: the same arithmetic in another order, so the same
    # model up to rounding, and it still resumes exactly (the layout is part of the run).
    nchw = fit(cache_dir, _cfg(tmp_path / "nchw", channels_last=False))
    other = load_checkpoint(nchw.last_checkpoint)
    assert other["config"]["channels_last"] is False
    assert not other["model"][conv].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(ckpt["history"], other["history"], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.02)
    for key, value in ckpt["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(other["model"][key], value, rtol=0.05, atol=0.02)
    # A checkpoint written before the option has no such key: it trained, and resumes, NCHW.
    saved = {k: v for k, v in ckpt["config"].items() if k != "channels_last"}
    assert FitConfig.from_dict(saved).channels_last is False
    assert FitConfig.from_dict(ckpt["config"]).channels_last is True
    # Left to `fit`, the run takes the faster layout here and saves which it took.
    default = load_checkpoint(trained.last_checkpoint)["config"]["channels_last"]
    assert default is channels_last_for(torch.device("cpu"))


def test_bf16_autocast_only_on_a_cpu_that_computes_bf16_natively() -> None:
    """oneDNN says it supports bf16 on any AVX-512 CPU, where it emulates it: on this
    project's 2-core Xeon without AVX512-BF16, bf16 autocast made an SE-ResNet18 training
    step 3.6 times slower than float32, and channels-last order was slower in float32."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to compare with")
    flags = {
        f for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
        for f in line.split()
    }  # fmt: skip
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    assert cpu_bf16_supported() is native
    cpu = torch.device("cpu")
    assert autocast_for(cpu) == (native, torch.bfloat16 if native else torch.float16)
    assert autocast_for(cpu, enabled=False)[0] is False
    assert channels_last_for(cpu) is native
    assert channels_last_for(cpu, amp=False) is False
    assert channels_last_for(torch.device("cuda")) is True


def _altered_checkpoint(src: Path, dst: Path, **changes) -> str:
    ckpt = load_checkpoint(src)
    torch.save({**ckpt, **changes}, dst)
    return str(dst)


def test_init_from_starts_a_new_run_from_earlier_weights(
    cache_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = fit(cache_dir, _cfg(tmp_path / "a", max_steps=2, val_folds=()))
    start = load_checkpoint(first.last_checkpoint)
    # Another seed (so another random init) and a learning rate too small to move a weight:
    # what the new run saves after one step is where it started.
    init = str(first.last_checkpoint)
    second = fit(
        cache_dir, _cfg(tmp_path / "b", max_steps=1, lr=1e-12, seed=1, val_folds=(), init_from=init)
    )
    ckpt = load_checkpoint(second.last_checkpoint)
    assert second.steps == 1 and ckpt["step"] == 1 and len(ckpt["history"]) == 1
    assert ckpt["config"]["init_from"] == init
    for name in dict(create_model("simple_cnn", len(KINDS)).named_parameters()):
        torch.testing.assert_close(ckpt["model"][name], start["model"][name], rtol=0, atol=1e-9)
    # The fresh schedule starts warming up again instead of continuing the first run's.
    assert ckpt["scheduler"]["last_epoch"] == 1
    # Such a run resumes like any other (its own last.pt, not the init weights again).
    resumed = fit(cache_dir, _cfg(tmp_path / "b", resume=True, max_steps=2))
    assert resumed.steps == 2
    assert load_checkpoint(resumed.last_checkpoint)["config"]["init_from"] == init

    with pytest.raises(ValueError, match="labels differ"):
        renamed = _altered_checkpoint(
            first.last_checkpoint, tmp_path / "labels.pt", labels=["tone", "noise", "snap"]
        )
        fit(cache_dir, _cfg(tmp_path / "c", max_steps=1, init_from=renamed))
    with pytest.raises(ValueError, match="architectures must match"):
        fit(cache_dir, _cfg(tmp_path / "d", max_steps=1, model="resnet18", init_from=init))
    fe = FrontEndConfig.from_json(start["frontend"])
    with pytest.raises(ValueError, match="front end"):
        other_mels = FrontEndConfig(**{**fe.__dict__, "n_mels": 64}).to_json()
        fit(
            cache_dir,
            _cfg(
                tmp_path / "e",
                max_steps=1,
                init_from=_altered_checkpoint(init, tmp_path / "fe.pt", frontend=other_mels),
            ),
        )
    with pytest.raises(ValueError, match="mutually exclusive"):
        fit(cache_dir, _cfg(tmp_path / "a", resume=True, init_from=init))
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()

    # Other normalisation stats are allowed, with a warning.
    other_stats = fe.with_stats(fe.mean + 5.0, fe.std * 2).to_json()
    restat = _altered_checkpoint(init, tmp_path / "stats.pt", frontend=other_stats)
    with caplog.at_level("WARNING", logger="training.fit"):
        fit(cache_dir, _cfg(tmp_path / "f", max_steps=1, val_folds=(), init_from=restat))
    assert "normalisation mean" in caplog.text


def test_init_from_a_model_with_fewer_labels_keeps_their_outputs(
    dataset: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """Adding a label (clap_pattern next to ESC-50's clapping) keeps what the base model
    learnt: its output rows move to their labels, the new label's row starts fresh."""
    from training.datasets import load_datasets

    extra = tmp_path / "extra"
    (extra / "audio").mkdir(parents=True)
    (extra / "meta").mkdir()
    rows = ["filename,fold,target,category"]
    rng = np.random.default_rng(1)
    for fold in (1, 2, 3):
        name = f"{fold}-chirp.wav"
        sf.write(extra / "audio" / name, _sound("tone", 22050, rng).astype(np.float32), 22050)
        rows.append(f"{name},{fold},9,chirp")
    (extra / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    wider = tmp_path / "cache4"
    precache(load_datasets([dataset, extra]), wider, FrontEndConfig(), workers=0, progress=False)
    compute_stats(wider, indices=Cache.open(wider).indices_for_folds(["1", "2"]))
    assert Cache.open(wider).labels == (*KINDS, "chirp")

    base = fit(cache_dir, _cfg(tmp_path / "a", max_steps=1, val_folds=()))
    start = load_checkpoint(base.last_checkpoint)["model"]
    # The same weights saved with the labels in another order: rows follow their label.
    order = [2, 0, 1]
    shuffled = {**start, "fc.weight": start["fc.weight"][order], "fc.bias": start["fc.bias"][order]}
    init = _altered_checkpoint(
        base.last_checkpoint, tmp_path / "s.pt", labels=[KINDS[i] for i in order], model=shuffled
    )
    run = fit(wider, _cfg(tmp_path / "b", max_steps=1, lr=1e-12, val_folds=(), init_from=init))
    got = load_checkpoint(run.last_checkpoint)
    assert got["labels"] == [*KINDS, "chirp"]
    for key in ("fc.weight", "fc.bias"):
        torch.testing.assert_close(got["model"][key][:3], start[key], rtol=0, atol=1e-9)
        # The new row is a fresh Linear initialisation (uniform within 1/sqrt(fan_in)).
        row, bound = got["model"][key][3], start["fc.weight"].shape[1] ** -0.5
        assert 0 < float(row.abs().max()) <= bound + 1e-6
    # Hidden weights too (not BatchNorm's running statistics: a training step moves them).
    params = dict(create_model("simple_cnn", len(KINDS)).named_parameters())
    hidden = [k for k in params if not k.startswith("fc.")]
    assert hidden and all(
        torch.allclose(got["model"][k], start[k], rtol=0, atol=1e-9) for k in hidden
    )


def test_cli_init_from(cache_dir: Path, trained, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["fit", "--cache", str(cache_dir), "--model", "simple_cnn", "--workers", "0"]
    init = ["--init-from", str(trained.last_checkpoint)]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "r"), *init, "--max-steps", "1"])
    assert res.exit_code == 0, res.output
    assert "trained 1 steps" in res.stdout
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "r"), *init, "--resume"])
    assert res.exit_code == 2 and "mutually exclusive" in res.stderr


def test_schedule_warms_up_then_decays() -> None:
    f = [lr_factor(s, 100, "onecycle", 0.1) for s in range(101)]
    assert f[0] == pytest.approx(1 / 25) and f[10] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:11], strict=True))
    assert all(a >= b for a, b in zip(f[10:-1], f[11:], strict=True))
    assert f[100] == pytest.approx(1e-4)
    assert lr_factor(100, 100, "cosine", 0.1) == pytest.approx(0.0)


def test_checkpoint_and_onnx_evaluate_alike(
    trained, cache_dir: Path, dataset: Path, tmp_path: Path
):
    onnx_path = tmp_path / "model.onnx"
    rep = export_onnx(trained.best_checkpoint, onnx_path, parity_inputs=cache_dir)
    assert rep.parity_max_abs < 1e-4 and rep.n_parity_inputs > 4
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    meta = ModelMetadata.from_onnx_props(props)
    assert meta.labels == KINDS and meta.model_name == "simple_cnn"
    assert meta.frontend == Cache.open(cache_dir).frontend
    assert meta.training_data["dataset"] == "esc50"

    a = evaluate(trained.best_checkpoint, cache_dir, folds=("3",), out_dir=tmp_path / "ev").metrics
    # The ONNX model on the raw recordings: decoded and turned into log-mels afresh.
    b = evaluate(onnx_path, dataset, folds=("3",)).metrics
    assert a["n_clips"] == b["n_clips"] == 6
    for key in ("map", "accuracy", "clap_vs_rest_ap", "f1"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert set(a["by_source_rate"]) == {"16000", "22050"}
    assert a["by_source_rate"]["16000"]["n_clips"] == 3
    assert set(a["per_class"]) == set(KINDS)
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "Best labels" in report and "clapping vs rest AP" in report
    assert (tmp_path / "ev" / "per_class_ap.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["map"] == pytest.approx(a["map"])


def _fsd50k(root: Path) -> Path:
    """FSD50K's layout with the toy labels: dev 2 train + 1 val clips, eval 3 clips."""
    rng = np.random.default_rng(1)
    gt = root / "FSD50K.ground_truth"
    gt.mkdir(parents=True)
    (gt / "vocabulary.csv").write_text("".join(f"{i},{k},/m/{i}\n" for i, k in enumerate(KINDS)))
    dev, ev = ["fname,labels,mids,split"], ["fname,labels,mids"]
    for n, kind in enumerate(KINDS * 2):
        split, table = ("eval", ev) if n >= 3 else ("dev", dev)
        folder = root / f"FSD50K.{split}_audio"
        folder.mkdir(exist_ok=True)
        sf.write(folder / f"{n}.wav", _sound(kind, 22050, rng).astype(np.float32), 22050)
        table.append(
            f"{n},{kind},/m/0" + ("" if split == "eval" else ",val" if n == 2 else ",train")
        )
    (gt / "dev.csv").write_text("\n".join(dev) + "\n")
    (gt / "eval.csv").write_text("\n".join(ev) + "\n")
    return root


def test_evaluate_scores_fsd50k_eval_split(trained, tmp_path: Path) -> None:
    """FSD50K's eval split (its test set) lives apart from dev: `--folds eval` or `--split
    eval` scores it from the dataset folder (always dev before: 'no recordings in folds')."""
    data = _fsd50k(tmp_path / "fsd")

    def n_clips(*args: str) -> int:
        res = CliRunner().invoke(
            app, ["evaluate", str(trained.best_checkpoint), str(data), "--json", *args]
        )
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)["n_clips"]

    assert n_clips() == 3  # dev, as before
    assert n_clips("--folds", "eval") == 3
    assert n_clips("--split", "eval") == 3
    assert n_clips("--folds", "val,eval") == 4
    assert n_clips("--split", "dev", "--folds", "val") == 1
    res = CliRunner().invoke(
        app,
        ["evaluate", str(trained.best_checkpoint), str(data), "--split", "eval", "--folds", "val"],
    )
    assert res.exit_code == 2 and "no recordings in folds ['val'] of the eval split" in res.stderr


def test_evaluate_rejects_data_without_shared_labels(trained, tmp_path: Path) -> None:
    other = tmp_path / "other"
    (other / "meta").mkdir(parents=True)
    (other / "audio").mkdir()
    sf.write(other / "audio" / "x.wav", np.zeros(1000, np.float32) + 0.1, 22050)
    (other / "meta" / "esc50.csv").write_text("filename,fold,target,category\nx.wav,1,0,siren\n")
    with pytest.raises(EvaluationError, match="share no label names"):
        evaluate(trained.best_checkpoint, other)


def test_cli_end_to_end(dataset: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cache, run, model = tmp_path / "cache", tmp_path / "run", tmp_path / "m.onnx"

    def ok(*args: str) -> str:
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
        return res.stdout

    assert "cached 18 clips" in ok("precache", dataset, "--cache", cache, "--workers", "0")
    assert "over 12 clips" in ok("stats", "--cache", cache, "--exclude", "3")
    first = ok(
        "fit",
        "--cache",
        cache,
        "--out",
        run,
        "--model",
        "simple_cnn",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--val-fold",
        "3",
        "--workers",
        "0",
        "--no-augment",
        "--max-steps",
        "2",
    )
    assert "trained 2 steps" in first
    assert "trained 3 steps" in ok(
        "fit",
        "--cache",
        cache,
        "--out",
        run,
        "--epochs",
        "2",
        "--max-steps",
        "3",
        "--workers",
        "0",
        "--resume",
    )
    assert "parity" in ok("export", run / "best.pt", "--out", model)
    out = json.loads(ok("evaluate", model, dataset, "--folds", "3", "--json"))
    assert 0.0 <= out["map"] <= 1.0 and 0.0 <= out["accuracy"] <= 1.0
    assert out["model_kind"] == "onnx"


def test_fit_refuses_stats_that_saw_the_held_out_fold(dataset: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    cache = tmp_path / "cache"
    precache_args = ["precache", str(dataset), "--cache", str(cache), "--workers", "0"]
    assert runner.invoke(app, precache_args).exit_code == 0
    assert runner.invoke(app, ["stats", "--cache", str(cache)]).exit_code == 0
    assert json.loads((cache / "stats.json").read_text())["folds"] == ["1", "2", "3"]
    fit_args = ["fit", "--cache", str(cache), "--out", str(tmp_path / "run"), "--model",
                "simple_cnn", "--epochs", "1", "--batch-size", "4", "--workers", "0"]  # fmt: skip
    res = runner.invoke(app, [*fit_args, "--val-fold", "3"])
    assert res.exit_code == 2 and "include held-out fold(s) 3" in res.stderr
    assert f"claudio-train stats --cache {cache} --exclude 3" in res.stderr
    assert not (tmp_path / "run" / "last.pt").exists()
    assert runner.invoke(app, ["stats", "--cache", str(cache), "--exclude", "3"]).exit_code == 0
    assert json.loads((cache / "stats.json").read_text())["folds"] == ["1", "2"]
    assert runner.invoke(app, [*fit_args, "--val-fold", "3"]).exit_code == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "missing.pt", "."], "missing.pt: model file not found"),
        (["precache", "no/such/dir", "--cache", "c"], "no/such/dir: dataset folder not found"),
        (["stats", "--cache", "no_cache"], "no complete cache here"),
        (["export", "missing.pt", "--out", "m.onnx"], "missing.pt: checkpoint not found"),
    ],
)
def test_cli_errors_are_one_line(
    args: list[str], message: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "Traceback" not in res.output


def test_evaluate_maps_labels_by_name_on_real_recordings(trained, shared_data: Path) -> None:
    # The toy model knows "clapping" and two labels ESC-50 lacks; only the 6 real clapping
    # clips of fold 4 can be scored, and the other 294 are not even decoded.
    m = evaluate(trained.best_checkpoint, shared_data / "esc50-fold4-dev").metrics
    assert m["n_clips"] == 6 and m["n_labels"] == 1
    assert m["clips_with_unknown_label"] == 294
    # Its other two classes still compete: a clip is right only if clapping beats them
    # (it was counted right whatever the model said, with one label to choose from).
    wrong = m["top1_outside_data_labels"]
    assert m["by_source_rate"] == {"44100": {"n_clips": 6, "accuracy": (6 - wrong) / 6}}
    assert m["accuracy"] == (6 - wrong) / 6
    assert "dog" in m["labels_not_in_model"]


def test_evaluate_top1_is_among_all_the_models_classes(shared_data: Path, tmp_path: Path) -> None:
    """Recordings of one or two labels, scored by the shipped 50-class model: a clip is
    right only when its own label beats every class the model knows (it was right when it
    beat the data's other label). ESC-50 itself still scores among its 50 classes: the
    clap check's `clap_pattern` output does not compete."""
    import shutil

    model = ROOT / "models" / "claudio-esc50-se_resnet18.onnx"
    fold4 = shared_data / "esc50-fold4-dev"
    rows = (fold4 / "meta" / "esc50.csv").read_text().splitlines()[1:]
    rain = [r.split(",")[0] for r in rows if r.split(",")[3] == "rain"][:3]
    data = tmp_path / "mine"
    (data / "dog").mkdir(parents=True)
    for name in rain:  # filed under the wrong label
        shutil.copy(fold4 / "audio" / name, data / "dog" / name)
    m = evaluate(model, data).metrics
    assert m["n_clips"] == 3 and m["accuracy"] == 0.0
    assert m["top1_outside_data_labels"] == 3
    esc = evaluate(model, fold4).metrics
    assert esc["n_labels"] == 50 and "top1_outside_data_labels" not in esc


def _ensure_stats_rank(rank: int, store: str, dirs: list[str], result: str) -> None:
    """One rank of a real two-process (gloo) group calling fit._ensure_stats."""
    import torch.distributed as torch_dist

    from training.device import DistInfo
    from training.fit import _ensure_stats

    torch_dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        cache = Path(dirs[rank])
        train = Cache.open(cache).indices_for_folds(["1", "2"])
        done = _ensure_stats(cache, train, ("1", "2"), DistInfo(2, rank, rank))
        Path(result).joinpath(str(rank)).write_text(str(done))
    finally:
        torch_dist.destroy_process_group()


def test_every_rank_takes_rank_0s_word_on_missing_statistics(
    cache_dir: Path, tmp_path: Path
) -> None:
    """Under torchrun each rank looked for stats.json itself: one that found the file rank 0
    had just written skipped the barrier rank 0 waited at (a hang) and trained on the
    un-normalised cache. Here rank 1 sees a file that rank 0 does not (the race, made
    certain), in a real two-process gloo group."""
    import multiprocessing

    rank0 = tmp_path / "rank0"
    shutil.copytree(cache_dir, rank0)
    (rank0 / "stats.json").unlink()
    ctx = multiprocessing.get_context("spawn")
    dirs = [str(rank0), str(cache_dir)]
    procs = [
        ctx.Process(
            target=_ensure_stats_rank, args=(r, str(tmp_path / "store"), dirs, str(tmp_path))
        )
        for r in (0, 1)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    hung = [p.is_alive() for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert hung == [False, False], "a rank waited at a barrier the other skipped"
    assert [(tmp_path / r).read_text() for r in ("0", "1")] == ["True", "True"]
    assert (rank0 / "stats.json").is_file()


def test_claudio_train_without_the_train_extra_says_what_to_install(tmp_path: Path) -> None:
    """A daemon-only install has claudio-train too: `fit` died with a torch traceback."""
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['torch'] = None\n"  # as if the extra were not installed
        "sys.argv = ['claudio-train', 'fit', '--cache', sys.argv[1], '--out', sys.argv[2]]\n"
        "from training.cli import main; main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "cache"), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "torch is missing: the training tools need the train extra" in proc.stderr
