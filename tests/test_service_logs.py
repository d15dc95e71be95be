"""Logging format: journald detection through a real stderr file and $JOURNAL_STREAM."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from claudio_daemon.service.logs import parse_level, syslog_priority

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import logging, sys
from claudio_daemon.service.logs import setup_logging
setup_logging(sys.argv[1])
setup_logging(sys.argv[1])          # twice: must not duplicate lines
log = logging.getLogger("claudio_daemon.demo")
log.debug("fine detail")
log.info("listening")
log.warning("broker unreachable")
logging.getLogger("paho.mqtt.client").info("PINGREQ noise")
logging.getLogger("paho.mqtt.client").warning("paho trouble")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("crashed")
"""


def run_child(tmp_path: Path, level: str, journal_stream: str | None) -> list[str]:
    err = tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("JOURNAL_STREAM", None)
    with open(err, "wb") as f:
        if journal_stream == "match":
            st = os.fstat(f.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif journal_stream == "other":
            st = os.fstat(f.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino + 1}"
        proc = subprocess.run([sys.executable, "-c", _CHILD, level], env=env, stderr=f, timeout=30)
    assert proc.returncode == 0, err.read_text()
    return err.read_text().splitlines()


def test_journald_format_has_priorities_and_no_timestamps(tmp_path: Path) -> None:
    lines = run_child(tmp_path, "info", "match")
    assert lines[:4] == [
        "<6>claudio_daemon.demo: listening",
        "<4>claudio_daemon.demo: broker unreachable",
        "<4>paho.mqtt.client: paho trouble",
        "<3>claudio_daemon.demo: crashed",
    ]
    # every traceback line carries the error priority, so `journalctl -p err` shows it whole
    traceback = lines[4:]
    assert traceback and all(line.startswith("<3>") for line in traceback)
    assert traceback[0] == "<3>Traceback (most recent call last):"
    assert traceback[-1] == "<3>ZeroDivisionError: division by zero"


def test_plain_format_when_stderr_is_not_the_journal(tmp_path: Path) -> None:
    # JOURNAL_STREAM inherited but naming another stream: we are not talking to journald
    lines = run_child(tmp_path, "debug", "other")
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert re.fullmatch(stamp + r" DEBUG   claudio_daemon\.demo: fine detail", lines[0])
    assert re.fullmatch(stamp + r" INFO    claudio_daemon\.demo: listening", lines[1])
    assert re.fullmatch(stamp + r" WARNING claudio_daemon\.demo: broker unreachable", lines[2])
    assert not any("PINGREQ" in line for line in lines)  # paho quiet even at debug
    assert not any(line.startswith("<") for line in lines)
    assert sum("broker unreachable" in line for line in lines) == 1


def test_no_journal_stream_is_plain(tmp_path: Path) -> None:
    lines = run_child(tmp_path, "warning", None)
    assert len([ln for ln in lines if "claudio_daemon.demo" in ln]) == 2  # warning + error
    assert lines[0].endswith("WARNING claudio_daemon.demo: broker unreachable")


def test_levels() -> None:
    assert parse_level("INFO") == 20 and parse_level(" debug ") == 10 and parse_level(30) == 30
    with pytest.raises(ValueError, match="'loud' is not one of: debug, info"):
        parse_level("loud")
    assert [syslog_priority(n) for n in (10, 20, 25, 30, 40, 50)] == [7, 6, 6, 4, 3, 2]


ROOT = Path(__file__).resolve().parents[1]


def _under_journal(tmp_path: Path, argv: list[str], env: dict[str, str] | None = None):
    """Run with stderr as the 'journal' stream (JOURNAL_STREAM names its device:inode)."""
    err = tmp_path / "stderr.txt"
    with open(err, "w") as f:
        st = os.fstat(f.fileno())
        full = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", **(env or {})}
        full.pop("NOTIFY_SOCKET", None)
        proc = subprocess.run(
            argv, cwd=ROOT, env=full, stdout=subprocess.PIPE, stderr=f, text=True, timeout=120
        )
    return proc.returncode, [line for line in err.read_text().splitlines() if line.strip()]


def test_start_up_errors_reach_the_journal_as_errors(tmp_path: Path) -> None:
    """`journalctl -u claudio-daemon -p warning` must show why the service did not start:
    an unprefixed line is filed at info."""
    daemon = [sys.executable, "-m", "claudio_daemon"]
    broken = tmp_path / "rules.yaml"
    broken.write_text("mqtt:\n  hots: x\n")
    for argv, env in (
        ([*daemon, "run", "--rules", str(tmp_path / "nope.yaml")], None),
        ([*daemon, "run", "--rules", str(broken)], None),
        ([*daemon, "run", "--rules", str(broken)], {"CLAUDIO_LOG_LEVEL": "verbose"}),
    ):
        code, lines = _under_journal(tmp_path, argv, env)
        assert code == 2 and lines, (argv, env, lines)
        assert all(line.startswith("<3>error: ") for line in lines), lines


def test_a_crash_is_logged_critical_without_the_frames_locals(tmp_path: Path) -> None:
    """A bug (here: the pipeline raising) stops the daemon with exit 1 and a traceback
    whose every line carries a priority, and no local variables (typer printed them all,
    secrets included)."""
    script = (
        "import sys\n"
        "from claudio_daemon import cli, pipeline\n"
        "def boom(self, samples):\n"
        "    looks_secret = 'hunter2'\n"
        "    raise RuntimeError('unexpected bug')\n"
        "pipeline.Pipeline.process = boom\n"
        "sys.argv = ['claudio-daemon', 'replay', sys.argv[1], '--rules', sys.argv[2]]\n"
        "cli.main()\n"
    )
    argv = [sys.executable, "-c", script, str(ROOT / "demo" / "claps-demo.flac")]
    code, lines = _under_journal(tmp_path, [*argv, str(ROOT / "rules.yaml")])
    assert code == 1
    assert any("unexpected bug" in line for line in lines)
    assert lines[0].startswith("<2>") and all(line.startswith("<") for line in lines), lines
    assert not any("hunter2" in line for line in lines)
