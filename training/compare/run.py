"""Run the selected approaches on ONE cache, ONE split and ONE scoring function, then tabulate.

Fairness rules kept here rather than left to the caller:
- every approach trains on the same training folds, picks its best epoch/round/boosting
  round on the same validation folds, and is scored once on the same held-out folds (the
  test folds; the validation folds only when no test fold is given, which the table says);
- the normalisation statistics are recomputed from the training folds before anything runs
  (stats.json in the cache is overwritten), so no held-out clip leaks into the input scaling;
- training time is the approach's own training (fit loop, boosting, or the whole federated
  simulation including Ray's start-up), without the shared log-mel cache; the handcrafted
  feature extraction is reported next to it (`feature_time_s`);
- inference time is end to end for ONE clip on the CPU, waveform in, scores out: the log-mel
  front end plus the network, or the 36 features plus the boosters; median of repeats.
"""

from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from claudio_daemon.features.frontend import FrontEndConfig
from training.augment import AugmentConfig
from training.cache import Cache, CacheReport, precache
from training.compare.table import Row, score, write_table
from training.data import CachedDataset, split_indices
from training.datasets import load_datasets
from training.device import pick_device
from training.metrics import sigmoid
from training.models import count_parameters

__all__ = [
    "APPROACHES",
    "CompareConfig",
    "compare",
    "prepare_cache",
]

if TYPE_CHECKING:  # imported lazily: xgboost and flwr load only when their approach runs
    from training.compare.federated import FedConfig
    from training.compare.xgb import XGBConfig

log = logging.getLogger(__name__)

#: Every approach `compare` knows, in the table's order.
APPROACHES: tuple[str, ...] = (
    "xgboost",
    "simple_cnn",
    "resnet18",
    "se_resnet18",
    "ast",
    "federated",
)


def _default_xgb() -> XGBConfig:
    from training.compare.xgb import XGBConfig

    return XGBConfig()


def _default_fed() -> FedConfig:
    from training.compare.federated import FedConfig

    return FedConfig()


@dataclass
class CompareConfig:
    approaches: tuple[str, ...] = APPROACHES
    val_folds: tuple[str, ...] = ()
    test_folds: tuple[str, ...] = ()
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 10
    augment: bool = True
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    #: Cap on optimiser steps per network (short test runs); None = no cap.
    max_steps: int | None = None
    #: Repeats of the one-clip timing (median reported).
    infer_repeats: int = 20
    xgb: XGBConfig = field(default_factory=_default_xgb)
    fed: FedConfig = field(default_factory=_default_fed)

    def validate(self) -> None:
        unknown = [a for a in self.approaches if a not in APPROACHES]
        if unknown:
            raise ValueError(f"unknown approach(es) {unknown}; choose from {', '.join(APPROACHES)}")
        if not self.approaches:
            raise ValueError("no approach selected")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")


# --------------------------------------------------------------------------- data


def prepare_cache(
    data: Sequence[str | Path],
    cache_dir: str | Path,
    layout: str = "auto",
    workers: int = 2,
    progress: bool = False,
) -> CacheReport:
    """Load and merge the dataset folders (same vocabulary), then (re)build the cache if needed."""
    manifest = load_datasets(list(data), layout=layout)
    return precache(manifest, cache_dir, FrontEndConfig(), workers=workers, progress=progress)


# --------------------------------------------------------------------------- timing


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


def _network_infer_ms(
    model: torch.nn.Module, frontend: FrontEndConfig, clip: np.ndarray, repeats: int
) -> float:
    from training.frontend import LogMel

    logmel = LogMel(frontend, normalise=True).eval()
    model = model.cpu().eval()
    wave = torch.from_numpy(clip).unsqueeze(0)

    @torch.inference_mode()
    def once() -> Any:
        return model(logmel(wave))

    return _median_ms(once, repeats)


# --------------------------------------------------------------------------- approaches


@dataclass
class _Context:
    cache_dir: Path
    cache: Cache
    train: np.ndarray
    val: np.ndarray
    scored: np.ndarray
    held_out: tuple[str, ...]
    clip: np.ndarray
    out: Path
    cfg: CompareConfig
    device: torch.device
    progress: bool


def _predict_checkpoint(ctx: _Context, checkpoint: Path) -> tuple[torch.nn.Module, np.ndarray]:
    from training.fit import build_model_from_checkpoint, load_checkpoint, predict_logits

    model = build_model_from_checkpoint(load_checkpoint(checkpoint)).to(ctx.device)
    loader = DataLoader(
        CachedDataset(ctx.cache, ctx.scored), batch_size=ctx.cfg.batch_size, shuffle=False
    )
    logits, _ = predict_logits(model, loader, ctx.device)
    return model, sigmoid(logits)


def _targets(ctx: _Context) -> np.ndarray:
    return np.asarray(ctx.cache.targets[ctx.scored], dtype=np.float64)


def _fresh(path: Path) -> Path:
    """compare owns out/runs/<approach>: a rerun replaces it instead of refusing."""
    if path.exists():
        shutil.rmtree(path)
    return path


def _run_network(ctx: _Context, name: str) -> Row:
    from training.fit import FitConfig, fit

    cfg = ctx.cfg
    run_dir = _fresh(ctx.out / "runs" / name)
    fit_cfg = FitConfig(
        model=name,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        val_folds=cfg.val_folds,
        # The test folds are named so that fit leaves them out of training (it also scores
        # them once at the end, in test_metrics.json); the table scores them below.
        test_folds=cfg.test_folds,
        patience=cfg.patience,
        augment=AugmentConfig(enabled=cfg.augment),
        workers=cfg.workers,
        seed=cfg.seed,
        device=cfg.device,
        out_dir=str(run_dir),
        max_steps=cfg.max_steps,
        quiet=not ctx.progress,
    )
    log.info("compare: training %s", name)
    t0 = time.perf_counter()
    result = fit(ctx.cache_dir, fit_cfg)
    train_s = time.perf_counter() - t0
    model, probs = _predict_checkpoint(ctx, result.best_checkpoint)
    s = score(_targets(ctx), probs, ctx.cache.multi_label)
    return Row(
        approach=name,
        precision=s["precision"],
        recall=s["recall"],
        f1=s["f1"],
        map=s["map"],
        params=count_parameters(model),
        train_time_s=train_s,
        infer_ms_per_clip=_network_infer_ms(model, ctx.cache.frontend, ctx.clip, cfg.infer_repeats),
        extra={
            **({"accuracy": s["accuracy"]} if "accuracy" in s else {}),
            "epochs_run": len(result.history),
            "best_epoch": max((h.get("best_epoch", 0) for h in result.history), default=0),
            "steps": result.steps,
            "checkpoint": str(result.best_checkpoint),
        },
    )


def _run_xgboost(ctx: _Context) -> list[Row]:
    from training.compare.handcrafted import HandcraftedExtractor, load_or_compute
    from training.compare.xgb import XGBModel, run_xgboost

    cfg = ctx.cfg
    features, feat_s = load_or_compute(
        ctx.cache, workers=cfg.workers, device="cpu", progress=ctx.progress
    )
    xcfg = replace(cfg.xgb, seed=cfg.seed)
    log.info("compare: training xgboost on %d features", features.shape[1])
    report = run_xgboost(
        features, ctx.cache.targets, ctx.train, ctx.val, ctx.cache.multi_label, xcfg
    )
    extractor = HandcraftedExtractor(ctx.cache.frontend).eval()
    wave = torch.from_numpy(ctx.clip).unsqueeze(0)
    targets = _targets(ctx)
    out_dir = _fresh(ctx.out / "runs" / "xgboost")
    out_dir.mkdir(parents=True)
    importance = report.importance_table()
    (out_dir / "importance.json").write_text(
        json.dumps({"rank_by": report.rank_by, "features": importance}, indent=2)
    )
    rows = []
    for key, model, train_s in (
        ("xgboost", report.full, report.full_train_s),
        (f"xgboost_top{len(report.top_features)}", report.top, report.top_train_s),
    ):
        m: XGBModel = model
        probs = m.predict_proba(features[ctx.scored])
        s = score(targets, probs, ctx.cache.multi_label)
        for i, booster in enumerate(m.boosters):
            if booster is not None:
                booster.save_model(str(out_dir / f"{key}_{i}.ubj"))

        @torch.inference_mode()
        def once(m: XGBModel = m) -> Any:
            return m.predict_proba(extractor(wave).numpy())

        rows.append(
            Row(
                approach=key,
                precision=s["precision"],
                recall=s["recall"],
                f1=s["f1"],
                map=s["map"],
                params=m.n_parameters(),
                train_time_s=train_s,
                infer_ms_per_clip=_median_ms(once, cfg.infer_repeats),
                extra={
                    **({"accuracy": s["accuracy"]} if "accuracy" in s else {}),
                    "n_features": len(m.feature_idx),
                    "features": m.feature_names,
                    "n_trees": m.n_trees(),
                    "feature_time_s": feat_s,
                    "booster_mode": m.mode,
                },
            )
        )
    rows[1].extra["ranked_by"] = report.rank_by
    rows[0].extra["importance"] = importance
    return rows


def _run_federated(ctx: _Context) -> Row:
    from training.compare.federated import run_federated

    fcfg = replace(ctx.cfg.fed, seed=ctx.cfg.seed)
    run_dir = _fresh(ctx.out / "runs" / "federated")
    log.info(
        "compare: federated %s, %d rounds, %d clients (%d per round)",
        fcfg.model,
        fcfg.rounds,
        fcfg.clients,
        fcfg.clients_per_round,
    )
    result = run_federated(ctx.cache_dir, ctx.train, ctx.val, fcfg, run_dir, ctx.held_out)
    model, probs = _predict_checkpoint(ctx, result.best_checkpoint)
    s = score(_targets(ctx), probs, ctx.cache.multi_label)
    return Row(
        approach="federated",
        precision=s["precision"],
        recall=s["recall"],
        f1=s["f1"],
        map=s["map"],
        params=count_parameters(model),
        train_time_s=result.seconds,
        infer_ms_per_clip=_network_infer_ms(
            model, ctx.cache.frontend, ctx.clip, ctx.cfg.infer_repeats
        ),
        extra={
            **({"accuracy": s["accuracy"]} if "accuracy" in s else {}),
            "model": fcfg.model,
            "rounds": fcfg.rounds,
            "clients": fcfg.clients,
            "clients_per_round": fcfg.clients_per_round,
            "local_epochs": fcfg.local_epochs,
            "partition": fcfg.partition
            + (f" (alpha {fcfg.alpha})" if fcfg.partition == "dirichlet" else ""),
            "bn": fcfg.bn,
            "best_round": result.best_round,
            "clips_per_client": [min(result.partition_sizes), max(result.partition_sizes)],
            "checkpoint": str(result.best_checkpoint),
        },
    )


# --------------------------------------------------------------------------- entry point


def compare(
    cache_dir: str | Path,
    out_dir: str | Path,
    cfg: CompareConfig | None = None,
    command: str | None = None,
    progress: bool = False,
) -> list[Row]:
    """Train and score `cfg.approaches`; write results.md/.json/.png into out_dir."""
    from training.stats import compute_stats

    cfg = cfg or CompareConfig()
    cfg.validate()
    cache_dir = Path(cache_dir)
    out = Path(out_dir)
    cache = Cache.open(cache_dir)
    train, val, test = split_indices(cache, cfg.val_folds, cfg.test_folds)
    scored, scored_folds = (test, cfg.test_folds) if len(test) else (val, cfg.val_folds)
    if not len(scored):
        raise ValueError(
            "nothing to score on: give test folds (--test-fold) and/or validation folds "
            "(--val-fold); the table must come from clips no approach trained on"
        )
    if not len(test):
        log.warning("no test folds: scoring on the validation folds (optimistic)")
    compute_stats(cache_dir, indices=train, folds=cache.folds_of(train))
    cache = Cache.open(cache_dir)
    from training.audio import load_clip

    device = pick_device(cfg.device)
    ctx = _Context(
        cache_dir=cache_dir,
        cache=cache,
        train=train,
        val=val,
        scored=scored,
        held_out=(*cfg.val_folds, *cfg.test_folds),
        clip=load_clip(cache.items[int(scored[0])].path, cache.frontend),
        out=out,
        cfg=cfg,
        device=device,
        progress=progress,
    )
    rows: list[Row] = []
    t_all = time.perf_counter()
    for approach in cfg.approaches:
        if approach == "xgboost":
            rows += _run_xgboost(ctx)
        elif approach == "federated":
            rows.append(_run_federated(ctx))
        else:
            rows.append(_run_network(ctx, approach))
        r = rows[-1]
        log.info("compare: %s mAP %.4f F1 %.4f (%.1f s)", r.approach, r.map, r.f1, r.train_time_s)
    folds = sorted(cache.folds)
    meta = {
        "dataset": cache.dataset,
        "cache": str(cache_dir),
        "multi_label": bool(cache.multi_label),
        "n_labels": len(cache.labels),
        "n_train": int(len(train)),
        "n_val": int(len(val)),
        "n_test": int(len(scored)),
        "train_folds": [f for f in folds if f not in set(cfg.val_folds) | set(cfg.test_folds)],
        "val_folds": list(cfg.val_folds),
        "scored_folds": list(scored_folds),
        "scored_on": "test" if len(test) else "validation",
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "total_time_s": time.perf_counter() - t_all,
        "config": {
            **{k: v for k, v in asdict(cfg).items() if k not in ("xgb", "fed")},
            "xgb": asdict(cfg.xgb),
            "fed": asdict(cfg.fed),
        },
        "command": command,
    }
    paths = write_table(rows, out, meta)
    log.info("compare: table in %s", paths["md"])
    return rows
