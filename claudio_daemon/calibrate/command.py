"""`claudio-daemon calibrate`: registered on the main CLI by `register(cli)`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from claudio_daemon.calibrate.session import CalibrateOptions, CalibrationFailed, run_calibration


def calibrate(
    rules: Annotated[
        Path | None,
        typer.Option(
            "--rules",
            "-r",
            help="rules.yaml for the clap settings and the calibration path (default: "
            "$CLAUDIO_RULES, /etc/claudio/rules.yaml, ./rules.yaml; none: defaults).",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option("--device", "-d", help="Microphone name or index (default: ask)."),
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input",
            help="Measure this recording instead: the background first (--noise-seconds), "
            "then the claps.",
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="No questions: default device, write the file.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Calibration file to write (default: the rules' audio.calibration, else "
            "the installed service's /var/lib/claudio/calibration.yaml, else "
            "~/.local/state/claudio/calibration.yaml).",
        ),
    ] = None,
    noise_seconds: Annotated[
        float, typer.Option("--noise-seconds", help="How long to measure the quiet room.")
    ] = 3.0,
    clap_seconds: Annotated[
        float, typer.Option("--clap-seconds", help="How long to listen for the claps, at most.")
    ] = 8.0,
    claps: Annotated[int, typer.Option("--claps", help="How many claps to ask for.")] = 4,
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level", envvar="CLAUDIO_LOG_LEVEL", help="debug, info, warning, error."
        ),
    ] = "warning",
) -> None:
    """Measure the room's background and your claps; write the clap detector's calibration.

    The daemon reads the file when it starts; by default it is written where the daemon
    will look (for the installed service: sudo, and stop the service first, which holds
    the microphone).
    """
    from claudio_daemon import app

    app.setup_logging(log_level)
    opts = CalibrateOptions(
        rules=rules,
        device=device,
        input_file=input_file,
        yes=yes,
        out=out,
        noise_seconds=noise_seconds,
        clap_seconds=clap_seconds,
        claps=claps,
    )
    try:
        result = run_calibration(opts)
    except CalibrationFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.code) from None
    except KeyboardInterrupt:
        typer.echo("\ncalibration cancelled; nothing written", err=True)
        raise typer.Exit(130) from None
    if result.written is None:
        raise typer.Exit(1)


def register(cli: typer.Typer) -> None:
    """Add the `calibrate` command to the main CLI."""
    cli.command("calibrate")(calibrate)
