"""Logging set-up that reads well both in a terminal and in `journalctl`.

Under systemd, stderr is a stream to journald, which timestamps every line itself and parses
a leading `<N>` as the syslog priority. So there we print `<3>claudio_daemon.mqtt: ...` and
`journalctl -u claudio-daemon -p warning` shows exactly the warnings and errors. In a
terminal we print the usual timestamped lines.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

__all__ = ["JournaldFormatter", "setup_logging", "stderr_is_journal", "syslog_priority"]

#: Libraries that log every packet at INFO/DEBUG; their warnings still come through.
NOISY_LOGGERS = ("paho", "paho.mqtt", "urllib3", "asyncio")

_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}

_PLAIN_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_JOURNAL_FORMAT = "%(name)s: %(message)s"


def syslog_priority(levelno: int) -> int:
    """Python level -> syslog priority (0 emerg ... 7 debug); in-between levels round down
    to the more severe neighbour's priority so nothing is demoted."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournaldFormatter(logging.Formatter):
    """No timestamp (journald adds its own), `<N>` priority on EVERY line: journald splits a
    multi-line record (a traceback) into entries, and an unprefixed line would be logged at
    the default priority, hiding the traceback from `journalctl -p err`."""

    def __init__(self) -> None:
        super().__init__(_JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        text = super().format(record)
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """True when systemd connected our stderr to journald.

    systemd sets $JOURNAL_STREAM to "device:inode" of that stream; comparing with fstat of
    our actual stderr rules out a child whose stderr was redirected but inherited the variable.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        dev_s, ino_s = value.split(":", 1)
        dev, ino = int(dev_s), int(ino_s)
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return st.st_dev == dev and st.st_ino == ino


def parse_level(level: str | int) -> int:
    """'info', 'DEBUG', 'warning' or a number; anything else is a clear error."""
    if isinstance(level, int):
        return level
    key = level.strip().lower()
    if key.isdigit():
        return int(key)
    if key not in _LEVELS:
        raise ValueError(
            f"log level {level!r} is not one of: debug, info, warning, error, critical"
        )
    return _LEVELS[key]


_installed: logging.Handler | None = None


def setup_logging(
    level: str | int = "info",
    journald: bool | None = None,
    *,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Configure the root logger once for the daemon; calling it again replaces (does not
    duplicate) our handler and leaves handlers others installed alone.

    `journald=None` detects it from $JOURNAL_STREAM. Returns the handler (tests, extra setup).
    """
    global _installed
    levelno = parse_level(level)
    out = stream if stream is not None else sys.stderr
    if journald is None:
        journald = stderr_is_journal(out)

    handler = logging.StreamHandler(out)
    if journald:
        handler.setFormatter(JournaldFormatter())
    else:
        handler.setFormatter(logging.Formatter(_PLAIN_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))

    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    root.setLevel(levelno)
    _installed = handler

    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, levelno))
    logging.captureWarnings(True)
    return handler
