"""`claudio-train`: recordings -> cache -> statistics -> model -> evaluation -> ONNX.

Typical run (ESC-50, fold 4 held out for validation):

    claudio-train precache ../shared/data/esc50-16k-folds123 --cache runs/cache
    claudio-train stats --cache runs/cache --exclude 4
    claudio-train fit --cache runs/cache --val-fold 4 --out runs/se18
    claudio-train evaluate runs/se18/best.pt runs/cache --folds 4 --out runs/se18/eval
    claudio-train export runs/se18/best.pt --out models/claudio.onnx --parity-data runs/cache

Isolated clap patterns (ESC-50's clapping is mostly applause), then fine-tuning on them:

    claudio-train synth-claps ../shared/data/esc50-16k-folds123 --out runs/synth-claps
    claudio-train mine-patterns ../shared/data/esc50-16k-folds123 --out runs/mined
    claudio-train fit --cache runs/cache2 --out runs/se18-claps --init-from runs/se18/best.pt

Training on another machine (a GPU without the recordings; see scripts/gpu_lease.sh):

    claudio-train pack-cache runs/cache runs/cache2 --out runs/esc50.pack
    claudio-train unpack-cache runs/esc50.pack --into runs/unpacked
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

# Light (json and dataclasses only): the option help names what a model may carry.
from claudio_daemon.model.metadata import CLAP_CHECK_KEYS

#: Said when a module of the train extra is missing (a daemon-only install).
NEEDS_EXTRA = (
    "the training tools need the train extra: pip install '.[train]' (or scripts/setup.sh --train)"
)

try:
    import click
except ModuleNotFoundError:
    sys.exit(f"claudio-train: {NEEDS_EXTRA}")

#: What the train extra brings (pyproject.toml); the daemon's own install lacks them.
TRAIN_EXTRA_MODULES = frozenset(
    {"torch", "torchaudio", "onnx", "onnxscript", "tqdm", "matplotlib", "xgboost", "flwr", "scipy"}
)

app = typer.Typer(
    help="Train, evaluate and export Claudio's sound classifier.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("training")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _folds(values: list[str] | None) -> tuple[str, ...]:
    """Folds may be given repeatedly (--val-fold 4 --val-fold 5) or as "4,5"."""
    out: list[str] = []
    for v in values or []:
        out.extend(p.strip() for p in str(v).split(",") if p.strip())
    return tuple(out)


def _friendly(fn: Callable[..., None]) -> Callable[..., None]:
    """Bad input (missing files, dataset/cache/metadata errors, impossible settings) ends
    with one "error: ..." line and exit status 2; the traceback is logged at debug level."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            log.debug("command failed", exc_info=True)
            text = str(exc) or type(exc).__name__
            if isinstance(exc, KeyError):
                text = f"missing entry {text}"
            _fail(text)

    return wrapper


def _clap_check(items: list[str] | None, option: str) -> dict[str, float]:
    """`["min_clap_score=0.5"]` -> {"min_clap_score": 0.5}, checked as the daemon will."""
    from claudio_daemon.model.metadata import parse_clap_check

    out: dict[str, float] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{option} {item!r}: not KEY=VALUE")
        try:
            out[key.strip()] = float(raw)
        except ValueError:
            raise ValueError(f"{option} {item!r}: {raw!r} is not a number") from None
    try:
        return parse_clap_check(out)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None


_CLAP_CHECK_HELP = (
    "The daemon's clap check measured for this model, KEY=VALUE "
    f"({', '.join(CLAP_CHECK_KEYS)}; repeatable): used where rules.yaml does not set it."
)


@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False,
) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("training").setLevel(level)
    # The daemon's detector tells a live user about each pattern it drops; replaying
    # thousands of recordings (mine-patterns, synth-claps) would drown the progress in it.
    logging.getLogger("claudio_daemon").setLevel(level if verbose else max(level, logging.WARNING))


@app.command()
@_friendly
def precache(
    data: Annotated[
        list[Path],
        typer.Argument(
            help="Dataset folder(s) (FSD50K, ESC-50 or folder layout); several folders of "
            "the same vocabulary are merged into one cache."
        ),
    ],
    cache: Annotated[Path, typer.Option("--cache", help="Where to write the log-mel cache.")],
    layout: Annotated[str, typer.Option(help="auto, fsd50k, esc50 or folder.")] = "auto",
    split: Annotated[str, typer.Option(help="FSD50K split: dev or eval.")] = "dev",
    workers: Annotated[int, typer.Option(help="Decoding processes.")] = 2,
) -> None:
    """Decode every recording once into a log-mel cache."""
    from claudio_daemon.features.frontend import FrontEndConfig
    from training.cache import precache as run_precache
    from training.datasets import load_datasets

    manifest = load_datasets(list(data), layout=layout, split=split)
    report = run_precache(
        manifest, cache, FrontEndConfig(), workers=workers, progress=sys.stderr.isatty()
    )
    typer.echo(
        f"cached {report.n_items} clips in {cache}"
        + (f"; {len(report.skipped)} unreadable files skipped" if report.skipped else "")
        + (" (already up to date)" if report.reused else "")
    )


@app.command("synth-claps")
@_friendly
def synth_claps(
    data: Annotated[
        list[Path],
        typer.Argument(help="ESC-50 layout folder(s) with clapping and background recordings."),
    ],
    out: Annotated[Path, typer.Option("--out", help="New ESC-50 layout folder to write.")],
    per_fold: Annotated[int, typer.Option(help="Synthetic clips per fold.")] = 60,
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a non-empty --out folder.")
    ] = False,
    min_clap_margin_db: Annotated[
        float,
        typer.Option(help="A cut clap must be this far above its recording's noise floor (dB)."),
    ] = 25.0,
    label: Annotated[
        str,
        typer.Option(
            help="Label the clips are listed under: a new one (after the inputs' labels) "
            "or one of theirs, e.g. clapping."
        ),
    ] = "clap_pattern",
) -> None:
    """Write isolated clap-pattern clips (1-4 real claps over real backgrounds)."""
    from training.synth_claps import synth_claps as run_synth

    report = run_synth(
        list(data),
        out,
        per_fold=per_fold,
        seed=seed,
        force=force,
        min_above_floor_db=min_clap_margin_db,
        label=label,
    )
    typer.echo(report.summary())


@app.command("mine-patterns")
@_friendly
def mine_patterns(
    data: Annotated[
        list[Path],
        typer.Argument(help="ESC-50 layout folder(s); clapping recordings are left out."),
    ],
    out: Annotated[Path, typer.Option("--out", help="New ESC-50 layout folder to write.")],
    replays: Annotated[
        int, typer.Option(help="Times each recording is replayed over a random background.")
    ] = 2,
    max_per_recording: Annotated[
        int, typer.Option(help="Patterns kept from one replay at most.")
    ] = 2,
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a non-empty --out folder.")
    ] = False,
) -> None:
    """Write the clap patterns the daemon's detector finds in non-clap recordings, cut as
    its clap check hears them, under the recording's own label (hard negatives)."""
    from training.mine_patterns import mine_patterns as run_mine

    report = run_mine(
        list(data),
        out,
        seed=seed,
        replays=replays,
        max_per_recording=max_per_recording,
        force=force,
    )
    typer.echo(report.summary())


@app.command()
@_friendly
def stats(
    cache: Annotated[Path, typer.Option("--cache", help="Cache folder from `precache`.")],
    folds: Annotated[
        list[str] | None, typer.Option(help="Use only these (training) folds.")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Leave out these (held-out) folds.")
    ] = None,
) -> None:
    """Compute the normalisation mean/std over the training clips."""
    import numpy as np

    from training.cache import Cache
    from training.stats import compute_stats

    c = Cache.open(cache)
    idx = np.arange(len(c)) if not _folds(folds) else c.indices_for_folds(_folds(folds))
    drop = set(_folds(exclude))
    idx = np.array([i for i in idx if c.items[i].fold not in drop], dtype=np.int64)
    if idx.size == 0:
        _fail(f"{cache}: no clips left with folds={_folds(folds)} exclude={sorted(drop)}")
    mean, std = compute_stats(cache, indices=idx, folds=c.folds_of(idx))
    typer.echo(
        f"mean {mean:.4f} dB, std {std:.4f} dB over {idx.size} clips -> {cache / 'stats.json'}"
    )


@app.command("pack-cache")
@_friendly
def pack_cache(
    caches: Annotated[list[Path], typer.Argument(help="Cache folders from `precache`.")],
    out: Annotated[Path, typer.Option("--out", help="The pack file to write.")],
) -> None:
    """Pack caches into one small file (one byte per value) to train on another machine."""
    from training.pack import pack_caches

    report = pack_caches(caches, out, progress=sys.stderr.isatty())
    typer.echo(
        f"packed {', '.join(report.caches)} into {report.path}: {report.rows} clips "
        f"({report.shared_rows} shared), {report.path.stat().st_size / 1e6:.1f} MB, "
        f"{report.step_db:.2f} dB steps"
    )


@app.command("unpack-cache")
@_friendly
def unpack_cache(
    pack: Annotated[Path, typer.Argument(help="A file from `pack-cache`.")],
    into: Annotated[Path, typer.Option("--into", help="Folder to unpack the caches into.")],
    force: Annotated[bool, typer.Option(help="Replace caches already there.")] = False,
) -> None:
    """Unpack the caches of a `pack-cache` file, each into its own folder."""
    from training.pack import unpack_caches

    for cache_dir in unpack_caches(pack, into, force=force):
        typer.echo(f"unpacked {cache_dir}")


@app.command()
@_friendly
def fit(
    cache: Annotated[Path, typer.Option("--cache", help="Cache folder from `precache`.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder for checkpoints and history.")],
    model: Annotated[
        str, typer.Option(help="se_resnet18, resnet18, simple_cnn or ast.")
    ] = "se_resnet18",
    epochs: Annotated[
        int | None,
        typer.Option(help="Epochs to train [default: 30; on --resume, the run's own]."),
    ] = None,
    batch_size: Annotated[int, typer.Option()] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = 1e-3,
    weight_decay: Annotated[float, typer.Option()] = 1e-2,
    scheduler: Annotated[str, typer.Option(help="onecycle or cosine.")] = "onecycle",
    warmup: Annotated[float, typer.Option(help="Fraction of steps to warm up.")] = 0.1,
    val_fold: Annotated[list[str] | None, typer.Option(help="Validation fold(s).")] = None,
    test_fold: Annotated[
        list[str] | None, typer.Option(help="Test fold(s), scored at the end.")
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(
            help="Early-stop epochs without better val mAP (0 off) "
            "[default: 10; on --resume, the run's own]."
        ),
    ] = None,
    no_augment: Annotated[
        bool, typer.Option("--no-augment", help="Train without augmentation.")
    ] = False,
    mixup_alpha: Annotated[float | None, typer.Option(help="Mixup Beta alpha (0 = off).")] = None,
    segment_prob: Annotated[
        float,
        typer.Option(
            help="Probability of training on a 0.8-3 s stretch repeat-padded to the window, "
            "as the daemon's clap check hears a pattern."
        ),
    ] = 0.0,
    pos_weight_max: Annotated[float, typer.Option(help="Upper clip of BCE pos_weight.")] = 10.0,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 2,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, mps.")] = "auto",
    no_amp: Annotated[bool, typer.Option("--no-amp", help="No mixed precision on CUDA.")] = False,
    no_channels_last: Annotated[
        bool,
        typer.Option(
            "--no-channels-last",
            help="Train in NCHW order: repeats runs made before channels-last training "
            "bit for bit (by default channels-last where it is faster: CUDA, or a CPU with "
            "native bf16).",
        ),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the run in --out with its own settings; only --epochs, "
            "--patience, --max-steps, --workers, --device and --log-every given here change "
            "them.",
        ),
    ] = False,
    init_from: Annotated[
        Path | None,
        typer.Option(
            "--init-from",
            help="Start a new run (fresh optimiser and schedule) from this checkpoint's "
            "weights; same model and mel settings required, labels may be added (they "
            "start from scratch).",
        ),
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    log_every: Annotated[int, typer.Option(help="Log every N steps when not on a terminal.")] = 50,
) -> None:
    """Train a model on the cache (several GPUs: run under `torchrun`)."""
    from training.augment import AugmentConfig
    from training.fit import FitConfig
    from training.fit import fit as run_fit

    augment = AugmentConfig(enabled=not no_augment)
    if mixup_alpha is not None:
        augment = AugmentConfig(**{**augment.__dict__, "mixup_alpha": mixup_alpha})
    if not 0.0 <= segment_prob <= 1.0:
        raise typer.BadParameter(
            f"must be in [0, 1], got {segment_prob}", param_hint="--segment-prob"
        )
    augment = AugmentConfig(**{**augment.__dict__, "segment_prob": segment_prob})
    cfg = FitConfig(
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        scheduler=scheduler,
        warmup=warmup,
        val_folds=_folds(val_fold),
        test_folds=_folds(test_fold),
        patience=patience,
        augment=augment,
        pos_weight_clip=(1.0, pos_weight_max),
        workers=workers,
        seed=seed,
        amp=not no_amp,
        channels_last=False if no_channels_last else None,
        device=device,
        out_dir=str(out),
        resume=resume,
        init_from=str(init_from) if init_from is not None else None,
        max_steps=max_steps,
        log_every=log_every,
    )
    result = run_fit(cache, cfg)
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 reports
    last = result.history[-1] if result.history else {}
    typer.echo(
        f"trained {result.steps} steps; best checkpoint {result.best_checkpoint}"
        + (f" (val mAP {last.get('val_map'):.4f} at the last epoch)" if "val_map" in last else "")
    )


@app.command()
@_friendly
def evaluate(
    model: Annotated[Path, typer.Argument(help="best.pt checkpoint or exported .onnx file.")],
    data: Annotated[Path, typer.Argument(help="Cache folder or dataset folder.")],
    folds: Annotated[
        list[str] | None,
        typer.Option(help="Only these folds (FSD50K: train, val of dev; eval of eval)."),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="FSD50K split of a dataset folder: dev or eval (default: the one --folds "
            "names, else dev)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write metrics.json, report.md, chart.")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the metrics as one JSON object.")
    ] = False,
    layout: Annotated[str, typer.Option(help="Dataset layout when DATA is not a cache.")] = "auto",
    batch_size: Annotated[int, typer.Option()] = 32,
    threshold: Annotated[float, typer.Option(help="Decision threshold for P/R/F1.")] = 0.5,
    device: Annotated[str, typer.Option(help="Device for checkpoints: cpu, cuda, auto.")] = "cpu",
    workers: Annotated[int, typer.Option(help="Decoding processes for dataset folders.")] = 0,
) -> None:
    """Score a model on labelled recordings."""
    from training.evaluate import evaluate as run_evaluate

    result = run_evaluate(
        model,
        data,
        folds=_folds(folds) or None,
        out_dir=out,
        layout=layout,
        batch_size=batch_size,
        threshold=threshold,
        device=device,
        workers=workers,
        progress=sys.stderr.isatty() and not json_out,
        split=split,
    )
    m = result.metrics
    if json_out:
        typer.echo(json.dumps(m, sort_keys=True))
        return
    line = f"mAP {m['map']:.4f}" if m.get("map") is not None else "mAP n/a"
    if m.get("accuracy") is not None:
        line += f", accuracy {m['accuracy']:.4f}"
    if m.get("clap_vs_rest_ap") is not None:
        line += f", {m['clap_label']} vs rest AP {m['clap_vs_rest_ap']:.4f}"
    typer.echo(f"{line} over {m['n_clips']} clips" + (f"; report in {out}" if out else ""))


@app.command()
@_friendly
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint from `fit` (best.pt).")],
    out: Annotated[Path, typer.Option("--out", help="ONNX file to write.")],
    opset: Annotated[int, typer.Option(help="ONNX opset (>= 17).")] = 17,
    int8: Annotated[
        bool, typer.Option("--int8", help="Also write an INT8 model (<out>.int8.onnx).")
    ] = False,
    parity_data: Annotated[
        Path | None, typer.Option(help="Cache with real clips for the parity check.")
    ] = None,
    eval_data: Annotated[
        Path | None, typer.Option(help="Data to measure the INT8 accuracy change on.")
    ] = None,
    eval_folds: Annotated[list[str] | None, typer.Option(help="Folds of --eval-data.")] = None,
    clap_check: Annotated[
        list[str] | None, typer.Option("--clap-check", help=_CLAP_CHECK_HELP)
    ] = None,
) -> None:
    """Export a checkpoint to ONNX with Claudio metadata, checked against onnxruntime."""
    from training.export import export_onnx

    check = _clap_check(clap_check, "--clap-check")
    rep = export_onnx(
        checkpoint,
        out,
        opset=opset,
        quantize_int8=int8,
        parity_inputs=parity_data,
        int8_eval_data=eval_data,
        int8_eval_folds=_folds(eval_folds) or None,
        clap_check=check,
    )
    typer.echo(
        f"wrote {rep.path} ({rep.size_bytes / 1e6:.1f} MB, opset {rep.opset}, "
        f"{len(rep.labels)} labels); "
        f"onnxruntime parity max |diff| {rep.parity_max_abs:.1e}"
    )
    if rep.int8_path is not None:
        delta = (
            f", {rep.int8_metric} change {rep.int8_accuracy_delta:+.4f}"
            if rep.int8_accuracy_delta is not None
            else ""
        )
        typer.echo(f"wrote {rep.int8_path} ({rep.int8_size_bytes / 1e6:.1f} MB{delta})")


@app.command("clap-check")
@_friendly
def clap_check_cmd(
    model: Annotated[Path, typer.Argument(help="An exported .onnx file.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="KEY=VALUE to write (repeatable).")
    ] = None,
    clear: Annotated[
        bool, typer.Option("--clear", help="Drop what the model carries first.")
    ] = False,
) -> None:
    """Show or set the clap check settings an exported model carries (its operating point,
    e.g. min_clap_score picked with bench/verifier_sweep.py); the daemon uses them where
    rules.yaml does not set them."""
    from training.export import read_metadata, set_clap_check

    if model.suffix != ".onnx":
        raise ValueError(f"{model}: not an exported .onnx file")
    if not model.is_file():
        raise FileNotFoundError(f"{model}: no such file")
    values = _clap_check(set_, "--set")
    meta = set_clap_check(model, values, clear=clear) if values or clear else read_metadata(model)
    if meta.clap_check:
        typer.echo(f"{model}: clap check {json.dumps(meta.clap_check, sort_keys=True)}")
    else:
        typer.echo(f"{model}: no clap check of its own (the daemon's defaults apply)")


from training.compare.cli import register as _register_compare  # noqa: E402

_register_compare(app)


def main() -> None:
    try:
        app()
    except ModuleNotFoundError as exc:
        if exc.name not in TRAIN_EXTRA_MODULES:
            raise
        sys.exit(f"claudio-train: {exc.name} is missing: {NEEDS_EXTRA}")


if __name__ == "__main__":
    main()
