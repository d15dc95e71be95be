"""`claudio-train compare`: the study's comparison as one command.

    claudio-train compare ../shared/data/esc50-16k-folds123 ../shared/data/esc50-fold4-dev \\
        --cache runs/compare/cache --out runs/compare --val-fold 3 --test-fold 4

`register(app)` adds the command to the `claudio-train` typer app (training/cli.py calls it).
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated

import click
import typer

__all__ = ["register"]

log = logging.getLogger(__name__)


def _folds(values: list[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for v in values or []:
        out.extend(p.strip() for p in str(v).split(",") if p.strip())
    return tuple(out)


def _command_line(ctx: click.Context) -> str:
    """The command, however it was invoked (a test, python -m): every option that differs
    from its default, plus --cache and --out, which are relative paths worth spelling out."""
    words = ["claudio-train", ctx.info_name or "compare"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value in ((), []):
            continue
        if value == param.default and param.name not in ("cache", "out"):
            continue
        if isinstance(param, click.Argument):
            words += [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
            continue
        flag = max(param.opts, key=len)
        if getattr(param, "is_flag", False):
            words.append(flag)
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            words += [flag, str(v)]
    return " ".join(shlex.quote(w) for w in words)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def compare_command(
    data: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Dataset folder(s), merged into one cache (omit to reuse an existing --cache)."
        ),
    ] = None,
    cache: Annotated[
        Path, typer.Option("--cache", help="Log-mel cache (built from DATA when given).")
    ] = Path("runs/compare/cache"),
    out: Annotated[
        Path, typer.Option("--out", help="Folder for results.md/.json/.png and runs/.")
    ] = Path("runs/compare"),
    approach: Annotated[
        list[str] | None,
        typer.Option(
            help="Approach(es) to run (repeat or comma-separate): xgboost, simple_cnn, "
            "resnet18, se_resnet18, ast, federated. Default: all."
        ),
    ] = None,
    val_fold: Annotated[list[str] | None, typer.Option(help="Validation fold(s).")] = None,
    test_fold: Annotated[list[str] | None, typer.Option(help="Test fold(s), scored.")] = None,
    layout: Annotated[str, typer.Option(help="Dataset layout: auto, esc50, fsd50k, folder.")] = (
        "auto"
    ),
    epochs: Annotated[int, typer.Option(help="Epochs for each network.")] = 30,
    batch_size: Annotated[int, typer.Option()] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the networks.")] = 1e-3,
    patience: Annotated[int, typer.Option(help="Early-stop patience (0 off).")] = 10,
    no_augment: Annotated[bool, typer.Option("--no-augment")] = False,
    max_steps: Annotated[
        int | None, typer.Option(help="Cap on steps per network (smoke tests).")
    ] = None,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 50,
    clients: Annotated[int, typer.Option(help="Federated clients (homes).")] = 20,
    clients_per_round: Annotated[int, typer.Option(help="Clients sampled per round.")] = 10,
    local_epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 1,
    fed_model: Annotated[str, typer.Option(help="Network trained federatedly.")] = "resnet18",
    partition: Annotated[
        str, typer.Option(help="iid (by index) or dirichlet (by class, non-IID).")
    ] = "iid",
    alpha: Annotated[float, typer.Option(help="Dirichlet concentration.")] = 0.5,
    bn: Annotated[str, typer.Option(help="BatchNorm: pooled or fedbn.")] = "pooled",
    eval_every: Annotated[int, typer.Option(help="Validate every N rounds.")] = 1,
    client_cpus: Annotated[float, typer.Option(help="CPUs per simulated client.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Features kept for the XGBoost retrain.")] = 15,
    rank_by: Annotated[
        str, typer.Option(help="Importance that picks them: permutation or gain.")
    ] = "permutation",
    infer_repeats: Annotated[int, typer.Option(help="Repeats of the one-clip timing.")] = 20,
    workers: Annotated[int, typer.Option(help="Decoding / DataLoader processes.")] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps.")] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train and score XGBoost, the CNNs, AST and federated training on one split; one table."""
    from training.compare.federated import FedConfig
    from training.compare.run import APPROACHES, CompareConfig, compare, prepare_cache
    from training.compare.xgb import XGBConfig

    try:
        progress = sys.stderr.isatty()
        if data:
            report = prepare_cache(data, cache, layout=layout, workers=workers, progress=progress)
            typer.echo(
                f"cache {cache}: {report.n_items} clips"
                + (" (up to date)" if report.reused else "")
                + (f", {len(report.skipped)} unreadable files skipped" if report.skipped else "")
            )
        cfg = CompareConfig(
            approaches=_folds(approach) or APPROACHES,
            val_folds=_folds(val_fold),
            test_folds=_folds(test_fold),
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            patience=patience,
            augment=not no_augment,
            workers=workers,
            device=device,
            seed=seed,
            max_steps=max_steps,
            infer_repeats=infer_repeats,
            xgb=XGBConfig(top_k=top_k, rank_by=rank_by, n_jobs=max(1, workers)),
            fed=FedConfig(
                model=fed_model,
                rounds=rounds,
                clients=clients,
                clients_per_round=clients_per_round,
                local_epochs=local_epochs,
                batch_size=batch_size,
                lr=lr,
                partition=partition,
                alpha=alpha,
                bn=bn,
                augment=not no_augment,
                eval_every=eval_every,
                client_cpus=client_cpus,
                device=device,
            ),
        )
        cfg.fed.validate()
        command = _command_line(click.get_current_context())
        rows = compare(cache, out, cfg, command=command, progress=progress)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        log.debug("compare failed", exc_info=True)
        _fail(str(exc) or type(exc).__name__)
        return
    width = max(len(r.approach) for r in rows)
    for r in rows:
        typer.echo(
            f"{r.approach:<{width}}  mAP {r.map:.4f}  F1 {r.f1:.4f}  "
            f"train {r.train_time_s:8.1f} s  infer {r.infer_ms_per_clip:7.2f} ms/clip"
        )
    typer.echo(f"table: {out / 'results.md'}, {out / 'results.json'}, {out / 'results.png'}")


def register(app: typer.Typer) -> None:
    """Add `compare` to the claudio-train app."""
    app.command("compare")(compare_command)
