"""`claudio-daemon`: run, replay, check, devices, away, calibrate.

Thin glue over library code: every command builds its parts through the small factories in
`claudio_daemon.app` and reports bad input as one clear line and exit status 2.
"""

from __future__ import annotations

import logging
import sys
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from claudio_daemon import __version__, app
from claudio_daemon.service import logs

if TYPE_CHECKING:
    from claudio_daemon.pipeline import PipelineStats

cli = typer.Typer(
    add_completion=False,
    # Markdown: a docstring's line breaks are not kept as hard breaks in the help.
    rich_markup_mode="markdown",
    no_args_is_help=True,
    help="Claudio: claps and recognised sounds become MQTT commands.",
    # A crash is logged (main below), with a priority for the journal; typer's boxed
    # traceback would print every frame's local variables, secrets included.
    pretty_exceptions_enable=False,
)
log = logging.getLogger("claudio_daemon")

RulesOpt = Annotated[
    Path | None,
    typer.Option(
        "--rules",
        "-r",
        help="rules.yaml (default: $CLAUDIO_RULES, /etc/claudio/rules.yaml, ./rules.yaml).",
    ),
]
ModelOpt = Annotated[
    Path | None,
    typer.Option("--model", "-m", help="ONNX model (default: rules.yaml, then the shipped one)."),
]
LogOpt = Annotated[
    str,
    typer.Option("--log-level", envvar="CLAUDIO_LOG_LEVEL", help="debug, info, warning, error."),
]


def _fail(message: str) -> NoReturn:
    # Under systemd the journal files an unprefixed line at info, where `journalctl -p
    # warning` would hide why the service did not start.
    prefix = "<3>" if logs.stderr_is_journal() else ""
    typer.echo(f"{prefix}error: {message}", err=True)
    raise typer.Exit(2)


@cli.command()
def run(
    rules: RulesOpt = None,
    model: ModelOpt = None,
    device: Annotated[
        str | None, typer.Option("--device", "-d", help="Microphone name or index.")
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", help="Listen to this recording (in real time) instead."),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Also print events as JSON.")] = False,
    wait_for_device: Annotated[
        bool | None,
        typer.Option(
            "--wait-for-device/--no-wait-for-device",
            help="Wait for a microphone that is missing or busy at start-up (default: under "
            "systemd yes, in a terminal no: exit 2 at once).",
        ),
    ] = None,
    log_level: LogOpt = "info",
) -> None:
    """Listen and act: the service's main command (systemd runs this)."""
    app.setup_logging(log_level)
    try:
        code = app.run_service(
            rules_path=app.find_rules(rules),
            model_path=model,
            device=device,
            input_file=input_file,
            json_out=sys.stdout if json_out else None,
            wait_for_device=wait_for_device,
        )
    except app.UserError as exc:
        _fail(str(exc))
    raise typer.Exit(code)


@cli.command()
def replay(
    file: Annotated[Path, typer.Argument(help="WAV/FLAC/OGG recording, any rate.")],
    rules: RulesOpt = None,
    model: ModelOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON object per line per event.")
    ] = False,
    levels: Annotated[bool, typer.Option("--levels", help="Include level readings.")] = False,
    realtime: Annotated[bool, typer.Option("--realtime", help="Pace like a microphone.")] = False,
    publish: Annotated[
        bool, typer.Option("--publish", help="Send actions and events to the MQTT broker.")
    ] = False,
    no_classifier: Annotated[
        bool, typer.Option("--no-classifier", help="Claps only, no sound recognition.")
    ] = False,
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help='Time of day the recording starts at, "HH:MM" or "YYYY-MM-DD HH:MM", for '
            "rules with `when` windows (default: now).",
        ),
    ] = None,
    log_level: LogOpt = "warning",
) -> None:
    """Run a recording through the live pipeline.

    As fast as possible by default (--realtime paces it like a microphone): one line an
    event and a summary, or JSON lines for scripts (--json)."""
    app.setup_logging(log_level)
    starts_at = _start_time(at) if at is not None else None
    try:
        runner = app.run_replay(
            file,
            rules_path=app.find_rules(rules),
            model_path=model,
            json_out=sys.stdout if json_out else None,
            json_levels=levels,
            text_out=None if json_out else sys.stdout,
            realtime=realtime,
            publish=publish,
            use_classifier=not no_classifier,
            starts_at=starts_at,
        )
    except app.UserError as exc:
        _fail(str(exc))
    if not json_out:
        typer.echo(_replay_summary(file, runner.pipeline.stats, runner.pipeline.sample_rate))


def _replay_summary(file: Path, stats: PipelineStats, sample_rate: int) -> str:
    def n(count: int, what: str) -> str:
        return f"{count} {what}{'' if count == 1 else 's'}"

    return (
        f"{file.name}: {(stats.samples - stats.flushed) / sample_rate:.1f} s of audio, "
        f"{n(stats.patterns, 'clap pattern')}, {n(stats.sounds, 'sound event')}, "
        f"{n(stats.actions, 'action')}"
    )


def _start_time(text: str) -> datetime:
    """--at: a time today, or a date and time."""
    for fmt in ("%H:%M", "%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S"):
        try:
            parsed = datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
        if "%Y" not in fmt:
            parsed = datetime.combine(date.today(), parsed.time())
        return parsed
    _fail(f'--at {text!r}: give a time of day "HH:MM" or a date and time "YYYY-MM-DD HH:MM"')


@cli.command()
def check(
    rules: Annotated[Path, typer.Argument(help="The rules file to validate.")],
    model: ModelOpt = None,
) -> None:
    """Validate a rules file against the model's labels without starting anything."""
    app.setup_logging("warning")
    try:
        problems, summary = app.check_rules(rules, model)
    except app.UserError as exc:
        _fail(str(exc))
    if problems:
        for line in problems:
            typer.echo(line, err=True)
        raise typer.Exit(1)
    typer.echo(f"{rules}: ok ({summary})")


@cli.command()
def devices() -> None:
    """List microphones (input devices)."""
    try:
        found = app.input_devices()
    except app.UserError as exc:
        _fail(str(exc))
    if not found:
        typer.echo("no input devices found")
        raise typer.Exit(1)
    for d in found:
        mark = "*" if d.is_default else " "
        typer.echo(f"{mark} {d.index:>3}  {d.name}  ({d.channels} ch, {d.default_rate:.0f} Hz)")


@cli.command()
def away(
    state: Annotated[str, typer.Argument(help="on (arm) or off (disarm).")],
    rules: RulesOpt = None,
) -> None:
    """Arm or disarm AWAY mode in the running daemon (through MQTT).

    Exits 0 only once the daemon reports the new state."""
    app.setup_logging("warning")
    value = state.strip().lower()
    if value not in ("on", "off"):
        _fail(f"AWAY state must be on or off, not {state!r}")
    try:
        topic = app.send_away(app.find_rules(rules), value == "on")
    except app.UserError as exc:
        _fail(str(exc))
    typer.echo(f"AWAY {value}: confirmed by the daemon (sent to {topic})")


@cli.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


from claudio_daemon.calibrate.command import register as _register_calibrate  # noqa: E402

_register_calibrate(cli)


def main() -> None:
    try:
        cli()
    except Exception:
        # A bug, not bad input: one logged record (a priority on every line under
        # journald) and exit 1, so systemd restarts the service.
        if not logging.getLogger().handlers:
            logs.setup_logging("info")
        log.critical("claudio-daemon stopped by an unexpected error", exc_info=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
