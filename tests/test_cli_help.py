"""`claudio-daemon --help` as people read it: every argument explained, one line a command.

Help text depends on typer and click together (the training extra holds typer below 0.21,
and click 8.5 wiped that typer's argument help), so it is checked on the installed pair.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.daemon_helpers import ROOT, daemon_cmd


def _help(*args: str) -> str:
    proc = subprocess.run(
        daemon_cmd(*args, "--help"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize(
    ("command", "argument_help"),
    [
        ("away", "on (arm) or off (disarm)."),
        ("replay", "WAV/FLAC/OGG recording, any rate."),
        ("check", "The rules file to validate."),
    ],
)
def test_every_argument_is_explained(command: str, argument_help: str) -> None:
    assert argument_help in _help(command)


def test_the_command_list_gives_one_line_a_command() -> None:
    """A docstring's line break used to show in the list ("... by default: one" and
    "line an event ..." on the next row)."""
    text = _help()
    rows = [line.strip("│ ").rstrip() for line in text.splitlines() if line.startswith("│")]
    named = [r for r in rows if r.split(" ", 1)[0] in {"replay", "away"}]
    assert [r.split(None, 1) for r in named] == [
        ["replay", "Run a recording through the live pipeline."],
        ["away", "Arm or disarm AWAY mode in the running daemon (through MQTT)."],
    ]
    # Continuation rows in the list (no command name) belong to long one-line summaries.
    assert not any(r.startswith("line an event") for r in rows)


def test_long_help_reflows_the_docstring() -> None:
    """Lines of the description fill the width; a short one ends a paragraph (it used to
    break wherever the docstring's source line did: "one" / "line an" / "event ...")."""
    text = _help("replay")
    lines = text[: text.index("╭")].splitlines()
    described = [line.strip() for line in lines if line.strip()][1:]  # after "Usage: ..."
    assert described and described[0] == "Run a recording through the live pipeline."
    assert all(len(line) > 60 or line.endswith(".") for line in described), described
