"""Training loop: cached log-mels in, checkpoints and a per-epoch history out.

Reproducibility is by construction: every epoch re-seeds torch, numpy, random and the
loader's generator from (seed, epoch), so resuming from `last.pt` at an epoch boundary
replays exactly what an uninterrupted run would have done. The learning-rate schedule is a
pure function of the step, so it survives a resume too.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from claudio_daemon.features.frontend import FrontEndConfig
from training.augment import AugmentConfig, mixup_batch
from training.cache import Cache
from training.data import CachedDataset, split_indices
from training.device import (
    DistInfo,
    dist_from_env,
    init_distributed,
    pick_device,
    shutdown_distributed,
)
from training.losses import make_criterion
from training.metrics import mean_average_precision, sigmoid, top1_accuracy
from training.models import DEFAULT_MODEL, MODEL_NAMES, create_model

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
SCHEDULERS = ("onecycle", "cosine")
#: A new run's length and early stop when none is given; a resumed run keeps its own.
DEFAULT_EPOCHS = 30
DEFAULT_PATIENCE = 10


@dataclass
class FitConfig:
    model: str = DEFAULT_MODEL
    #: None: DEFAULT_EPOCHS for a new run, the checkpoint's on resume (the schedule's
    #: length depends on it, so a resume that changed it would not continue exactly).
    epochs: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-2
    scheduler: str = "onecycle"
    #: Fraction of all steps spent warming the learning rate up.
    warmup: float = 0.1
    val_folds: tuple[str, ...] = ()
    test_folds: tuple[str, ...] = ()
    #: Stop after this many epochs without a better validation mAP; 0 never stops early.
    #: None: DEFAULT_PATIENCE for a new run, the checkpoint's on resume.
    patience: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: pos_weight bounds for the BCE loss; None trains with plain BCE.
    pos_weight_clip: tuple[float, float] | None = (1.0, 10.0)
    workers: int = 2
    seed: int = 0
    #: Mixed precision; only used on CUDA.
    amp: bool = True
    device: str = "auto"
    out_dir: str = "runs/train"
    resume: bool = False
    #: Start from this checkpoint's weights (fine-tuning, e.g. after adding synthetic
    #: clips) with a fresh optimiser and schedule; None starts from a random init.
    init_from: str | None = None
    #: Stop after this many optimiser steps in total (short test runs); None = no cap.
    max_steps: int | None = None
    log_every: int = 50
    grad_clip: float | None = 5.0
    quiet: bool = False
    model_kwargs: dict = field(default_factory=dict)
    #: Convolutions in channels-last (NHWC) order. None: where that is faster
    #: (`channels_last_for`), decided when the run starts and saved as True or False, so a
    #: resumed run keeps its layout on any machine. The same arithmetic in another order,
    #: so not bit for bit what NCHW gives: False repeats runs made before this option.
    channels_last: bool | None = None

    def validate(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(
                f"unknown model {self.model!r}; choose one of {', '.join(MODEL_NAMES)}"
            )
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {self.max_steps}")
        if self.resume and self.init_from:
            raise ValueError(
                "--init-from and --resume are mutually exclusive: --resume continues the run "
                "in --out, --init-from starts a new one from another run's weights"
            )
        overlap = set(map(str, self.val_folds)) & set(map(str, self.test_folds))
        if overlap:
            raise ValueError(f"folds {sorted(overlap)} are both validation and test folds")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["augment"] = asdict(self.augment)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitConfig:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in data.items() if k in known}
        aug = dict(d.get("augment") or {})
        aug_known = {f.name for f in fields(AugmentConfig)}
        d["augment"] = AugmentConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in aug.items() if k in aug_known}
        )
        for key in ("val_folds", "test_folds"):
            d[key] = tuple(str(f) for f in d.get(key, ()))
        if d.get("pos_weight_clip") is not None:
            d["pos_weight_clip"] = tuple(d["pos_weight_clip"])
        # Runs saved before the option trained in NCHW; a resumed one goes on that way.
        d.setdefault("channels_last", False)
        return cls(**d)


@dataclass
class FitResult:
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, Any]]
    best_metric: float
    steps: int
    stopped_early: bool = False
    test_metrics: dict[str, float] | None = None


# --------------------------------------------------------------------------- schedule


def lr_factor(step: int, total: int, scheduler: str, warmup: float) -> float:
    """Multiplier of the peak lr at `step` (0-based). Both schedules warm up linearly
    from 1/25 of the peak; "onecycle" then anneals by cosine to 1e-4 of the peak,
    "cosine" to zero. A step past `total` stays at the final value."""
    total = max(1, total)
    warm = int(round(warmup * total))
    if step < warm:
        start = 1.0 / 25.0
        return start + (1.0 - start) * step / max(1, warm)
    progress = min(1.0, (step - warm) / max(1, total - warm))
    floor = 1e-4 if scheduler == "onecycle" else 0.0
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- helpers


#: /proc/cpuinfo flags of a CPU that computes bfloat16 natively.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_bf16_supported() -> bool:
    """Native bfloat16 on this CPU (AVX512-BF16 or AMX).

    Not oneDNN's own test, which also says yes on any AVX-512 CPU, where it emulates bf16:
    on such a Xeon (AVX-512F, no BF16) a training step of SE-ResNet18 took 6.4 s in bf16
    autocast against 1.8 s in float32.
    """
    # torch's own CPU feature test (private, so it may go); else the kernel's flags.
    checks = [
        getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    if all(callable(c) for c in checks):
        try:
            return any(bool(c()) for c in checks)
        except RuntimeError:
            pass
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split()}
    return bool(flags & NATIVE_BF16_FLAGS)


def autocast_for(device: torch.device, enabled: bool = True) -> tuple[bool, torch.dtype]:
    """Whether, and in which dtype, `fit` autocasts on this device.

    float16 on CUDA; bfloat16 on a CPU with native bf16 (AVX512-BF16, AMX), which roughly
    halves CPU training time and needs no loss scaling; otherwise none.
    """
    if enabled and device.type == "cuda":
        return True, torch.float16
    if enabled and device.type == "cpu" and cpu_bf16_supported():
        return True, torch.bfloat16
    return False, torch.float16


def channels_last_for(device: torch.device, amp: bool = True) -> bool:
    """Whether channels-last order is the faster one for training here (with `amp` as
    `autocast_for` takes it).

    CUDA's tensor cores and oneDNN's bf16 kernels want NHWC (10-20 % faster on a 2-core
    CPU with native bf16); a CPU in float32 is faster in NCHW (SE-ResNet18 on an AVX-512
    CPU without bf16: 1.8 s a step against 2.6 s channels-last).
    """
    return device.type == "cuda" or autocast_for(device, amp)[0]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def training_data_summary(cache: Cache, indices: np.ndarray, folds: tuple[str, ...]) -> dict:
    """What the exported model tells the daemon (and a reader) about where it came from."""
    name = str(cache.dataset or "")
    low = name.lower()
    if "esc" in low:
        licence = "ESC-50 clips: CC BY-NC 3.0 (Piczak, 2015); non-commercial use"
    elif "fsd50k" in low:
        licence = "FSD50K clips: Creative Commons licences per clip (CC0/BY/BY-NC); see FSD50K"
    else:
        licence = "user-supplied recordings; licence as given by their owner"
    return {
        "dataset": name or "unknown",
        "n_clips": int(len(indices)),
        "train_folds": sorted({str(cache.items[i].fold) for i in indices}) if len(indices) else [],
        "held_out_folds": list(folds),
        "licence": licence,
    }


def build_model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    model = create_model(ckpt["model_name"], len(ckpt["labels"]), **ckpt.get("model_kwargs", {}))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `fit`. Only plain data is unpickled (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a bad file
        raise ValueError(f"{path}: not a readable training checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "labels" not in ckpt:
        raise ValueError(f"{path}: not a Claudio training checkpoint (no model/labels)")
    return ckpt


def checkpoint_frontend(ckpt: dict[str, Any]) -> FrontEndConfig:
    return FrontEndConfig.from_json(ckpt["frontend"])


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp: bool = False,
    progress: bool = False,
    desc: str = "eval",
    amp_dtype: torch.dtype = torch.float16,
) -> tuple[np.ndarray, np.ndarray]:
    """Run `model` over a loader of (x, y); return float64 logits and targets."""
    from tqdm.auto import tqdm

    model.eval()
    outs, ys = [], []
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
            logits = model(x.to(device, non_blocking=True))
        outs.append(logits.float().cpu().numpy())
        ys.append(np.asarray(y))
    if not outs:
        return np.zeros((0, 0)), np.zeros((0, 0))
    return np.concatenate(outs).astype(np.float64), np.concatenate(ys).astype(np.float64)


def _progress_enabled(cfg: FitConfig, dist: DistInfo) -> bool:
    return dist.is_main and not cfg.quiet and sys.stderr.isatty()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_json_default))
    tmp.replace(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def _save(state: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a crash mid-write never leaves a truncated last.pt


# --------------------------------------------------------------------------- fit


def fit(cache_dir: str | Path, cfg: FitConfig) -> FitResult:
    """Train `cfg.model` on the cache; see the module docstring for the guarantees."""
    cfg.validate()
    cache_dir = Path(cache_dir)
    out = Path(cfg.out_dir)
    last_path, best_path = out / "last.pt", out / "best.pt"
    dist = dist_from_env()
    device = pick_device(cfg.device, dist.local_rank if dist.enabled else None)
    owns_group = init_distributed(dist, device)
    use_amp, amp_dtype = autocast_for(device, cfg.amp)
    if device.type == "cuda":
        # Every batch has the same shape (the contract's fixed window), so cuDNN's one-off
        # search for the fastest convolution kernels pays back from the first epoch.
        torch.backends.cudnn.benchmark = True

    resume_state: dict[str, Any] | None = None
    if cfg.resume:
        if not last_path.is_file():
            raise FileNotFoundError(f"{last_path}: nothing to resume (no last.pt in --out)")
        resume_state = load_checkpoint(last_path, map_location="cpu")
        saved = FitConfig.from_dict(resume_state["config"])
        # Everything that shapes the run comes from the checkpoint; only where and how
        # long to run may change on resume, and only when asked: epochs and patience
        # left unset (None) are the run's own.
        for key in ("epochs", "patience"):
            given, own = getattr(cfg, key), getattr(saved, key)
            if given is None:
                cfg = replace(cfg, **{key: own})
            elif given != own:
                log.warning(
                    "resuming with %s %s; the run was started with %s%s",
                    key,
                    given,
                    own,
                    " (the learning-rate schedule changes)" if key == "epochs" else "",
                )
        cfg = FitConfig(
            **{
                **{f.name: getattr(saved, f.name) for f in fields(FitConfig)},
                **{
                    k: getattr(cfg, k)
                    for k in (
                        "epochs",
                        "max_steps",
                        "workers",
                        "device",
                        "out_dir",
                        "quiet",
                        "log_every",
                        "patience",
                    )
                },
                "resume": True,
            }
        )
    elif last_path.exists():
        raise FileExistsError(
            f"{out} already holds a training run (last.pt); pass --resume to continue it "
            "or choose another --out"
        )
    else:
        cfg = replace(
            cfg,
            epochs=DEFAULT_EPOCHS if cfg.epochs is None else cfg.epochs,
            patience=DEFAULT_PATIENCE if cfg.patience is None else cfg.patience,
        )

    if cfg.channels_last is None:
        cfg = replace(cfg, channels_last=channels_last_for(device, cfg.amp))

    cache = Cache.open(cache_dir)
    labels = tuple(cache.labels)
    train_idx, val_idx, test_idx = split_indices(cache, cfg.val_folds, cfg.test_folds)
    train_idx = np.asarray(train_idx)
    if len(train_idx) == 0:
        raise ValueError(f"{cache_dir}: no training clips left after holding out folds")
    if _ensure_stats(cache_dir, train_idx, cache.folds_of(train_idx), dist):
        cache = Cache.open(cache_dir)  # re-open so the datasets normalise with the new stats
    frontend = cache.frontend
    if resume_state is not None:
        if resume_state["labels"] != list(labels):
            raise ValueError(
                f"{cache_dir}: cache labels differ from the checkpoint's; cannot resume"
            )
        if FrontEndConfig.from_json(resume_state["frontend"]) != frontend:
            raise ValueError(
                f"{cache_dir}: front end or stats.json changed since the checkpoint; cannot resume"
            )
    _check_stats_from_training(cache_dir, len(train_idx), (*cfg.val_folds, *cfg.test_folds), dist)
    init_state: dict[str, Any] | None = None
    if cfg.init_from and resume_state is None:
        init_state = load_checkpoint(cfg.init_from, map_location="cpu")
        check_init_compatible(init_state, cfg, labels, frontend, warn=dist.is_main)

    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    augment = cfg.augment if getattr(cfg.augment, "enabled", True) else None
    train_ds = CachedDataset(cache, train_idx, augment=augment, seed=cfg.seed)
    val_ds = CachedDataset(cache, np.asarray(val_idx), augment=None, seed=cfg.seed)

    loader_gen = torch.Generator()
    sampler = None
    if dist.enabled:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(
            train_ds,
            num_replicas=dist.world_size,
            rank=dist.rank,
            shuffle=True,
            seed=cfg.seed,
            drop_last=True,
        )
    per_rank = len(train_ds) // dist.world_size if dist.enabled else len(train_ds)
    train_loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        drop_last=per_rank > cfg.batch_size,
        generator=loader_gen,
    )
    val_loader = DataLoader(
        val_ds,
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
    )

    model: nn.Module = create_model(cfg.model, len(labels), **cfg.model_kwargs).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = make_criterion(cache.targets[train_idx], cfg.pos_weight_clip).to(device)
    eval_criterion = nn.BCEWithLogitsLoss()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(("cls_token", "pos_embed")) else decay).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    steps_per_epoch = max(1, len(train_loader))
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, cfg.scheduler, cfg.warmup)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    if init_state is not None:
        transfer_weights(model, init_state["model"], init_state["labels"], labels)
        if dist.is_main:
            log.info(
                "starting from the weights of %s (its step %s); new optimiser and schedule",
                cfg.init_from,
                init_state.get("step", "?"),
            )

    start_epoch, step, best, best_epoch, bad_epochs = 0, 0, -math.inf, -1, 0
    history: list[dict[str, Any]] = []
    partial: dict[str, Any] | None = None  # where an interrupted epoch stopped
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        step = int(resume_state["step"])
        history = list(resume_state.get("history", []))
        partial = resume_state.get("partial")
        if partial:
            # Redo the rest of the stopped epoch; its half-epoch record and validation
            # verdict are replaced by those of the whole epoch, as in an unbroken run.
            start_epoch = int(resume_state["epoch"])
            best, best_epoch, bad_epochs = partial["before"]
            history = [h for h in history if h["epoch"] != start_epoch + 1]
        else:
            start_epoch = int(resume_state["epoch"]) + 1
            best = float(resume_state["best_metric"])
            best_epoch = int(resume_state["best_epoch"])
            bad_epochs = int(resume_state.get("bad_epochs", 0))
        log.info("resuming %s at epoch %d, step %d", last_path, start_epoch + 1, step)

    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    summary = training_data_summary(cache, train_idx, (*cfg.val_folds, *cfg.test_folds))
    base_state = {
        "format": CHECKPOINT_FORMAT,
        "model_name": cfg.model,
        "model_kwargs": dict(cfg.model_kwargs),
        "labels": list(labels),
        "multi_label": bool(cache.multi_label),
        "frontend": frontend.to_json(),
        "training_data": summary,
    }
    mix_alpha = float(getattr(cfg.augment, "mixup_alpha", 0.0) or 0.0) if augment else 0.0
    progress = _progress_enabled(cfg, dist)
    stopped_early = False
    if dist.is_main:
        log.info(
            "training %s on %d clips (%d val, %d test), %d labels, %d steps/epoch on %s (%s, %s)",
            cfg.model,
            len(train_idx),
            len(val_idx),
            len(test_idx),
            len(labels),
            steps_per_epoch,
            device,
            f"{str(amp_dtype).removeprefix('torch.')} autocast" if use_amp else "float32",
            "channels-last" if cfg.channels_last else "NCHW",
        )

    from tqdm.auto import tqdm

    for epoch in range(start_epoch, cfg.epochs):
        if cfg.max_steps is not None and step >= cfg.max_steps:
            break
        epoch_seed = cfg.seed * 100_003 + epoch
        seed_everything(epoch_seed)
        loader_gen.manual_seed(epoch_seed)
        mix_gen = torch.Generator().manual_seed(epoch_seed)
        if sampler is not None:
            sampler.set_epoch(epoch)
        if hasattr(train_ds, "set_epoch"):
            train_ds.set_epoch(epoch)
        model.train()
        t0 = time.monotonic()
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        n_batches = 0
        skip = 0
        if partial and epoch == start_epoch:
            skip = int(partial["batches_done"])
            loss_sum += float(partial["loss_sum"])
            n_batches = skip
        before = (best, best_epoch, bad_epochs)
        bar = tqdm(
            train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False
        )
        for b_idx, (x, y) in enumerate(bar):
            if b_idx < skip:  # already trained on before the interruption
                continue
            if skip and b_idx == skip:
                _set_rng_state(partial["rng"], mix_gen, device)
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True).float()
            if mix_alpha > 0:
                x, y = mixup_batch(x, y, mix_alpha, mix_gen)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                logits = model(x)
                loss = criterion(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            n_batches += 1
            loss_sum += loss.detach().double()
            if progress:
                bar.set_postfix(loss=f"{loss.item():.4f}")
            elif dist.is_main and cfg.log_every and step % cfg.log_every == 0:
                log.info("step %d loss %.4f lr %.2e", step, loss.item(), scheduler.get_last_lr()[0])
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
        bar.close()
        complete = n_batches >= steps_per_epoch
        # Taken before validation, whose DataLoader draws from the global RNG.
        rng_now = None if complete else _rng_state(mix_gen, device)
        stats = torch.stack([loss_sum, torch.tensor(float(n_batches), device=device).double()])
        if dist.enabled:
            torch.distributed.all_reduce(stats)
        train_loss = float(stats[0] / max(1.0, float(stats[1])))

        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "lr": float(scheduler.get_last_lr()[0]),
            "train_loss": train_loss,
            "seconds": round(time.monotonic() - t0, 3),
        }
        improved = False
        if dist.is_main:
            if len(val_ds):
                # Full precision, as `evaluate` and the exported model run: what picks
                # best.pt and stops early is the model people get, not its bf16/fp16 twin.
                logits, targets = predict_logits(unwrap(model), val_loader, device)
                record["val_loss"] = float(
                    eval_criterion(torch.from_numpy(logits), torch.from_numpy(targets))
                )
                record["val_map"] = mean_average_precision(targets, sigmoid(logits))
                if not cache.multi_label:
                    record["val_accuracy"] = top1_accuracy(targets, logits)
                metric = record["val_map"]
            else:
                metric = -train_loss  # no validation folds: lower training loss is "better"
            if not math.isnan(metric) and metric > best:
                best, best_epoch, bad_epochs, improved = metric, epoch + 1, 0, True
            else:
                bad_epochs += 1
            record["best_epoch"] = best_epoch
            history.append(record)
            state = {
                **base_state,
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch,
                "step": step,
                "best_metric": best,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "config": cfg.to_dict(),
                "history": history,
                "partial": None
                if complete
                else {
                    "batches_done": n_batches,
                    "loss_sum": float(loss_sum),
                    "before": list(before),
                    "rng": rng_now,
                },
            }
            _save(state, last_path)
            if improved:
                _save(state, best_path)
            _write_json(out / "history.json", history)
            log.info(
                "epoch %d: train loss %.4f%s",
                epoch + 1,
                train_loss,
                "".join(
                    f", {k} {record[k]:.4f}"
                    for k in ("val_loss", "val_map", "val_accuracy")
                    if k in record
                ),
            )
        stop = bool(cfg.patience and bad_epochs >= cfg.patience)
        if dist.enabled:
            flag = [stop, history]
            torch.distributed.broadcast_object_list(flag, src=0)
            stop, history = bool(flag[0]), flag[1]
        if stop:
            stopped_early = True
            if dist.is_main:
                log.info("early stop: no better val mAP for %d epochs", cfg.patience)
            break

    test_metrics = None
    if dist.is_main and len(test_idx) and best_path.is_file():
        test_metrics = _evaluate_indices(best_path, cache, np.asarray(test_idx), cfg, device)
        _write_json(out / "test_metrics.json", test_metrics)
    if dist.enabled:
        torch.distributed.barrier()
        if owns_group:
            shutdown_distributed()
    return FitResult(
        best_checkpoint=best_path,
        last_checkpoint=last_path,
        history=history,
        best_metric=best,
        steps=step,
        stopped_early=stopped_early,
        test_metrics=test_metrics,
    )


def _rng_state(mix_gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    """RNG streams the training step draws from (dropout, mixup), for a mid-epoch resume."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "mix": mix_gen.get_state(),
    }


def _set_rng_state(state: dict[str, Any], mix_gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    mix_gen.set_state(state["mix"])


def check_init_compatible(
    ckpt: dict[str, Any],
    cfg: FitConfig,
    labels: tuple[str, ...],
    frontend: FrontEndConfig,
    warn: bool = True,
) -> None:
    """Weights only transfer to the same network and the same input features, and every
    output the checkpoint has must still be wanted; the cache may add labels (a new
    output starts from scratch, see `transfer_weights`). The normalisation stats may
    differ (the new training set has its own): the first steps then adapt the weights to a
    slightly shifted input, so that only warns.
    """
    src = cfg.init_from
    missing = [lab for lab in ckpt["labels"] if lab not in labels]
    if missing:
        raise ValueError(
            f"{src}: its labels differ from the cache's (e.g. {missing[:5]} are not in the "
            "cache); cannot init from it"
        )
    added = [lab for lab in labels if lab not in ckpt["labels"]]
    if added and warn:
        log.info("%s: new output labels %s start from scratch", src, added[:5])
    theirs_model = (ckpt.get("model_name"), dict(ckpt.get("model_kwargs") or {}))
    if theirs_model != (cfg.model, dict(cfg.model_kwargs)):
        raise ValueError(
            f"{src}: its model is {theirs_model[0]} {theirs_model[1]}, but --model is "
            f"{cfg.model} {cfg.model_kwargs}; the architectures must match"
        )
    theirs = FrontEndConfig.from_json(ckpt["frontend"])
    if replace(theirs, mean=0.0, std=1.0) != replace(frontend, mean=0.0, std=1.0):
        raise ValueError(f"{src}: its front end (mel settings) differs from the cache's")
    if warn and (theirs.mean, theirs.std) != (frontend.mean, frontend.std):
        log.warning(
            "%s was trained with normalisation mean %.4f std %.4f, this cache uses "
            "mean %.4f std %.4f; the first steps adapt the weights to the new scaling",
            src,
            theirs.mean,
            theirs.std,
            frontend.mean,
            frontend.std,
        )


def transfer_weights(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    old_labels: Sequence[str],
    new_labels: Sequence[str],
) -> None:
    """Load `state` into `model`, whose outputs are `new_labels` (a superset of
    `old_labels`, in any order).

    Why: adding a label (a clap-pattern class next to ESC-50's applause) should not cost
    the base model's training. Output-layer rows move to their label's new position;
    rows of new labels keep the model's fresh initialisation. Every other tensor must
    match exactly.
    """
    rows = [list(new_labels).index(lab) for lab in old_labels]
    # Merged on the CPU, where checkpoints are read: the model may already sit on a GPU
    # (`fit` moves it there first), and load_state_dict copies across devices itself.
    own = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    if set(own) != set(state):
        diff = sorted(set(own) ^ set(state))[:5]
        raise ValueError(f"the checkpoint's weights do not fit the model (e.g. {diff})")
    head = _output_layer(model, len(new_labels))
    merged: dict[str, torch.Tensor] = {}
    for key, mine in own.items():
        theirs = state[key].detach().cpu()
        if key.rsplit(".", 1)[0] == head and theirs.shape == (len(old_labels), *mine.shape[1:]):
            merged[key] = mine.clone()
            merged[key][rows] = theirs.to(mine.dtype)
        elif theirs.shape == mine.shape:
            merged[key] = theirs
        else:
            raise ValueError(
                f"the checkpoint's {key} has shape {tuple(theirs.shape)}, the model's "
                f"{tuple(mine.shape)}"
            )
    model.load_state_dict(merged)


def _output_layer(model: nn.Module, n_out: int) -> str | None:
    """The layer that produces the label logits: the last Linear with one output per
    label (not a hidden layer that happens to have that width)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == n_out:
            last = name
    return last


def _check_stats_from_training(
    cache_dir: Path, n_train: int, held_out: Sequence[str], dist: DistInfo
) -> None:
    """Statistics that saw a held-out fold are refused (they leak it into the input
    scaling); a clip count that differs from the training set's is only warned about, since
    older stats.json files do not say which folds they cover."""
    from training.stats import read_stats

    record = read_stats(cache_dir)
    if record is None:
        return
    seen = {str(f) for f in record.get("folds") or ()}
    leaked = sorted(seen & {str(f) for f in held_out})
    if leaked:
        raise ValueError(
            f"{cache_dir / 'stats.json'} was computed over folds {', '.join(sorted(seen))}, "
            f"which include held-out fold(s) {', '.join(leaked)}: run `claudio-train stats "
            f"--cache {cache_dir} --exclude {' --exclude '.join(leaked)}` first"
        )
    n_items = record.get("n_items")
    if dist.is_main and n_items is not None and int(n_items) != n_train:
        log.warning(
            "stats.json was computed over %s clips but %d are used for training; use "
            "`claudio-train stats --exclude <held-out folds>` so no held-out clip shapes "
            "the normalisation",
            n_items,
            n_train,
        )


def _ensure_stats(
    cache_dir: Path, train_idx: np.ndarray, train_folds: Sequence[str], dist: DistInfo
) -> bool:
    """Normalisation statistics must come from training clips only; compute them if the
    cache has none yet (rank 0 writes, the others wait). True when they were computed.

    Under torchrun rank 0 alone looks for the file and tells the others: each looking for
    itself, a rank that found the file rank 0 had just written skipped the barrier rank 0
    waited at, and trained on un-normalised values.
    """
    missing = not (cache_dir / "stats.json").is_file()
    if dist.enabled:
        flag = [missing]
        torch.distributed.broadcast_object_list(flag, src=0)
        missing = bool(flag[0])
    if not missing:
        return False
    from training.stats import compute_stats

    if dist.is_main:
        log.info(
            "no stats.json in %s: computing mean/std over the %d training clips",
            cache_dir,
            len(train_idx),
        )
        compute_stats(cache_dir, indices=train_idx, folds=train_folds)
    if dist.enabled:
        torch.distributed.barrier()
    return True


def _evaluate_indices(
    checkpoint: Path, cache: Cache, indices: np.ndarray, cfg: FitConfig, device: torch.device
) -> dict[str, float]:
    ckpt = load_checkpoint(checkpoint)
    model = build_model_from_checkpoint(ckpt).to(device)
    ds = CachedDataset(cache, indices, augment=None, seed=cfg.seed)
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers)
    logits, targets = predict_logits(model, loader, device)
    res = {"map": mean_average_precision(targets, sigmoid(logits)), "n_clips": int(len(indices))}
    if not cache.multi_label:
        res["accuracy"] = top1_accuracy(targets, logits)
    return res
